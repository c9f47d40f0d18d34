"""Sampled evaluation: how a policy's answers to a set of prompts score, against a reference's.

Over (prompts, a ``Scorer``, generators): for each prompt the policy answers once by sampling and
once greedily. Reported, each under ``PREFIX/``:

- ``sampled``, ``greedy``: mean score of those answers;
- ``win_rate``: how often the sampled answer beats a sample from the reference. With a pointwise
  scorer (``Scorer.compares_by_score``) a higher score wins and a tie counts one half; with a
  pairwise one (a judge) it is the mean of ``compare(prompt, answer, reference's answer)``. The
  reference's samples are drawn once, with their own seed, and reused at every evaluation;
- ``kl``: KL(policy ‖ reference) estimated from the policy's samples as the mean of
  log π(y|x) − log π_ref(y|x), summed over the response tokens (unbiased; a single term can be
  negative);
- ``length``: mean number of generated tokens, end-of-turn token excluded.

With ``decoding`` (a function that puts a decoding method, ``alignlab.decoding``, on top of the
policy's generator) the policy also answers each prompt once through the method, at the sampling
temperature (greedily for a method that only decodes greedily, ``greedy_only``), and ``PREFIX@NAME/`` reports ``sampled``, ``win_rate`` (against the same reference
samples), ``length`` and ``forward_tokens``, the model forward tokens the method spent per prompt.
It has no ``kl``: the samples' log-probs are the policy's, not the method's distribution's.

The scorer can be anything ``alignlab.rewards.load_scorer`` builds: a task's gold reward
(``task:arithmetic``, see ``eval/gold.py``), a reward model, a judge, a function. Samples come
from ``make_generator`` (or the ``generators`` function given). The reference is a module, or a
function returning a context manager that yields it (a LoRA policy's reference is the same
network with its adapter switched off, only inside that context). The prompts can be split over
processes (``rank``/``world_size``: each takes a contiguous block); ``reduce`` sums the per-process
totals, so every process gets the same numbers. With the "native" backend (the default) a prompt's
samples depend only on the seed and its index in the whole prompt set, so the numbers do not
depend on the number of processes or the batch size either (up to the last bits of the logits).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from alignlab.data.records import Text
from alignlab.errors import UserError
from alignlab.generation import Generator, Sample, SamplingParams, make_generator
from alignlab.generation.factory import check_backend
from alignlab.logprobs import completion_logps
from alignlab.models import evaluating
from alignlab.rewards.base import Scorer, win_points

REFERENCE_SEED_OFFSET = 7919  # the reference's samples use a seed of their own
METRICS = ("sampled", "greedy", "win_rate", "kl", "length")


@dataclass
class SampledEvaluation:
    """The evaluation of the module docstring. ``prompts`` is given in full; after construction it
    holds this process's share (the ``rank``-th of ``world_size`` contiguous blocks, the first ones
    one prompt longer when they do not divide evenly), which starts at ``offset`` in the whole set."""

    prompts: Sequence[Text]
    scorer: Scorer
    tokenizer: object
    max_new_tokens: int
    prefix: str = "reward"  # metric names: PREFIX/sampled, PREFIX/greedy, ...
    seed: int = 0
    temperature: float = 1.0
    batch_size: int = 128
    rank: int = 0
    world_size: int = 1
    progress: bool = False  # a bar for each sampling pass
    backend: str = "native"  # make_generator's backend
    generators: Callable[[Any, str | None], Generator] | None = None  # (module, bar label) -> Generator
    prompts_name: str = "prompts"  # what the progress bars call the prompts
    decoding: Callable[[Generator, Any], Generator] | None = None  # (policy's generator, policy) -> method
    decoding_name: str = "decoded"  # its metrics: PREFIX@NAME/...

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise UserError(f"sampled evaluation: rank must be in [0, world_size) and world_size >= 1, got rank "
                            f"{self.rank} of {self.world_size}")
        if not self.prompts:
            raise UserError(f"sampled evaluation: no {self.prompts_name} to answer")
        check_backend(self.backend)
        size, extra = divmod(len(self.prompts), self.world_size)
        self.offset = self.rank * size + min(self.rank, extra)
        self.prompts = list(self.prompts)[self.offset:self.offset + size + (self.rank < extra)]
        self._reference: tuple[list[str], list[float] | None] | None = None  # texts, scores

    def _generator(self, model, what: str) -> Generator:
        label = f"evaluating: {what} answers to {len(self.prompts)} {self.prompts_name}" if self.progress else None
        if self.generators is not None:
            return self.generators(model, label)
        return make_generator(model, self.tokenizer, self.backend, batch_size=self.batch_size, progress=label)

    def _generate(self, model, params: SamplingParams, what: str) -> list[Sample]:
        return [s[0] for s in self._generator(model, what).generate(self.prompts, 1, params, start=self.offset)]

    def _decoded(self, policy) -> dict[str, float]:
        """The sums of the policy answering through ``decoding``."""
        method = self.decoding(self._generator(policy, self.decoding_name), policy)
        greedy = getattr(method, "greedy_only", False)  # e.g. nudging: greedy as its paper, and nothing else
        samples = [s[0] for s in method.generate(self.prompts, 1, self._params(greedy, self.seed), start=self.offset)]
        scores = self._score(samples)
        wins = self._wins([s.text for s in samples], scores)
        p = f"{self.prefix}@{self.decoding_name}"
        return {f"{p}/sampled": sum(scores), f"{p}/win_rate": sum(wins),
                f"{p}/length": float(sum(len(s.token_ids) - int(s.finished) for s in samples)),
                f"{p}/forward_tokens": float(method.last_report.forward_tokens)}

    def _params(self, greedy: bool, seed: int) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=0.0 if greedy else self.temperature,
                              seed=seed)

    def _score(self, samples: Sequence[Sample]) -> list[float]:
        return self.scorer.score(self.prompts, [s.text for s in samples])

    def _wins(self, texts: list[str], scores: list[float]) -> list[float]:
        ref_texts, ref_scores = self._reference
        if ref_scores is not None:
            return win_points(scores, ref_scores)
        return self.scorer.compare(self.prompts, texts, ref_texts)

    def sums(self, policy, reference: Any) -> dict[str, float]:
        """This process's totals: sums over its prompts, and their count under ``_count``."""
        scope = reference if callable(reference) and not hasattr(reference, "forward") else (
            lambda: contextlib.nullcontext(reference))
        if self._reference is None:
            with scope() as ref:
                ref_samples = self._generate(ref, self._params(False, self.seed + REFERENCE_SEED_OFFSET), "reference")
            pointwise = self.scorer.compares_by_score
            self._reference = ([s.text for s in ref_samples], self._score(ref_samples) if pointwise else None)
        sampled = self._generate(policy, self._params(False, self.seed), "sampled")
        greedy = self._generate(policy, self._params(True, self.seed), "greedy")
        score_s = self._score(sampled)
        score_g = self._score(greedy)
        wins = self._wins([s.text for s in sampled], score_s)
        kl = self._kl(policy, scope, sampled)
        lengths = [len(s.token_ids) - int(s.finished) for s in sampled]
        p = self.prefix
        sums = {f"{p}/sampled": sum(score_s), f"{p}/greedy": sum(score_g), f"{p}/win_rate": sum(wins),
                f"{p}/kl": kl, f"{p}/length": float(sum(lengths)), "_count": float(len(self.prompts))}
        if self.decoding is not None:
            with evaluating(policy):
                sums.update(self._decoded(policy))
        return sums

    def _kl(self, policy, scope, samples: Sequence[Sample]) -> float:
        if not samples:
            return 0.0
        pad = self.tokenizer.pad_token_id
        prompts = [s.prompt_ids for s in samples]
        responses = [s.token_ids for s in samples]
        with evaluating(policy):  # with LoRA the reference is this same module: both passes run in eval mode
            lp_policy = completion_logps(policy, prompts, responses, pad, self.batch_size)
            with scope() as ref:
                lp_ref = completion_logps(ref, prompts, responses, pad, self.batch_size)
        return float((lp_policy - lp_ref).sum())

    def __call__(self, policy, reference: Any,
                 reduce: Callable[[dict[str, float]], dict[str, float]] | None = None) -> dict[str, float]:
        """Mean metrics over all prompts (summed over processes with ``reduce`` when given)."""
        totals = self.sums(policy, reference)
        if reduce is not None:
            totals = reduce(totals)
        count = max(totals.pop("_count"), 1.0)
        return {k: v / count for k, v in totals.items()}
