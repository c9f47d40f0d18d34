"""Reward-guided decoding, ARGS-style (Khanov et al. 2024, "ARGS: Alignment as Reward-Guided
Search"; ALGORITHMS.md §7.4 for the search family).

At each step the model's ``k`` most likely next tokens v are each scored by
``logit(v) + weight · r(x, y_{<t} ⊕ v)``, the reward of the answer extended by v (the scorer reads
the partial answer as text), and the step takes the best (greedy, ``temperature`` 0) or samples
from the softmax of the scores at ``temperature`` (ARGS's stochastic variant; one uniform number
per step from a stream keyed by (seed, prompt index, answer index), so an answer does not depend
on its batch). It stops at the end-of-sequence token or ``max_new_tokens``.

Why by hand: it needs the logits of every step and a reward call per candidate, which no sampler
engine exposes; it runs the model's own forward pass over the whole sequence each step (no cache),
which is simple and exact and fits the small models it is measured on. ``last_report`` counts the
model forward tokens (every step's whole sequence) and the reward calls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from alignlab.data.records import Text
from alignlab.decoding.best_of_n import softmax_pick
from alignlab.errors import UserError
from alignlab.generation.base import Sample, SamplingParams
from alignlab.generation.draw import stream_keys, uniforms
from alignlab.generation.prompts import prompt_ids as render_prompt
from alignlab.rewards.base import Scorer, reward_prompt

_SALT = 0xA265


@dataclass
class GuidedReport:
    forward_tokens: int = 0
    reward_calls: int = 0


def choose(logits: Sequence[float], rewards: Sequence[float], weight: float, temperature: float, u: float) -> int:
    """The index of the candidate taken: argmax of logit + weight·reward (the first among equals)
    at temperature 0, else the first whose cumulative softmax((logit + weight·reward)/temperature)
    probability exceeds ``u``."""
    return softmax_pick([a + weight * r for a, r in zip(logits, rewards, strict=True)], temperature, u)


class RewardGuided:
    """A ``Generator`` that decodes ``model`` token by token, guided by ``scorer`` (see the module docstring)."""

    numbers_prompts = True

    def __init__(self, model, tokenizer, scorer: Scorer, k: int = 10, weight: float = 1.0):
        if scorer is None:
            raise UserError("reward-guided search needs a scorer to guide with (--scorer SPEC)")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UserError(f"reward-guided search: k must be a whole number >= 1, got {k}")
        if not math.isfinite(weight):
            raise UserError(f"reward-guided search: weight must be a finite number, got {weight}")
        self.model, self.tok, self.scorer, self.k, self.weight = model, tokenizer, scorer, k, float(weight)
        self.last_report = GuidedReport()

    def prompt_ids(self, prompt: Text) -> tuple[int, ...]:
        return render_prompt(self.tok, prompt)

    def update_weights(self, model) -> None:
        self.model = model

    def generate(self, prompts: Sequence[Text], n: int, params: SamplingParams, start: int = 0) -> list[list[Sample]]:
        return self._run([self.prompt_ids(p) for p in prompts], [reward_prompt(p) for p in prompts], n, params, start)

    def generate_ids(self, contexts: Sequence[tuple[int, ...]], n: int, params: SamplingParams,
                     start: int = 0) -> list[list[Sample]]:
        texts = [self.tok.decode(list(c), skip_special_tokens=True) for c in contexts]
        return self._run([tuple(c) for c in contexts], texts, n, params, start)

    def _run(self, contexts, texts, n: int, params: SamplingParams, start: int) -> list[list[Sample]]:
        report = GuidedReport()
        stops = set(params.stops(self.tok.eos_token_id))
        device = next(self.model.parameters()).device
        out = []
        for p, (context, text) in enumerate(zip(contexts, texts, strict=True)):
            keys = stream_keys((params.seed + _SALT) % (2**63), np.full(n, start + p), np.arange(n))
            row = []
            for j in range(n):
                ids: list[int] = []
                logprobs: list[float] = []
                finished = False
                for t in range(params.max_new_tokens):
                    seq = torch.tensor([list(context) + ids], device=device)
                    with torch.no_grad():
                        logits = self.model(input_ids=seq).logits[0, -1].float()
                    report.forward_tokens += seq.shape[1]
                    logp = torch.log_softmax(logits, -1)
                    top = torch.topk(logits, min(self.k, logits.shape[0]))
                    cands = top.indices.tolist()
                    partial = [self.tok.decode(ids + [v] if v not in stops else ids, skip_special_tokens=True)
                               for v in cands]
                    rewards = [float(r) for r in self.scorer.score([text] * len(cands), partial)]
                    report.reward_calls += len(cands)
                    u = float(uniforms(keys[j:j + 1], np.array([t]))[0])
                    v = cands[choose(top.values.tolist(), rewards, self.weight, params.temperature, u)]
                    ids.append(v)
                    logprobs.append(float(logp[v]))
                    if v in stops:
                        finished = True
                        break
                answer = self.tok.decode(ids[:-1] if finished else ids, skip_special_tokens=True)
                row.append(Sample(answer, tuple(context), tuple(ids), finished, tuple(logprobs)))
            out.append(row)
        self.last_report = report
        return out
