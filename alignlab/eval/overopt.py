"""Reward over-optimisation over training: a proxy reward and a gold reward against √KL.

Gao, Schulman & Hilton 2023, "Scaling Laws for Reward Model Overoptimization" (ALGORITHMS.md
§8.5). A policy trained against a proxy reward moves away from its reference; plotted against
d = √KL(π ‖ π_ref), the proxy keeps rising while the gold reward rises, peaks and falls. For each
model of a training run (its starting model, the reference, as step 0, then each checkpoint):

- n samples per prompt from the model at temperature 1 (its own distribution);
- KL(π ‖ π_ref) ≈ mean over the samples of log π(y|x) − log π_ref(y|x), summed over the response
  tokens (``eval/health.kl_terms``; unbiased, a single term can be negative); d = √max(KL, 0);
- the proxy and the gold reward of the same samples: mean and standard deviation over samples.

Intervals: 95% percentile bootstrap over the prompts (a prompt's samples stay together, since
they share the prompt), the same resampled prompts for KL, proxy and gold. √KL's interval is the
square root of KL's ends (clipped at 0).

``fit_gao`` fits the RL form Gao et al. give, R(d) − R(0) = d(α − β log d), by least squares on
the rows with d > 0 (the form is quoted unverified in ALGORITHMS.md; report it as a summary
curve, not a test).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from alignlab.errors import UserError
from alignlab.eval.answers import draw_answer_rows
from alignlab.eval.health import kl_terms

LEVEL = 0.95


def percentile_interval(draws: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """The ``level`` percentile interval of ``draws`` (sorted order statistics, no interpolation,
    as ``decoding/kl.py`` takes them)."""
    ordered = sorted(draws)
    tail = (1 - level) / 2
    last = len(ordered) - 1
    return ordered[int(math.floor(tail * last))], ordered[int(math.ceil((1 - tail) * last))]


def per_prompt_means(values: Sequence[float], groups: Sequence[int]) -> list[float]:
    """The mean of ``values`` within each prompt, ``groups[i]`` values per prompt in order."""
    out, at = [], 0
    for g in groups:
        if g < 1:
            raise ValueError(f"every prompt needs at least one sample, got {g}")
        out.append(sum(values[at:at + g]) / g)
        at += g
    if at != len(values):
        raise ValueError(f"{len(values)} values for {at} samples")
    return out


def _std(values: Sequence[float]) -> float | None:
    n = len(values)
    if n < 2:
        return None
    m = sum(values) / n
    return math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))


def summarize(kl_terms: Sequence[float], proxy: Sequence[float], gold: Sequence[float], groups: Sequence[int],
              resamples: int = 1000, seed: int = 0, level: float = LEVEL) -> dict:
    """One model's row: KL, √KL, proxy and gold means over all samples (a prompt's samples
    weigh by their number), each with the standard deviation over samples and, with
    ``resamples`` > 0, a bootstrap interval over the prompts (``*_low``, ``*_high``)."""
    n = len(kl_terms)
    if not n or len(proxy) != n or len(gold) != n:
        raise ValueError(f"need one KL term, proxy and gold score per sample, got {n}, {len(proxy)}, {len(gold)}")
    kl = sum(kl_terms) / n
    row = {"samples": n, "prompts": len(groups), "kl": kl, "kl_std": _std(kl_terms),
           "sqrt_kl": math.sqrt(max(kl, 0.0)), "proxy": sum(proxy) / n, "proxy_std": _std(proxy),
           "gold": sum(gold) / n, "gold_std": _std(gold)}
    if resamples > 0:
        columns = {name: per_prompt_means(values, groups) for name, values in
                   (("kl", kl_terms), ("proxy", proxy), ("gold", gold))}
        rng = random.Random(seed)
        draws: dict[str, list[float]] = {name: [] for name in columns}
        size = list(groups)
        for _ in range(resamples):
            picked = rng.choices(range(len(size)), k=len(size))
            weight = sum(size[i] for i in picked)
            for name, means in columns.items():  # weighted by each prompt's samples, as the point estimate
                draws[name].append(sum(means[i] * size[i] for i in picked) / weight)
        for name, values in draws.items():
            row[f"{name}_low"], row[f"{name}_high"] = percentile_interval(values, level)
        row["sqrt_kl_low"] = math.sqrt(max(row["kl_low"], 0.0))
        row["sqrt_kl_high"] = math.sqrt(max(row["kl_high"], 0.0))
    return row


def measure(model, reference, generator, prompts: Sequence, n: int, params, proxy, gold, pad_id: int,
            batch_size: int = 16, resamples: int = 1000, seed: int = 0) -> dict:
    """One model's row (``summarize``): ``n`` answers to each of ``prompts`` (``PromptRecord``s)
    drawn by ``generator`` (sampling from ``model``) with ``params``, scored by the ``proxy`` and
    ``gold`` scorers, and each answer's log π(y|x) − log π_ref(y|x) under ``model`` and
    ``reference`` (0 without a pass when they are the same module)."""
    rows = draw_answer_rows(generator, prompts, n, params, batch_size)
    samples = [s for r in rows for s in r.samples]
    asked = [r.scorer_prompt for r in rows for _ in r.samples]
    texts = [s.text for s in samples]
    scores = [[float(v) for v in scorer.score(asked, texts)] for scorer in (proxy, gold)]
    for scorer, values in zip((proxy, gold), scores, strict=True):
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        if bad is not None:
            raise UserError(f"scorer {scorer.name}: returned {values[bad]} for answer {bad + 1} ({texts[bad][:40]!r}), "
                            "not a finite number; a reward that cannot score every answer cannot be averaged")
    if model is reference:
        terms = [0.0] * len(samples)
    else:
        terms = kl_terms(model, reference, [s.prompt_ids for s in samples], [s.token_ids for s in samples], pad_id,
                         batch_size * n)
    return summarize(terms, *scores, [len(r.samples) for r in rows], resamples, seed)


def fit_gao(d: Sequence[float], reward: Sequence[float]) -> dict | None:
    """Least-squares α, β of R(d) − R(0) = d(α − β log d) over the points with d > 0, ``R(0)``
    being the reward at the first point (which must have d = 0: the reference itself); None when
    fewer than three points have d > 0 (two points determine α and β exactly, a curve through them
    that says nothing of the form) or the fit is degenerate."""
    if not d or d[0] != 0.0:
        return None
    base = reward[0]
    pts = [(x, y - base) for x, y in zip(d[1:], reward[1:], strict=True) if x > 0]
    if len(pts) < 3:
        return None
    # normal equations of y = α·x − β·x·log x
    f = [(x, -x * math.log(x)) for x, _ in pts]
    s11 = sum(a * a for a, _ in f)
    s12 = sum(a * b for a, b in f)
    s22 = sum(b * b for _, b in f)
    t1 = sum(a * y for (a, _), (_, y) in zip(f, pts, strict=True))
    t2 = sum(b * y for (_, b), (_, y) in zip(f, pts, strict=True))
    det = s11 * s22 - s12 * s12
    if abs(det) <= 1e-12 * max(s11 * s22, 1e-300):
        return None
    alpha = (t1 * s22 - t2 * s12) / det
    beta = (s11 * t2 - s12 * t1) / det
    residual = sum((y - (alpha * x - beta * x * math.log(x))) ** 2 for x, y in pts)
    return {"alpha": alpha, "beta": beta, "points": len(pts), "rmse": math.sqrt(residual / len(pts))}


def trend(rows: Sequence[dict]) -> dict:
    """What the curve did from the first row (the reference) to the last: the change of the proxy
    and of gold, gold's peak (its value and the row's step) and gold's fall from it."""
    first, last = rows[0], rows[-1]
    peak = max(rows, key=lambda r: r["gold"])
    return {"proxy_change": last["proxy"] - first["proxy"], "gold_change": last["gold"] - first["gold"],
            "gold_peak": peak["gold"], "gold_peak_step": peak["step"], "gold_fall_from_peak": peak["gold"] - last["gold"]}
