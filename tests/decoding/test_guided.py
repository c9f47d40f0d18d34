"""Reward-guided search (ARGS): the choice by hand on a three-token vocabulary."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from alignlab.decoding.guided import RewardGuided, choose
from alignlab.errors import UserError
from alignlab.generation.base import SamplingParams
from alignlab.rewards.base import Scorer

EOS, A, B = 0, 1, 2


class Fixed(torch.nn.Module):
    """A model whose next-token logits are always (EOS, a, b) = (l_eos, 1, 0) until 3 tokens are
    generated after the 1-token prompt, then EOS is certain."""

    def __init__(self, l_eos=-1.0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.l_eos = l_eos

    def forward(self, input_ids):
        T = input_ids.shape[1]
        row = torch.tensor([self.l_eos, 1.0, 0.0]) if T < 4 else torch.tensor([10.0, -10.0, -10.0])
        return SimpleNamespace(logits=row.expand(1, T, 3))


class Letters:
    eos_token_id = EOS

    def decode(self, ids, skip_special_tokens=True):
        return "".join({A: "a", B: "b"}.get(i, "") for i in ids)


class CountB(Scorer):
    name = "b-count"

    def score(self, prompts, responses):
        return [float(r.count("b")) for r in responses]


def test_choose_by_hand():
    """Logits (1, 0) for (a, b), reward +1 for b: weight 0.5 keeps a (1 > 0.5), weight 2 takes b
    (2 > 1), a tie takes the first; at temperature 1 with weight 1 the scores tie, so u 0.49 -> a, 0.51 -> b."""
    assert choose([1.0, 0.0], [0.0, 1.0], 0.5, 0.0, 0.0) == 0
    assert choose([1.0, 0.0], [0.0, 1.0], 2.0, 0.0, 0.0) == 1
    assert choose([1.0, 0.0], [0.0, 1.0], 1.0, 0.0, 0.0) == 0
    assert choose([1.0, 0.0], [0.0, 1.0], 1.0, 1.0, 0.49) == 0 and choose([1.0, 0.0], [0.0, 1.0], 1.0, 1.0, 0.51) == 1


@pytest.mark.parametrize("weight,want", [(0.0, "aaa"), (2.0, "bbb")])
def test_the_reward_steers_each_token(weight, want):
    """Top-2 tokens each step are a (logit 1) and b (0); the reward counts b's, so b gains 1 at every
    step: weight 0 follows the model (a a a), weight 2 the reward (b b b); then EOS ends the answer.
    Each step runs the model over the whole sequence: 1 + 2 + 3 + 4 tokens."""
    guided = RewardGuided(Fixed(), Letters(), CountB(), k=2, weight=weight)
    (answer,), = guided.generate_ids([(7,)], 1, SamplingParams(temperature=0, max_new_tokens=8))
    assert answer.text == want and answer.finished and answer.token_ids[-1] == EOS
    assert answer.logprobs[0] == pytest.approx(
        (1.0 if want[0] == "a" else 0.0) - math.log(math.exp(-1) + math.e + 1), abs=1e-6)
    assert guided.last_report.forward_tokens == 1 + 2 + 3 + 4 and guided.last_report.reward_calls == 8


def test_bad_settings():
    for kwargs, message in (({"scorer": None}, "needs a scorer"), ({"k": 0}, "k must be"),
                            ({"weight": float("nan")}, "weight must be")):
        with pytest.raises(UserError, match=message):
            RewardGuided(**{"model": Fixed(), "tokenizer": Letters(), "scorer": CountB(), **kwargs})
