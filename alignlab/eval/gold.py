"""Measure a policy on a testbed task's held-out prompts against the task's gold reward.

For each held-out prompt the policy answers once by sampling and once greedily. Reported:

- ``gold/sampled``, ``gold/greedy``: mean gold reward of those answers;
- ``gold/win_rate``: how often the sampled answer beats a sample from the reference (the SFT
  model) under the gold reward; a tie counts one half. The reference's samples are drawn once,
  with their own seed, and reused at every evaluation;
- ``gold/kl``: KL(policy ‖ reference) estimated from the policy's samples as the mean of
  log π(y|x) − log π_ref(y|x), summed over the response tokens (unbiased; a single term can be
  negative);
- ``gold/length``: mean number of generated tokens, end-of-turn token excluded.

The reference is a module, or a function returning a context manager that yields it (a LoRA
policy's reference is the same network with its adapter switched off, only inside that context).
The prompts can be split over processes (``rank``/``world_size``); ``reduce`` sums the per-process
totals, so every process gets the same numbers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from alignlab.generation import HFGenerator, Sample, SamplingParams
from alignlab.logprobs import completion_logps
from alignlab.tasks import Task

REFERENCE_SEED_OFFSET = 7919  # the reference's samples use a seed of their own


@dataclass
class GoldEvaluator:
    task: Task
    tokenizer: object
    seed: int = 0
    num_prompts: int = 0  # 0: all of the task's held-out prompts
    temperature: float = 1.0
    batch_size: int = 128
    rank: int = 0
    world_size: int = 1
    progress: bool = False  # a bar for each sampling pass

    def __post_init__(self) -> None:
        prompts = self.task.eval_prompts()
        if self.num_prompts:
            prompts = prompts[:self.num_prompts]
        self.prompts: list[str] = prompts[self.rank::self.world_size]
        self._reference_gold: list[float] | None = None

    def _generate(self, model, params: SamplingParams, what: str) -> list[Sample]:
        label = f"evaluating: {what} answers to {len(self.prompts)} held-out prompts" if self.progress else None
        gen = HFGenerator(model, self.tokenizer, self.batch_size, progress=label)
        return [s[0] for s in gen.generate(self.prompts, 1, params)]

    def _params(self, greedy: bool, seed: int) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.task.max_new_tokens, temperature=0.0 if greedy else self.temperature,
                              seed=seed)

    def sums(self, policy, reference: Any) -> dict[str, float]:
        """This process's totals: sums over its prompts, and their count under ``_count``."""
        scope = reference if callable(reference) and not hasattr(reference, "forward") else (
            lambda: contextlib.nullcontext(reference))
        if self._reference_gold is None:
            with scope() as ref:
                ref_samples = self._generate(ref, self._params(False, self.seed + REFERENCE_SEED_OFFSET), "reference")
            self._reference_gold = [self.task.gold(p, s.text) for p, s in zip(self.prompts, ref_samples, strict=True)]
        sampled = self._generate(policy, self._params(False, self.seed), "sampled")
        greedy = self._generate(policy, self._params(True, self.seed), "greedy")
        gold_s = [self.task.gold(p, s.text) for p, s in zip(self.prompts, sampled, strict=True)]
        gold_g = [self.task.gold(p, s.text) for p, s in zip(self.prompts, greedy, strict=True)]
        wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(gold_s, self._reference_gold, strict=True)]
        kl = self._kl(policy, scope, sampled)
        lengths = [len(s.token_ids) - int(s.finished) for s in sampled]
        return {"gold/sampled": sum(gold_s), "gold/greedy": sum(gold_g), "gold/win_rate": sum(wins),
                "gold/kl": kl, "gold/length": float(sum(lengths)), "_count": float(len(self.prompts))}

    def _kl(self, policy, scope, samples: Sequence[Sample]) -> float:
        if not samples:
            return 0.0
        pad = self.tokenizer.pad_token_id
        prompts = [s.prompt_ids for s in samples]
        responses = [s.token_ids for s in samples]
        was_training = policy.training
        policy.eval()  # with LoRA the reference is this same module: both passes run in eval mode
        try:
            lp_policy = completion_logps(policy, prompts, responses, pad, self.batch_size)
            with scope() as ref:
                lp_ref = completion_logps(ref, prompts, responses, pad, self.batch_size)
        finally:
            policy.train(was_training)
        return float((lp_policy - lp_ref).sum())

    def __call__(self, policy, reference: Any,
                 reduce: Callable[[dict[str, float]], dict[str, float]] | None = None) -> dict[str, float]:
        """Mean metrics over all prompts (summed over processes with ``reduce`` when given)."""
        totals = self.sums(policy, reference)
        if reduce is not None:
            totals = reduce(totals)
        count = max(totals.pop("_count"), 1.0)
        return {k: v / count for k, v in totals.items()}

