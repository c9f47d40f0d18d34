"""Reward-guided search (ARGS, and DeAL-style lookahead): the choice by hand on a three-token vocabulary."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from alignlab.decoding.guided import RewardGuided
from alignlab.decoding.search import choose
from alignlab.errors import UserError
from alignlab.generation.base import SamplingParams
from alignlab.rewards.base import Scorer
from tests.decoding.fakes import EOS, Letters, Markov


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


# After the prompt (token 7) the model prefers a (logit 1) to b (0); after a it goes on with a
# (logit 2), after b with b (2); EOS stays at -5.
SELF_FOLLOWING = Markov({1: [-5.0, 2.0, 0.0], 2: [-5.0, 0.0, 2.0]}, start=[-5.0, 1.0, 0.0])


@pytest.mark.parametrize("lookahead,want,forward,rollout", [(0, "aaa", 6, 0), (2, "bbb", 18, 12)])
def test_lookahead_sees_where_a_token_leads(lookahead, want, forward, rollout):
    """Weight 0.5, reward = the number of b's, top-2 candidates, 3 new tokens at most.
    L = 0 (ARGS): step 1 scores a 1 + 0.5·0 = 1 against b 0 + 0.5·1 = 0.5 and takes a; after a the
    logits are (a 2, b 0): a 2 against b 0.5, so "aaa".
    L = 2: each candidate is rolled out greedily, cut to the budget (2, then 1, then 0 tokens): step
    1 sees "aaa" (reward 0, score 1) against "bbb" (3, 0 + 1.5) and takes b; step 2 (after b: b 2, a
    0) sees "bbb" (2 + 1.5) against "baa" (0 + 0.5), step 3 "bbb" against "bba": "bbb".
    Forward tokens: the steps' passes over 1 + 2 + 3 tokens; with L = 2 the rollouts' first passes
    over the 2 candidate sequences (2·2 at step 1, 2·3 at step 2) and one cached token per row at
    step 1's second rollout token (2): 12."""
    guided = RewardGuided(SELF_FOLLOWING, Letters(), CountB(), k=2, weight=0.5, lookahead=lookahead)
    (answer,), = guided.generate_ids([(7,)], 1, SamplingParams(temperature=0, max_new_tokens=3))
    assert answer.text == want and not answer.finished
    report = guided.last_report
    assert (report.forward_tokens, report.rollout_tokens, report.reward_calls) == (forward, rollout, 6)


def test_a_rollout_ends_at_its_stop_token():
    """After a the model ends (EOS 3 > a 2); after b it goes on with b; after EOS it would say b (5).
    Weight 0.4, b-count reward, top-2, L = 3, 4 new tokens. Step 1: a's rollout stops at EOS ("a",
    score 1 + 0) while b's runs 3 tokens ("bbbb", 0 + 1.6): b. Were a's rollout read past its EOS,
    it would read "abb" (1 + 0.8 = 1.8) and win. Later steps: "bbbb" (2 + 1.6) against "ba", "bba",
    "bbba" (at most 0 + 1.2): "bbbb".
    Rollout tokens: step 1 the first pass 2·2, then one token for both rows twice while b is live
    (2 + 2); step 2 (horizon 2) 2·3 + 2; step 3 (horizon 1) 2·4; step 4 none: 24, plus the steps'
    1 + 2 + 3 + 4."""
    model = Markov({1: [3.0, 2.0, 0.0], 2: [-5.0, 0.0, 2.0], 0: [-5.0, 0.0, 5.0]}, start=[-5.0, 1.0, 0.0])
    guided = RewardGuided(model, Letters(), CountB(), k=2, weight=0.4, lookahead=3)
    (answer,), = guided.generate_ids([(7,)], 1, SamplingParams(temperature=0, max_new_tokens=4))
    assert answer.text == "bbbb" and answer.token_ids == (2, 2, 2, 2)
    assert (guided.last_report.rollout_tokens, guided.last_report.forward_tokens) == (24, 34)


def test_sampled_lookahead_answers_do_not_depend_on_their_batch():
    """Sampled at temperature 1 with lookahead, three prompts asked together give each prompt the
    answers it gets alone (its index passed as ``start``)."""
    guided = RewardGuided(SELF_FOLLOWING, Letters(), CountB(), k=2, weight=0.5, lookahead=2)
    params = SamplingParams(temperature=1.0, max_new_tokens=3, seed=3)
    together = guided.generate_ids([(7,), (8,), (9,)], 4, params)
    alone = [guided.generate_ids([c], 4, params, start=i)[0] for i, c in enumerate([(7,), (8,), (9,)])]
    assert [[s.token_ids for s in row] for row in together] == [[s.token_ids for s in row] for row in alone]
    assert len({s.token_ids for row in together for s in row}) > 1


def test_bad_settings():
    for kwargs, message in (({"scorer": None}, "needs a scorer"), ({"k": 0}, "k must be"),
                            ({"weight": float("nan")}, "weight must be"), ({"lookahead": -1}, "lookahead must be"),
                            ({"lookahead": True}, "lookahead must be")):
        with pytest.raises(UserError, match=message):
            RewardGuided(**{"model": Fixed(), "tokenizer": Letters(), "scorer": CountB(), **kwargs})
