"""Length exploitation: do answers win because they are better, or because they are longer?

Reward models, judges and proxy rewards often like long answers, and a policy trained on them
learns to write long ones (ALGORITHMS.md §8.3; "A Long Way to Go", Singhal et al. 2023; the
testbed tasks' ``proxy`` rewards like length on purpose). Given answers A with scores, and
optionally answers B to the same prompts with the preference of each A answer over its B answer,
this module reports:

- per answer set: mean length, mean score, Pearson's correlation of score with length, and the
  score in length bins (``length_bins``);
- per pair: the raw win rate of A (mean preference; a tie is 1/2), the win rate in bins of A's
  length and in bins of the length difference len(A) − len(B) (``diff_bins``: equal lengths in a
  bin of their own), the correlation of the preference with that difference, and the
  length-controlled win rate (``fit_length_glm``) with bootstrap intervals for both win rates.

**Length-controlled win rate** (after AlpacaEval 2's, Dubois et al. 2024, "Length-Controlled
AlpacaEval: A Simple Way to Debias Automatic Evaluators"). A logistic model of the preference
y_i ∈ [0, 1] of A's answer over B's,

    P(A ≻ B) = σ(θ + φ·tanh(d_i / s)),   d_i = len(A_i) − len(B_i),   s = std(d) (sample std),

is fitted by maximum likelihood on the (possibly soft) preferences, and the length-controlled win
rate is its prediction at zero length difference, σ(θ): what the preference would be if the two
answers were equally long. φ is how strongly preference follows length. The tanh bounds what a
very long answer can buy, and the scale s makes φ comparable across data sets.

What is simplified against AlpacaEval's GLM, and why:

- AlpacaEval's model also has an instruction-difficulty term (a per-instruction coefficient it
  estimates once over many models on its fixed 805 instructions) and a regularisation toward
  "gamed" baselines (its own models prompted to be verbose or concise). Neither exists for
  arbitrary prompts and two models, so the model here is intercept + length term only, and its
  prediction at zero length difference is the same for every pair;
- AlpacaEval fits with scikit-learn (L1 penalty, strength by 5-fold cross-validation). Here the
  two parameters are fitted by Newton's method on the summed cross-entropy with a small L2 penalty
  ``ridge``·(θ² + φ²)/2 (default 0.01, about AlpacaEval's fixed C = 100), a few lines of torch in
  float64 without a new dependency. The penalty only keeps the fit finite when the preferences
  are separable by length (a step in d that no σ(θ + φ·tanh) can reach); otherwise its effect is
  of order ridge / n;
- AlpacaEval measures length in characters; here the unit is the caller's (``chars``, ``words``
  or generated ``tokens``, see ``diagnose_cli``), characters by default.

Bootstrap intervals resample the pairs with replacement and repeat the whole procedure (the scale
s included); they are percentile intervals from a seeded generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from alignlab.eval.rm import pearson

RIDGE = 0.01
UNITS = ("chars", "words", "tokens")


def text_length(text: str, unit: str) -> int:
    """Length of ``text`` in characters or whitespace-separated words (tokens come from the sampler)."""
    if unit == "chars":
        return len(text)
    if unit == "words":
        return len(text.split())
    raise ValueError(f"text_length: unit must be chars or words, got {unit!r}")


def length_bins(lengths: Sequence[float], values: Sequence[float], bins: int) -> list[dict]:
    """The mean of ``values`` in up to ``bins`` contiguous length ranges of about equal counts.

    Lengths are sorted and cut into groups of about n/bins items; equal lengths always share a
    bin, so a bin can hold more, and there are fewer bins when few lengths are distinct. Each bin:
    ``low`` and ``high`` (its smallest and largest length), ``count``, ``mean_length``, ``mean``.
    The greedy rule: walk the distinct lengths upwards and close the current bin as soon as the
    running count reaches the next multiple of n/bins.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if len(lengths) != len(values):
        raise ValueError(f"length_bins: {len(lengths)} lengths but {len(values)} values")
    n = len(lengths)
    by_length: dict[float, list[float]] = {}
    for length, value in zip(lengths, values, strict=True):
        by_length.setdefault(length, []).append(value)
    out: list[dict] = []
    group: list[tuple[float, float]] = []
    seen = 0
    for length in sorted(by_length):
        group += [(length, v) for v in by_length[length]]
        seen += len(by_length[length])
        if seen >= (len(out) + 1) * n / bins - 1e-9:
            out.append(_bin(group))
            group = []
    if group:
        out.append(_bin(group))
    return out


def diff_bins(diffs: Sequence[float], values: Sequence[float], bins: int) -> list[dict]:
    """``length_bins`` of length differences, with d = 0 a bin of its own between the negative and
    the positive differences, each side cut into up to ⌈bins/2⌉ bins. The d = 0 bin is the
    model-free counterpart of the length-controlled win rate: the raw win rate among pairs of equal
    length."""
    half = math.ceil(bins / 2)
    out = []
    for keep in (lambda d: d < 0, lambda d: d == 0, lambda d: d > 0):
        side = [(d, v) for d, v in zip(diffs, values, strict=True) if keep(d)]
        if side:
            out += length_bins([d for d, _ in side], [v for _, v in side], half)
    return out


def _bin(group: list[tuple[float, float]]) -> dict:
    return {"low": group[0][0], "high": group[-1][0], "count": len(group),
            "mean_length": sum(g[0] for g in group) / len(group), "mean": sum(g[1] for g in group) / len(group)}


@dataclass(frozen=True)
class LengthGLM:
    """A fitted P(A ≻ B) = σ(intercept + slope·tanh(d / scale)); see the module docstring."""

    intercept: float  # θ
    slope: float  # φ
    scale: float  # s, the sample standard deviation of d (0: every d was equal, the feature is 0)
    iterations: int

    @property
    def lc_win_rate(self) -> float:
        """The predicted preference at zero length difference, σ(θ)."""
        return 1.0 / (1.0 + math.exp(-self.intercept))

    def predict(self, diff: float) -> float:
        x = math.tanh(diff / self.scale) if self.scale > 0 else 0.0
        return 1.0 / (1.0 + math.exp(-(self.intercept + self.slope * x)))


def _features(diff_N: torch.Tensor) -> tuple[torch.Tensor, float]:
    n = diff_N.numel()
    scale = float(diff_N.std()) if n > 1 else 0.0  # torch's std is the sample std (n − 1)
    if not scale > 0:
        return torch.zeros_like(diff_N), 0.0
    return torch.tanh(diff_N / scale), scale


def _newton(x_N: torch.Tensor, y_N: torch.Tensor, ridge: float, max_iter: int = 100) -> tuple[float, float, int]:
    """(θ, φ, iterations) minimising −Σ[y log p + (1 − y) log(1 − p)] + ridge(θ² + φ²)/2 with
    p = σ(θ + φx): Newton steps, each halved until the objective does not rise."""
    w = torch.zeros(2, dtype=torch.float64)
    X = torch.stack([torch.ones_like(x_N), x_N], dim=1)  # (N, 2)

    def objective(w: torch.Tensor) -> float:
        z = X @ w
        # −[y log σ(z) + (1 − y) log σ(−z)] = softplus(z) − y·z
        return float((torch.nn.functional.softplus(z) - y_N * z).sum() + ridge * (w @ w) / 2)

    current = objective(w)
    for it in range(1, max_iter + 1):
        p = torch.sigmoid(X @ w)
        grad = X.T @ (p - y_N) + ridge * w
        hess = (X.T * (p * (1 - p))) @ X + ridge * torch.eye(2, dtype=torch.float64)
        step = torch.linalg.pinv(hess) @ grad  # pinv: with every d equal, φ has no curvature and stays 0
        t = 1.0
        while True:
            trial = w - t * step
            value = objective(trial)
            if value <= current + 1e-12 or t < 1e-8:
                break
            t /= 2
        w, done = trial, float(step.abs().max()) * t < 1e-10
        current = value
        if done:
            return float(w[0]), float(w[1]), it
    return float(w[0]), float(w[1]), max_iter


def fit_length_glm(diffs: Sequence[float], prefs: Sequence[float], ridge: float = RIDGE) -> LengthGLM:
    """Fit the model of the module docstring to length differences len(A) − len(B) and the
    preferences P(A ≻ B) ∈ [0, 1] of the same pairs."""
    if len(diffs) != len(prefs):
        raise ValueError(f"fit_length_glm: {len(diffs)} length differences but {len(prefs)} preferences")
    if not diffs:
        raise ValueError("fit_length_glm: no pairs")
    y = torch.tensor([float(p) for p in prefs], dtype=torch.float64)
    if bool(((y < 0) | (y > 1) | y.isnan()).any()):
        raise ValueError("fit_length_glm: preferences must lie in [0, 1]")
    x, scale = _features(torch.tensor([float(d) for d in diffs], dtype=torch.float64))
    theta, phi, iterations = _newton(x, y, ridge)
    return LengthGLM(theta, phi, scale, iterations)


def _percentiles(values: list[float], low: float = 0.025, high: float = 0.975) -> list[float]:
    ordered = sorted(values)

    def at(q: float) -> float:  # linear interpolation between order statistics
        pos = q * (len(ordered) - 1)
        i = math.floor(pos)
        j = min(i + 1, len(ordered) - 1)
        return ordered[i] + (ordered[j] - ordered[i]) * (pos - i)

    return [at(low), at(high)]


def bootstrap_win_rates(diffs: Sequence[float], prefs: Sequence[float], resamples: int, seed: int = 0,
                        ridge: float = RIDGE) -> dict[str, list[float]]:
    """95% percentile intervals of the raw and the length-controlled win rate over ``resamples``
    bootstrap resamples of the pairs."""
    n = len(diffs)
    d = torch.tensor([float(v) for v in diffs], dtype=torch.float64)
    y = torch.tensor([float(v) for v in prefs], dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    raw, lc = [], []
    for _ in range(resamples):
        idx = torch.randint(n, (n,), generator=gen)
        x, _ = _features(d[idx])
        theta, _, _ = _newton(x, y[idx], ridge)
        raw.append(float(y[idx].mean()))
        lc.append(1.0 / (1.0 + math.exp(-theta)))
    return {"win_rate": _percentiles(raw), "lc_win_rate": _percentiles(lc)}


def answer_summary(lengths: Sequence[float], scores: Sequence[float | None], bins: int) -> dict:
    """Mean length of a set of answers; over those with a score (not None), their number, mean
    score, the correlation of score with length and the score per length bin (``length_bins``)."""
    n = len(lengths)
    if n == 0:
        return {"answers": 0}
    out = {"answers": n, "mean_length": sum(lengths) / n}
    kept = [(float(x), float(y)) for x, y in zip(lengths, scores, strict=True) if y is not None]
    out["scored"] = len(kept)
    if kept:
        xs, ys = [k[0] for k in kept], [k[1] for k in kept]
        out.update(mean_score=sum(ys) / len(ys), score_length_correlation=_none_if_nan(pearson(xs, ys)),
                   score_by_length=length_bins(xs, ys, bins))
    return out


def pair_summary(lengths_a: Sequence[float], lengths_b: Sequence[float], prefs: Sequence[float], bins: int,
                 resamples: int = 1000, seed: int = 0, ridge: float = RIDGE) -> dict:
    """Win rate of A over B (mean preference), its length-controlled counterpart, the fitted
    coefficients, the win rate per bin of A's length and of the length difference, the
    correlation of preference with the length difference, and (``resamples`` > 0) bootstrap
    intervals."""
    n = len(prefs)
    if not n == len(lengths_a) == len(lengths_b):
        raise ValueError("pair_summary: one length of A, one of B and one preference per pair")
    if n == 0:
        return {"pairs": 0}
    diffs = [float(a) - float(b) for a, b in zip(lengths_a, lengths_b, strict=True)]
    glm = fit_length_glm(diffs, prefs, ridge)
    out = {
        "pairs": n,
        "win_rate": sum(prefs) / n,
        "lc_win_rate": glm.lc_win_rate,
        "glm": {"intercept": glm.intercept, "length_coef": glm.slope, "scale": glm.scale,
                "iterations": glm.iterations, "ridge": ridge},
        "mean_length_a": sum(lengths_a) / n,
        "mean_length_b": sum(lengths_b) / n,
        "a_longer": sum(d > 0 for d in diffs) / n,
        "a_shorter": sum(d < 0 for d in diffs) / n,
        "preference_length_diff_correlation": _none_if_nan(pearson(diffs, [float(p) for p in prefs])),
        "win_rate_by_length": length_bins(lengths_a, prefs, bins),
        "win_rate_by_length_diff": diff_bins(diffs, prefs, bins),
    }
    if resamples > 0:
        out["intervals"] = {"level": 0.95, "resamples": resamples, "seed": seed,
                            **bootstrap_win_rates(diffs, prefs, resamples, seed, ridge)}
    return out


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else x
