"""Reward-guided decoding, ARGS-style (Khanov et al. 2024, "ARGS: Alignment as Reward-Guided
Search"), with DeAL-style lookahead (Huang et al. 2024, "DeAL: Decoding-time Alignment for Large
Language Models"; ALGORITHMS.md §7.4).

At each step the model's ``k`` most likely next tokens c are each scored by
``logit(c) + weight · h(x, y_{<t} ⊕ c ⊕ rollout(c))``: the scorer's reward of the answer so far
extended by c and by c's rollout, read as text. With ``lookahead`` L = 0 the rollout is empty and
this is ARGS; with L > 0 it is the model's own greedy continuation of c for at most L tokens (to
its first stop token, within the answer's budget), DeAL's lookahead, so the reward sees where c
leads (a keyword finished, a word limit kept) and not only the partial text. The step then takes
the best (greedy, ``temperature`` 0) or samples from the softmax of the scores at ``temperature``
(ARGS's stochastic variant): the loop, the choice, its random stream and the rollouts are
``search.py``'s; the logit form equals log π(c | y_{<t}) or DeAL's log π(y_{<t} ⊕ c) for the
choice (explained there). DeAL uses A*-like search with a beam; this keeps one hypothesis (a beam
of 1), and its k, L and weight are ARGS's knobs, not DeAL's unverified ones.

Why by hand: it needs the logits of every step and a reward call per candidate, which no sampler
engine exposes. ``last_report`` counts the model forward tokens (every step's whole sequence, and
the rollouts', also apart as ``rollout_tokens``) and the reward calls (k per step).
"""

from __future__ import annotations

from alignlab.decoding.search import SearchReport, TokenSearch, check_search, rollout, until_stop
from alignlab.errors import UserError
from alignlab.rewards.base import Scorer


class RewardGuided(TokenSearch):
    """A ``Generator`` that decodes ``model`` token by token, guided by ``scorer`` (see the module docstring)."""

    def __init__(self, model, tokenizer, scorer: Scorer, k: int = 10, weight: float = 1.0, lookahead: int = 0):
        if scorer is None:
            raise UserError("reward-guided search needs a scorer to guide with (--scorer SPEC)")
        check_search("reward-guided search", k, weight, lookahead)
        self.model, self.tok, self.scorer = model, tokenizer, scorer
        self.k, self.weight, self.lookahead = k, float(weight), lookahead
        self.last_report = SearchReport()

    def values(self, text, prefix, answer, candidates, horizon, stops, report):
        if horizon:  # lookahead L > 0 with budget left
            seqs = rollout(self.model, prefix, candidates, horizon, stops, report).tokens
        else:
            seqs = [[c] for c in candidates]
        partial = [self.tok.decode(answer + until_stop(s, stops), skip_special_tokens=True) for s in seqs]
        report.reward_calls += len(candidates)
        return [float(r) for r in self.scorer.score([text] * len(candidates), partial)]
