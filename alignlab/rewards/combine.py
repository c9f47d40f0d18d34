"""Scorers made of scorers: a weighted sum, a sum of transformed rewards, routing by prompt.

- ``WeightedSum([(w₁, s₁), (w₂, s₂)])``: Σ_k w_k·r_k.
- ``LogSigmoidSum([(s₁, ref₁), ...])``: Σ_k log σ(r_k(x, y) − r_ref,k(x)), the transformation of
  Wang et al. 2024, "Transforming and Combining Rewards for Aligning Large Language Models"
  (ALGORITHMS.md 5.4, tagged [U]: check the paper). Each term is at most 0 and saturates once a
  response beats its reference reward, so the sum rewards being good in *every* property (a
  logical AND) rather than excelling in one. The reference reward r_ref(x) is a number, a mapping
  from prompt to number, or a function of the prompt; ``reference_rewards`` computes it as a
  quantile of the rewards of base-policy samples, as the paper suggests.
- ``Routed(routes, default)``: each prompt goes to the first scorer whose predicate accepts it
  (``by_task`` builds predicates that recognise a testbed task's prompts).

Each passes ``score_sampled``'s token counts on to its scorers, so a scorer of sampled lengths
(``overlong``) works inside them where samples are scored.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence

from alignlab.errors import UserError
from alignlab.rewards.base import Scorer, check_lengths

Reference = float | Mapping[str, float] | Callable[[str], float]


class _OverTerms(Scorer):
    """A scorer made of other scorers: texts or sampled completions (``score_sampled``: with
    their token counts, which a term such as ``overlong`` needs) go to every term, and ``_sum``
    combines what the terms give."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return self._sum(prompts, responses, lambda s: s.score(prompts, responses))

    def score_sampled(self, prompts: Sequence[str], responses: Sequence[str],
                      token_counts: Sequence[int]) -> list[float]:
        check_lengths(self.name, prompts, responses, token_counts)
        return self._sum(prompts, responses, lambda s: s.score_sampled(prompts, responses, token_counts))

    @abstractmethod
    def _sum(self, prompts, responses, rewards: Callable[[Scorer], Sequence[float]]) -> list[float]:
        """The combined reward of each response, from ``rewards(term)``: each term's rewards."""


class WeightedSum(_OverTerms):
    """Σ_k w_k·r_k(x, y)."""

    def __init__(self, terms: Sequence[tuple[float, Scorer]]):
        if not terms:
            raise UserError("weighted sum: give at least one (weight, scorer) term")
        self.terms = [(float(w), s) for w, s in terms]
        self.name = " + ".join(f"{w:g}*{s.name}" for w, s in self.terms)

    def _sum(self, prompts, responses, rewards: Callable[[Scorer], Sequence[float]]) -> list[float]:
        n = check_lengths(self.name, prompts, responses)
        total = [0.0] * n
        for w, scorer in self.terms:
            for i, r in enumerate(rewards(scorer)):
                total[i] += w * r
        return total


def log_sigmoid(x: float) -> float:
    """log σ(x), stable for large |x|."""
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _reference_value(ref: Reference, prompt: str, what: str) -> float:
    if callable(ref):
        return float(ref(prompt))
    if isinstance(ref, Mapping):
        if prompt not in ref:
            raise UserError(f"{what}: no reference reward for the prompt {prompt[:80]!r}")
        return float(ref[prompt])
    return float(ref)


class LogSigmoidSum(_OverTerms):
    """Σ_k log σ(r_k(x, y) − r_ref,k(x)); see the module docstring."""

    def __init__(self, terms: Sequence[tuple[Scorer, Reference]]):
        if not terms:
            raise UserError("log-sigmoid sum: give at least one (scorer, reference reward) term")
        self.terms = list(terms)
        self.name = "logsigmoid(" + ", ".join(s.name for s, _ in self.terms) + ")"

    def _sum(self, prompts, responses, rewards: Callable[[Scorer], Sequence[float]]) -> list[float]:
        n = check_lengths(self.name, prompts, responses)
        total = [0.0] * n
        for scorer, ref in self.terms:
            for i, (p, r) in enumerate(zip(prompts, rewards(scorer), strict=True)):
                total[i] += log_sigmoid(r - _reference_value(ref, p, self.name))
        return total


def reference_rewards(scorer: Scorer, prompts: Sequence[str], samples: Sequence[Sequence[str]],
                      quantile: float = 0.5) -> dict[str, float]:
    """Per prompt, the ``quantile`` (linear interpolation) of ``scorer``'s rewards of base-policy
    samples ``samples[i]`` for ``prompts[i]``: r_ref(x) for ``LogSigmoidSum``."""
    if not 0.0 <= quantile <= 1.0:
        raise UserError(f"reference rewards: quantile must be in [0, 1], got {quantile}")
    check_lengths("reference rewards", prompts, samples)
    out = {}
    for prompt, group in zip(prompts, samples, strict=True):
        if not group:
            raise UserError(f"reference rewards: no samples for the prompt {prompt[:80]!r}")
        values = sorted(scorer.score([prompt] * len(group), list(group)))
        pos = quantile * (len(values) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(values) - 1)
        out[prompt] = values[lo] + (pos - lo) * (values[hi] - values[lo])
    return out


class Routed(Scorer):
    """Each prompt scored by the first scorer whose predicate accepts it, else by ``default``."""

    def __init__(self, routes: Sequence[tuple[Callable[[str], bool], Scorer]], default: Scorer | None = None):
        self.routes, self.default = list(routes), default
        self.name = "routed(" + ", ".join(s.name for _, s in self.routes) + ")"

    def route(self, prompt: str) -> Scorer:
        for accepts, scorer in self.routes:
            if accepts(prompt):
                return scorer
        if self.default is None:
            raise UserError(f"{self.name}: no scorer accepts the prompt {prompt[:80]!r}")
        return self.default

    def _grouped(self, prompts: Sequence[str], call: Callable[[Scorer, list[int]], list[float]]) -> list[float]:
        groups: dict[int, tuple[Scorer, list[int]]] = {}
        for i, p in enumerate(prompts):
            scorer = self.route(p)
            groups.setdefault(id(scorer), (scorer, []))[1].append(i)
        out = [0.0] * len(prompts)
        for scorer, idx in groups.values():
            for i, v in zip(idx, call(scorer, idx), strict=True):
                out[i] = v
        return out

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        check_lengths(self.name, prompts, responses)
        return self._grouped(prompts, lambda s, idx: s.score([prompts[i] for i in idx], [responses[i] for i in idx]))

    def score_sampled(self, prompts: Sequence[str], responses: Sequence[str],
                      token_counts: Sequence[int]) -> list[float]:
        check_lengths(self.name, prompts, responses, token_counts)
        return self._grouped(prompts, lambda s, idx: s.score_sampled([prompts[i] for i in idx],
                                                                     [responses[i] for i in idx],
                                                                     [token_counts[i] for i in idx]))

    def compare(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> list[float]:
        check_lengths(self.name, prompts, first, second)
        return self._grouped(prompts, lambda s, idx: s.compare([prompts[i] for i in idx], [first[i] for i in idx],
                                                               [second[i] for i in idx]))


def by_task(scorers: Mapping[str, Scorer]) -> list[tuple[Callable[[str], bool], Scorer]]:
    """Routes that send each testbed task's prompts to its scorer: ``{"arithmetic": s1, ...}``."""
    from alignlab.rewards.programs import TaskReward

    return [(TaskReward(task).owns, scorer) for task, scorer in scorers.items()]
