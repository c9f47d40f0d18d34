"""Best-of-n and soft best-of-n: a generator that draws n candidates and a scorer that picks one.

``BestOfN(base, scorer, n)`` is itself a ``Generator``: asked for k samples of a prompt, it draws
k·n from ``base`` (candidates j·n .. j·n + n − 1 make the j-th answer), scores every candidate with
``scorer`` (``score_sampled``: a scorer of lengths, ``overlong``, reads each candidate's sampled
token count) and returns, for each answer, the best-scored of its n (the first drawn among equals).
With ``temperature`` τ > 0 it is soft best-of-n (rejection-sampling style, "Soft Best-of-n
Sampling", Verdun et al. 2025): candidate i is picked with probability ∝ exp(r_i / τ), one uniform
number per answer from a stream keyed by (seed, prompt index, answer index), so a prompt's picks do
not depend on the batch it shares. τ → 0 is best-of-n; τ → ∞ one plain sample.

``calibrate`` (InfAlign, Balashankar et al. 2024, ALGORITHMS.md §7.7): each candidate's reward
is replaced before the pick by its calibrated quantile under the base policy,
C(x, y) = P_{y' ~ π}[r(x, y') ≤ r(x, y)], estimated from ``calibration_samples`` further samples of
the same prompt (drawn once per prompt and call), and soft best-of-n picks by the quantiles. For
best-of-n (τ = 0) the quantile is monotone in r, so the best quantile holds the best reward, but a
few calibration samples give many ties: best-of-n keeps its own pick (the first of the best reward)
and draws no calibration samples, so calibration changes nothing there. The rewards reported
(``last_report``) are always the scorer's, never the quantiles.

What each call spent and scored is kept in ``last_report`` (``BestOfNReport``): the candidates'
rewards per answer (for the KL estimate, ``kl.py``), the picked rewards, and the model's forward
tokens (each candidate's prompt and generated tokens: what a forward pass without a shared-prefix
cache computes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from alignlab.data.records import Text
from alignlab.decoding.wraps import Wraps
from alignlab.errors import UserError
from alignlab.generation.base import Generator, Sample, SamplingParams
from alignlab.generation.draw import stream_keys, uniforms
from alignlab.rewards.base import Scorer, reward_prompt

_PICK_SALT = 0x5EED_B0F  # keeps the pick's stream apart from the base generator's token streams


@dataclass
class BestOfNReport:
    """One call's numbers: per prompt, per answer, the candidates' rewards and the index picked."""

    candidate_rewards: list[list[list[float]]] = field(default_factory=list)  # [prompt][answer][candidate]
    picked: list[list[int]] = field(default_factory=list)  # [prompt][answer] -> candidate index
    forward_tokens: int = 0

    @property
    def picked_rewards(self) -> list[list[float]]:
        return [[cands[i] for cands, i in zip(per_prompt, picks, strict=True)]
                for per_prompt, picks in zip(self.candidate_rewards, self.picked, strict=True)]


def softmax_pick(rewards: Sequence[float], temperature: float, u: float) -> int:
    """The candidate picked by uniform ``u`` in [0, 1): the first whose cumulative probability
    exceeds u, probabilities ∝ exp(r / temperature) (temperature 0: the first of the best)."""
    if temperature == 0:
        best = max(rewards)
        return next(i for i, r in enumerate(rewards) if r == best)
    top = max(rewards)
    weights = [math.exp((r - top) / temperature) for r in rewards]
    total = sum(weights)
    acc = 0.0
    for i, w in enumerate(weights):
        acc += w / total
        if u < acc:
            return i
    return len(rewards) - 1


def quantiles(rewards: Sequence[float], reference: Sequence[float]) -> list[float]:
    """Each reward's calibrated quantile: the share of ``reference`` rewards at or below it."""
    ref = np.sort(np.asarray(reference, dtype=np.float64))
    return (np.searchsorted(ref, np.asarray(rewards, dtype=np.float64), side="right") / len(ref)).tolist()


class BestOfN(Wraps):
    """A ``Generator`` that answers with the scorer's pick of ``n`` candidates (see the module docstring)."""

    def __init__(self, base: Generator, scorer: Scorer, n: int, temperature: float = 0.0,
                 calibrate: bool = False, calibration_samples: int = 16, tokenizer=None):
        """``tokenizer``: decodes prompts given as token ids (``generate_ids``) for the scorer; the
        base generator's own (``base.tok``) when not given."""
        if scorer is None:
            raise UserError("best-of-n needs a scorer to pick with (--scorer SPEC)")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UserError(f"best-of-n: n must be a whole number >= 1, got {n}")
        if not (math.isfinite(temperature) and temperature >= 0):
            raise UserError(f"best-of-n: temperature must be a finite number >= 0, got {temperature}")
        if calibrate and calibration_samples < 1:
            raise UserError(f"best-of-n: calibration_samples must be >= 1, got {calibration_samples}")
        self.scorer, self.n, self.temperature = scorer, n, float(temperature)
        self.calibrate, self.calibration_samples = calibrate, calibration_samples
        self._wrap(base, tokenizer)
        self.last_report = BestOfNReport()

    def generate(self, prompts: Sequence[Text], n: int, params: SamplingParams, start: int = 0) -> list[list[Sample]]:
        return self._draw(lambda k, p: self.base.generate(prompts, k, p, start=start),
                          [reward_prompt(p) for p in prompts], n, params, start)

    def generate_ids(self, contexts: Sequence[tuple[int, ...]], n: int, params: SamplingParams,
                     start: int = 0) -> list[list[Sample]]:
        if self.tok is None:
            raise UserError("best-of-n: prompts given as token ids need a tokenizer to show the scorer the prompt")
        return self._draw(lambda k, p: self.base.generate_ids(contexts, k, p, start=start),
                          [self.tok.decode(list(c), skip_special_tokens=True) for c in contexts], n, params, start)

    def _draw(self, draw, texts: list[str], n: int, params: SamplingParams, start: int) -> list[list[Sample]]:
        """``draw(k, params)``: k samples of each prompt from the base generator. The n·``self.n``
        candidates, and with ``calibrate`` the reference samples (another seed), then the picks."""
        candidates = draw(n * self.n, params)
        reference = draw(self.calibration_samples, replace(params, seed=(params.seed + _PICK_SALT) % (2**63))) \
            if self.calibrate and self.temperature > 0 else None
        return self._pick(texts, candidates, n, params, start, reference)

    def _pick(self, texts: list[str], candidates: list[list[Sample]], k: int, params: SamplingParams, start: int,
              reference: list[list[Sample]] | None) -> list[list[Sample]]:
        flat_prompts = [t for t, group in zip(texts, candidates, strict=True) for _ in group]
        flat = [s.text for group in candidates for s in group]
        counts = [len(s.token_ids) for group in candidates for s in group]
        scores = [float(x) for x in self.scorer.score_sampled(flat_prompts, flat, counts)] if flat else []
        if reference is not None:
            ref_scores = self.scorer.score_sampled([t for t, g in zip(texts, reference, strict=True) for _ in g],
                                                   [s.text for g in reference for s in g],
                                                   [len(s.token_ids) for g in reference for s in g])
        report = BestOfNReport()
        out: list[list[Sample]] = []
        at = ref_at = 0
        for p, group in enumerate(candidates):
            rewards = by = scores[at:at + len(group)]  # the scorer's rewards, and what the pick reads
            at += len(group)
            if reference is not None:
                mine = [float(x) for x in ref_scores[ref_at:ref_at + len(reference[p])]]
                ref_at += len(reference[p])
                by = quantiles(rewards, mine)
            keys = stream_keys((params.seed + _PICK_SALT) % (2**63), np.full(k, start + p), np.arange(k))
            u = uniforms(keys, np.zeros(k, dtype=np.int64))
            answers, picks, per_answer = [], [], []
            for j in range(k):
                i = softmax_pick(by[j * self.n:(j + 1) * self.n], self.temperature, float(u[j]))
                answers.append(group[j * self.n + i])
                picks.append(i)
                per_answer.append(rewards[j * self.n:(j + 1) * self.n])
            out.append(answers)
            report.picked.append(picks)
            report.candidate_rewards.append(per_answer)
            report.forward_tokens += sum(len(s.prompt_ids) + len(s.token_ids) for s in group)
            if reference is not None:
                report.forward_tokens += sum(len(s.prompt_ids) + len(s.token_ids) for s in reference[p])
        self.last_report = report
        return out
