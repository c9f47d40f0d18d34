"""QAlign: the Metropolis-Hastings step by hand, and a chain that settles on the reward-tilted
distribution of a two-answer model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignlab.decoding.qalign import QAlign, log_acceptance
from alignlab.errors import UserError
from alignlab.generation.base import Sample, SamplingParams
from alignlab.rewards.base import Scorer

EOS = 0
A, B = ord("A"), ord("B")


class Chars:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids if i != EOS)


class Coin:
    """A model that answers one token, A or B with probability 1/2 each, then EOS. Each sequence's
    coin comes from its own stream (seed, its number in the caller's set)."""

    numbers_prompts = True

    def __init__(self):
        self.tok = Chars()

    def prompt_ids(self, prompt):
        return (1,)

    def generate_ids(self, contexts, n, params, start=0):
        out = []
        for p, ctx in enumerate(contexts):
            row = []
            for j in range(n):
                rng = np.random.default_rng([params.seed, start + p, j])
                answered = len(ctx) > 1  # the answer token is already there: only EOS is left
                ids = (EOS,) if answered else ((A if rng.random() < 0.5 else B), EOS)
                row.append(Sample(self.tok.decode(ids), tuple(ctx), ids, True, tuple(-math.log(2) for _ in ids)))
            out.append(row)
        return out

    def update_weights(self, model):
        pass


class IsA(Scorer):
    name = "is-A"

    def score(self, prompts, responses):
        return [1.0 if r == "A" else 0.0 for r in responses]


def test_the_acceptance_ratio_by_hand():
    """(r′ − r)/β + log(n/n′): rewards 2 and 1 at β 0.5 with lengths 4 → 2 give 2 + log 2; clipped at ±20."""
    assert log_acceptance(2.0, 1.0, 4, 2, 0.5) == pytest.approx(2 + math.log(2), abs=1e-15)
    assert log_acceptance(1.0, 1.0, 3, 3, 1.0) == 0.0
    assert log_acceptance(100.0, 0.0, 1, 1, 1.0) == 20.0 and log_acceptance(-100.0, 0.0, 1, 1, 1.0) == -20.0


def test_the_chain_settles_on_the_reward_tilted_distribution():
    """Target π*(A) ∝ π(A)·e^{r(A)/β} = ½e against ½ for B: e/(1+e) = 0.7311 at β = 1. A proposal
    from position 0 redraws the answer (the model itself), from position 1 keeps it; n = n′ = 2
    tokens, so a move to A is always accepted and one to B with probability 1/e. 2000 chains of
    30 steps: the share at A within 4 standard deviations (0.040) of 0.7311; with 0 steps the
    model's own 1/2."""
    prompts = ["q"] * 2000
    settled = QAlign(Coin(), IsA(), steps=30, beta=1.0).generate(prompts, 1, SamplingParams(max_new_tokens=4))
    share = sum(row[0].text == "A" for row in settled) / 2000
    target = math.e / (1 + math.e)
    assert abs(share - target) < 4 * math.sqrt(target * (1 - target) / 2000)
    plain = QAlign(Coin(), IsA(), steps=0).generate(prompts, 1, SamplingParams(max_new_tokens=4))
    assert abs(sum(row[0].text == "A" for row in plain) / 2000 - 0.5) < 4 * math.sqrt(0.25 / 2000)


def test_a_chain_does_not_depend_on_its_batch_and_reports_its_work():
    q = QAlign(Coin(), IsA(), steps=5, beta=1.0)
    whole = q.generate(["q"] * 20, 2, SamplingParams(seed=4, max_new_tokens=4))
    report = q.last_report
    part = q.generate(["q"] * 5, 2, SamplingParams(seed=4, max_new_tokens=4), start=10)
    assert [[s.text for s in row] for row in part] == [[s.text for s in row] for row in whole[10:15]]
    assert report.proposals == 20 * 2 * 5 and 0 < report.acceptance_rate <= 1
    assert report.forward_tokens > 0


def test_a_vote_picks_the_most_frequent_answer_after_burn_in_the_latest_among_ties():
    """States B B A A B A with burn-in 2: A A B A, so A; states A B after burn-in 0: a tie, so the
    latest, B; without a vote the last state."""
    from alignlab.decoding.qalign import _Chain

    def chain(texts):
        states = [Sample(t, (1,), (ord(t), EOS), True) for t in texts]
        return _Chain((1,), "q", states[-1], 0.0, 0, states)

    assert QAlign(Coin(), IsA(), steps=6, vote=True, burn_in=2)._answer(chain("BBAABA")).text == "A"
    assert QAlign(Coin(), IsA(), steps=6, vote=True)._answer(chain("AB")).text == "B"
    assert QAlign(Coin(), IsA(), steps=6)._answer(chain("BBAABB")).text == "B"


@pytest.mark.parametrize("kwargs,message", [({"scorer": None}, "needs a scorer"), ({"steps": -1}, "steps must be"),
                                            ({"beta": 0.0}, "beta must be"), ({"burn_in": 9}, "burn_in must be")])
def test_bad_settings(kwargs, message):
    args = {"base": Coin(), "scorer": IsA(), "steps": 4, **kwargs}
    with pytest.raises(UserError, match=message):
        QAlign(**args)
