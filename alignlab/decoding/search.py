"""Token-level search: the loop that reward-guided search (ARGS, with DeAL-style lookahead;
``guided.py``) and Transfer Q* (``transfer_q.py``) share. They differ only in the value they give a
candidate token.

A step at the answer so far y_{<t} runs the model over the prompt and y_{<t}, takes its ``k`` most
likely next tokens c (its k largest logits z_c, most likely first) and scores each by
``z_c + weight · V(c)``, V the method's value of c. At ``temperature`` 0 the step takes the best
(the first among equals); otherwise the first candidate whose cumulative
softmax(scores / temperature) probability exceeds one uniform number, drawn for step t from a
stream keyed by (seed, prompt index, answer index), so an answer does not depend on the batch it
is asked in. It stops at a stop token (the tokenizer's end-of-sequence token or
``stop_token_ids``) or after ``max_new_tokens``.

Logit or log-probability: log π(c | y_{<t}) = z_c − logsumexp(z) differs from the logit by a
number common to every candidate of the step, and neither the argmax nor the softmax of the
scores changes when one number is added to all of them; so ARGS's logit, log π(c | y_{<t}) and
DeAL's log π(y_{<t} ⊕ c) (which adds log π(y_{<t}), again common) pick the same token. The loop
uses the logit.

Rollouts (``rollout``, for the values that look ahead): a candidate's lookahead is the greedy
continuation of (prompt, y_{<t}, c) by a model for at most ``horizon`` tokens, ending at its first
stop token (kept). The horizon is the method's lookahead L cut to the answer's remaining budget,
max_new_tokens − t − 1 tokens: the answer cannot hold what lies beyond it (and the model's context
was checked for the prompt and max_new_tokens only). The k candidate sequences run as one batch:
one pass over the k full sequences, then one token per row per step with the model's key-value
cache; a row that has stopped rides along until every row has stopped.

Compute (``SearchReport``): ``forward_tokens`` counts the tokens every model was run on: each
step's pass over the whole sequence (no cache: simple and exact at the testbed's sizes), the
rollouts' tokens (also counted apart in ``rollout_tokens``) and what a value makes its models read
(Transfer Q*'s reference model); ``reward_calls`` the candidates a scorer scored.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
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
from alignlab.logprobs import gather_logps
from alignlab.rewards.base import reward_prompt

_SALT = 0xA265


@dataclass
class SearchReport:
    forward_tokens: int = 0  # every model's, rollouts included
    rollout_tokens: int = 0  # of which the lookahead rollouts'
    reward_calls: int = 0


def choose(logits: Sequence[float], values: Sequence[float], weight: float, temperature: float, u: float) -> int:
    """The index of the candidate taken: argmax of logit + weight·value (the first among equals)
    at temperature 0, else the first whose cumulative softmax((logit + weight·value)/temperature)
    probability exceeds ``u``."""
    return softmax_pick([a + weight * v for a, v in zip(logits, values, strict=True)], temperature, u)


def until_stop(tokens: Sequence[int], stops: set[int]) -> list[int]:
    """``tokens`` up to (without) the first stop token."""
    out = []
    for t in tokens:
        if t in stops:
            break
        out.append(t)
    return out


@dataclass
class Rollouts:
    tokens: list[list[int]]  # per candidate: the candidate, then its greedy continuation (its stop token kept)
    logps: list[float]  # log π(tokens | prefix) under the model that rolled out


def rollout(model, prefix: Sequence[int], candidates: Sequence[int], horizon: int, stops: set[int],
            report: SearchReport) -> Rollouts:
    """Each candidate c after ``prefix`` (token ids: the prompt and the answer so far), continued
    greedily by ``model`` for at most ``horizon`` tokens or to its first stop token, with the
    summed log-prob of c and its continuation under ``model`` (see the module docstring)."""
    device = next(model.parameters()).device
    k = len(candidates)
    seq = torch.tensor([list(prefix) + [c] for c in candidates], device=device)
    tokens = [[c] for c in candidates]
    with torch.no_grad():
        out = model(input_ids=seq, use_cache=True)
        fed = seq.numel()
        logits = out.logits[:, -2:].float()  # position −2 predicts the candidate, −1 what follows it
        logps = gather_logps(logits[:, :1], seq[:, -1:])[:, 0].tolist()
        last = logits[:, -1]
        live = [c not in stops for c in candidates]
        for step in range(horizon):
            if not any(live):
                break
            nxt = last.argmax(-1)
            lp = gather_logps(last.unsqueeze(1), nxt.unsqueeze(1))[:, 0].tolist()
            for i, v in enumerate(nxt.tolist()):
                if live[i]:
                    tokens[i].append(v)
                    logps[i] += lp[i]
                    live[i] = v not in stops
            if step + 1 < horizon and any(live):
                out = model(input_ids=nxt.unsqueeze(1), past_key_values=out.past_key_values, use_cache=True)
                fed += k
                last = out.logits[:, -1].float()
    report.forward_tokens += fed
    report.rollout_tokens += fed
    return Rollouts(tokens, logps)


def check_search(name: str, k: int, weight: float, lookahead: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UserError(f"{name}: k must be a whole number >= 1, got {k}")
    if not math.isfinite(weight):
        raise UserError(f"{name}: weight must be a finite number, got {weight}")
    if isinstance(lookahead, bool) or not isinstance(lookahead, int) or lookahead < 0:
        raise UserError(f"{name}: lookahead must be a whole number >= 0, got {lookahead}")


class TokenSearch(ABC):
    """The ``Generator`` part of a token-level search over ``self.model`` with ``self.tok``; a
    subclass sets ``k``, ``weight`` and ``lookahead`` and gives ``values``."""

    numbers_prompts = True

    @abstractmethod
    def values(self, text: str, prefix: list[int], answer: list[int], candidates: list[int], horizon: int,
               stops: set[int], report: SearchReport) -> list[float]:
        """The value of each candidate after ``answer`` (``prefix``: the prompt's ids and the
        answer's), for the prompt ``text``; ``horizon``: the tokens a rollout may look ahead."""

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
        report = SearchReport()
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
                    prefix = list(context) + ids
                    seq = torch.tensor([prefix], device=device)
                    with torch.no_grad():
                        logits = self.model(input_ids=seq).logits[0, -1].float()
                    report.forward_tokens += seq.shape[1]
                    top = torch.topk(logits, min(self.k, logits.shape[0]))
                    cands = top.indices.tolist()
                    horizon = min(self.lookahead, params.max_new_tokens - t - 1)
                    values = self.values(text, prefix, ids, cands, horizon, stops, report)
                    u = float(uniforms(keys[j:j + 1], np.array([t]))[0])
                    v = cands[choose(top.values.tolist(), values, self.weight, params.temperature, u)]
                    ids.append(v)
                    logprobs.append(float(torch.log_softmax(logits, -1)[v]))
                    if v in stops:
                        finished = True
                        break
                answer = self.tok.decode(ids[:-1] if finished else ids, skip_special_tokens=True)
                row.append(Sample(answer, tuple(context), tuple(ids), finished, tuple(logprobs)))
            out.append(row)
        self.last_report = report
        return out
