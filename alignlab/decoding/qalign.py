"""QAlign: test-time alignment by Markov chain Monte Carlo (Faria & Smith 2025, "Sample, Don't
Search: Rethinking Test-Time Alignment for Language Models", after QUEST, Faria et al. 2024;
ALGORITHMS.md §7.2).

The target is π*(y | x) ∝ π(y | x) · exp(r(x, y) / β): the model's distribution tilted by the
reward. ``QAlign(base, scorer, steps, beta)`` is a ``Generator`` that runs one Metropolis-Hastings
chain per answer:
1. the chain starts at an ancestral sample y of the model;
2. a step picks a position i uniformly in {0, …, n − 1} (n = the answer's tokens), keeps y_{<i} and
   samples a new suffix from the model at temperature 1 given the prompt and y_{<i}: y′;
3. y′ replaces y with probability min(1, exp((r(y′) − r(y)) / β) · n / n′), n′ = |y′|; the
   model's own probabilities cancel out of the ratio (the proposal is the model itself), and the
   log of the ratio is clipped to ±20.
The answer is the chain's last state, or (``vote``) the most frequent answer text among its states
after ``burn_in`` steps (ties: the latest state among the tied). Each step's suffixes for every
chain are drawn in one call of the base generator, with a seed that is a function of (seed,
step); the positions and the acceptance draws come from a stream per (seed, prompt index, answer
index), so an answer does not depend on the batch it is asked in.

``last_report`` holds what the last call did: the acceptance rate and the model forward tokens
(each proposal's context, the prompt and the kept prefix, plus its new tokens, as a forward pass
without a cache shared across proposals computes them).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from alignlab.data.records import Text
from alignlab.decoding.wraps import Wraps
from alignlab.errors import UserError
from alignlab.generation.base import Generator, Sample, SamplingParams
from alignlab.generation.draw import stream_keys, uniforms
from alignlab.rewards.base import Scorer, reward_prompt

CLIP = 20.0
_SALT = 0x0A11_6E


def log_acceptance(r_new: float, r_old: float, n_old: int, n_new: int, beta: float) -> float:
    """log of the Metropolis-Hastings ratio (r′ − r)/β + log(n / n′), clipped to ±20 (the suffix
    proposal from the model itself: its probabilities cancel)."""
    value = (r_new - r_old) / beta + math.log(max(n_old, 1) / max(n_new, 1))
    return max(-CLIP, min(CLIP, value))


@dataclass
class QAlignReport:
    proposals: int = 0
    accepted: int = 0
    forward_tokens: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposals if self.proposals else 0.0


@dataclass
class _Chain:
    context: tuple[int, ...]
    prompt: str
    state: Sample
    reward: float
    key: int
    history: list[Sample]


class QAlign(Wraps):
    """A ``Generator`` that answers with a reward-tilted MCMC chain per answer (see the module docstring)."""

    def __init__(self, base: Generator, scorer: Scorer, steps: int, beta: float = 1.0, vote: bool = False,
                 burn_in: int = 0, tokenizer=None):
        if scorer is None:
            raise UserError("qalign needs a scorer (a reward) to tilt the model by (--scorer SPEC)")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise UserError(f"qalign: steps must be a whole number >= 0, got {steps}")
        if not (math.isfinite(beta) and beta > 0):
            raise UserError(f"qalign: beta must be a finite number > 0, got {beta}")
        if not 0 <= burn_in <= steps:
            raise UserError(f"qalign: burn_in must be in [0, steps], got {burn_in}")
        self.scorer, self.steps, self.beta = scorer, steps, float(beta)
        self.vote, self.burn_in = vote, burn_in
        self._wrap(base, tokenizer)
        if self.tok is None:
            raise UserError("qalign: the base generator has no tokenizer to decode the chains' answers with")
        self.last_report = QAlignReport()

    def generate(self, prompts: Sequence[Text], n: int, params: SamplingParams, start: int = 0) -> list[list[Sample]]:
        contexts = [self.base.prompt_ids(p) for p in prompts]
        return self._run(contexts, [reward_prompt(p) for p in prompts], n, params, start)

    def generate_ids(self, contexts: Sequence[tuple[int, ...]], n: int, params: SamplingParams,
                     start: int = 0) -> list[list[Sample]]:
        texts = [self.tok.decode(list(c), skip_special_tokens=True) for c in contexts]
        return self._run([tuple(c) for c in contexts], texts, n, params, start)

    def _score(self, chains: Sequence[_Chain], samples: Sequence[Sample]) -> list[float]:
        return [float(x) for x in self.scorer.score([c.prompt for c in chains], [s.text for s in samples])]

    def _run(self, contexts, texts, k: int, params: SamplingParams, start: int) -> list[list[Sample]]:
        report = QAlignReport()
        first = self.base.generate_ids(contexts, k, params, start=start)
        chains = []
        for p, group in enumerate(first):
            keys = stream_keys((params.seed + _SALT) % (2**63), np.full(k, start + p), np.arange(k))
            for j, s in enumerate(group):
                chains.append(_Chain(contexts[p], texts[p], s, 0.0, int(keys[j]), [s]))
                report.forward_tokens += len(s.prompt_ids) + len(s.token_ids)
        for c, r in zip(chains, self._score(chains, [c.state for c in chains]), strict=True):
            c.reward = r
        for t in range(1, self.steps + 1):
            # this step's uniforms: one for the position, one for the acceptance, per chain
            keys = np.array([c.key for c in chains], dtype=np.uint64)
            u_pos = uniforms(keys, np.full(len(chains), 2 * t - 2, dtype=np.int64))
            u_acc = uniforms(keys, np.full(len(chains), 2 * t - 1, dtype=np.int64))
            cuts = [int(u * max(len(c.state.token_ids), 1)) for c, u in zip(chains, u_pos, strict=True)]
            prefixes = [c.context + c.state.token_ids[:i] for c, i in zip(chains, cuts, strict=True)]
            # one suffix per chain in one call: chain m of this call is chain start·k + m of the
            # caller's whole set, so the step's seed and its number make its draw its own; a suffix
            # is cut where the answer would pass max_new_tokens (the same law as drawing it with
            # that much room)
            got = self.base.generate_ids(prefixes, 1, replace(params, seed=(params.seed * 1_000_003 + 7919 * t) % (2**63)),
                                         start=start * k)
            proposals: list[Sample] = []
            for c, i, prefix, (s,) in zip(chains, cuts, prefixes, got, strict=True):
                room = max(params.max_new_tokens - i, 0)
                new = s.token_ids[:room]
                finished = s.finished and len(s.token_ids) <= room
                ids = c.state.token_ids[:i] + new
                text = self.tok.decode(list(ids[:-1] if finished else ids), skip_special_tokens=True)
                sampling = (c.state.sampling_logprobs[:i] + s.sampling_logprobs[:room]
                            if c.state.sampling_logprobs and s.sampling_logprobs else ())
                whole = len(c.state.logprobs) == len(c.state.token_ids) and len(s.logprobs) == len(s.token_ids)
                logprobs = c.state.logprobs[:i] + s.logprobs[:room] if whole else ()
                proposals.append(Sample(text, c.context, ids, finished, logprobs, sampling if whole else ()))
                report.forward_tokens += len(prefix) + len(new)
            new_rewards = self._score(chains, proposals)
            for c, y, r, u in zip(chains, proposals, new_rewards, u_acc, strict=True):
                report.proposals += 1
                if math.log(max(float(u), 1e-300)) < log_acceptance(r, c.reward, len(c.state.token_ids),
                                                                    len(y.token_ids), self.beta):
                    c.state, c.reward = y, r
                    report.accepted += 1
                c.history.append(c.state)
        self.last_report = report
        out = []
        for p in range(len(contexts)):
            mine = chains[p * k:(p + 1) * k]
            out.append([self._answer(c) for c in mine])
        return out

    def _answer(self, chain: _Chain) -> Sample:
        if not self.vote:
            return chain.state
        kept = chain.history[self.burn_in:]
        counts = Counter(s.text for s in kept)
        top = max(counts.values())
        return next(s for s in reversed(kept) if counts[s.text] == top)
