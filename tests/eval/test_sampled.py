"""SampledEvaluation on a user's own prompts with scorers that are not a task's gold reward: the
numbers against ones computed here from the same seeded samples."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from alignlab.eval.sampled import REFERENCE_SEED_OFFSET, SampledEvaluation
from alignlab.generation import SamplingParams, make_generator
from alignlab.models import load_model, load_tokenizer
from alignlab.rewards import FunctionReward, LengthPenalty, load_scorer
from alignlab.rewards.base import Scorer

PROMPTS = ["Tell me about lamps.", "hi", "What is 2+2?", "Say something short."]


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    """The tiny model as the reference and a perturbed copy of it as the policy."""
    ref = load_model(str(tiny_model_dir)).eval()
    policy = copy.deepcopy(ref)
    torch.manual_seed(0)
    with torch.no_grad():
        policy.lm_head.weight.add_(0.3 * torch.randn_like(policy.lm_head.weight))
    return policy, ref, load_tokenizer(str(tiny_model_dir))


def seq_logp_by_hand(model, prompt_ids, token_ids) -> float:
    ids = torch.tensor([list(prompt_ids) + list(token_ids)])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    n = len(prompt_ids)
    return sum(float(logp[n - 1 + i, t]) for i, t in enumerate(token_ids))


def draw(model, tok, seed, greedy=False, batch_size=128):
    params = SamplingParams(max_new_tokens=6, temperature=0.0 if greedy else 1.0, seed=seed)
    return [row[0] for row in make_generator(model, tok, batch_size=batch_size).generate(PROMPTS, 1, params)]


def test_length_scorer_on_own_prompts(models):
    """Score = −(characters of the answer): each metric recomputed by hand from the samples."""
    policy, ref, tok = models
    ev = SampledEvaluation(PROMPTS, load_scorer("length:coef=1,unit=chars"), tok, max_new_tokens=6, prefix="len",
                           seed=3)
    got = ev(policy, ref)
    sampled, greedy = draw(policy, tok, 3), draw(policy, tok, 3, greedy=True)
    reference = draw(ref, tok, 3 + REFERENCE_SEED_OFFSET)
    assert set(got) == {"len/sampled", "len/greedy", "len/win_rate", "len/kl", "len/length"}
    assert got["len/sampled"] == pytest.approx(-sum(len(s.text) for s in sampled) / 4, abs=1e-12)
    assert got["len/greedy"] == pytest.approx(-sum(len(s.text) for s in greedy) / 4, abs=1e-12)
    wins = [1.0 if len(a.text) < len(b.text) else 0.5 if len(a.text) == len(b.text) else 0.0
            for a, b in zip(sampled, reference, strict=True)]
    assert got["len/win_rate"] == pytest.approx(sum(wins) / 4, abs=1e-12)
    kl = sum(seq_logp_by_hand(policy, s.prompt_ids, s.token_ids) - seq_logp_by_hand(ref, s.prompt_ids, s.token_ids)
             for s in sampled) / 4
    assert got["len/kl"] == pytest.approx(kl, abs=1e-4) and abs(kl) > 1e-3
    assert got["len/length"] == pytest.approx(sum(len(s.token_ids) - s.finished for s in sampled) / 4, abs=1e-12)


def test_function_scorer_and_a_generator_function(models):
    """A ``fn``-style scorer (vowel count) with samples drawn through a given ``generators`` function,
    which is called once per sampling pass with the module to sample from."""
    policy, ref, tok = models
    calls = []

    def generators(module, label):
        calls.append(module)
        return make_generator(module, tok, batch_size=2)

    vowels = FunctionReward(lambda p, r: sum(c in "aeiou" for c in r), name="vowels")
    ev = SampledEvaluation(PROMPTS, vowels, tok, max_new_tokens=6, seed=8, generators=generators)
    got = ev(policy, ref)
    assert calls == [ref, policy, policy]  # reference, sampled, greedy
    sampled = draw(policy, tok, 8, batch_size=2)  # a sample depends on the prompts that share its batch
    assert got["reward/sampled"] == pytest.approx(sum(sum(c in "aeiou" for c in s.text) for s in sampled) / 4,
                                                  abs=1e-12)
    ev(policy, ref)
    assert calls == [ref, policy, policy, policy, policy]  # the reference's samples are drawn once


class Pairwise(Scorer):
    """A pairwise scorer: P(first ≻ second) is 0.9 when first is shorter, 0.3 otherwise."""

    name = "pairwise"

    def score(self, prompts, responses):
        return [-float(len(r)) for r in responses]

    def compare(self, prompts, first, second):
        return [0.9 if len(a) < len(b) else 0.3 for a, b in zip(first, second, strict=True)]


def test_pairwise_scorer_win_rate_is_the_mean_preference(models):
    policy, ref, tok = models
    got = SampledEvaluation(PROMPTS, Pairwise(), tok, max_new_tokens=6, seed=3)(policy, ref)
    sampled, reference = draw(policy, tok, 3), draw(ref, tok, 3 + REFERENCE_SEED_OFFSET)
    expected = sum(0.9 if len(a.text) < len(b.text) else 0.3 for a, b in zip(sampled, reference, strict=True)) / 4
    assert got["reward/win_rate"] == pytest.approx(expected, abs=1e-12)
    assert not math.isclose(expected, 0.5)


def test_shards_split_the_prompts(models):
    policy, ref, tok = models
    scorer = LengthPenalty(coef=1.0, unit="chars")
    parts = [SampledEvaluation(PROMPTS, scorer, tok, max_new_tokens=6, rank=r, world_size=2) for r in range(2)]
    assert parts[0].prompts == PROMPTS[:2] and parts[1].prompts == PROMPTS[2:]
    whole = SampledEvaluation(PROMPTS, scorer, tok, max_new_tokens=6).sums(policy, ref)
    halves = [p.sums(policy, ref) for p in parts]
    assert halves[0]["_count"] + halves[1]["_count"] == whole["_count"] == 4
    # a prompt's samples depend on its index in the whole set, not on the shard: every total adds up
    for key in whole:
        assert halves[0][key] + halves[1][key] == pytest.approx(whole[key], abs=1e-6), key
    three = [SampledEvaluation(PROMPTS, scorer, tok, max_new_tokens=6, rank=r, world_size=3) for r in range(3)]
    assert [p.prompts for p in three] == [PROMPTS[:2], PROMPTS[2:3], PROMPTS[3:]]


@pytest.mark.parametrize(("prompts", "rank", "world", "backend", "words"), [
    ([], 0, 1, "hf", "no prompts to answer"),
    (PROMPTS, 0, 0, "hf", "rank must be in [0, world_size)"),
    (PROMPTS, 2, 2, "hf", "got rank 2 of 2"),
    (PROMPTS, 0, 1, "vlm", "generation backend 'vlm' is unknown"),
])
def test_settings_that_cannot_work_are_refused_at_construction(models, prompts, rank, world, backend, words):
    from alignlab.errors import UserError

    _, _, tok = models
    with pytest.raises(UserError) as e:
        SampledEvaluation(prompts, LengthPenalty(), tok, max_new_tokens=4, rank=rank, world_size=world,
                          backend=backend)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_decoding_method_on_top_is_measured_beside_plain_sampling(models):
    """``decoding``: best-of-3 by answer length (−characters) over the policy. Its answer to each
    prompt is, by best-of-n's definition, the shortest of the 3 candidates the policy's generator
    draws for it with the evaluation's seed (the first drawn among equals), so every metric is
    recomputed here from 3 samples per prompt drawn directly; forward tokens are the prompt and
    answer tokens of the 3 candidates, per prompt. Plain sampling's metrics do not change."""
    from alignlab.decoding import BestOfN

    policy, ref, tok = models
    scorer = load_scorer("length:coef=1,unit=chars")
    plain = SampledEvaluation(PROMPTS, scorer, tok, max_new_tokens=6, prefix="len", seed=3)(policy, ref)
    ev = SampledEvaluation(PROMPTS, scorer, tok, max_new_tokens=6, prefix="len", seed=3,
                           decoding=lambda gen, module: BestOfN(gen, scorer, 3), decoding_name="bon")
    got = ev(policy, ref)
    assert {k: got[k] for k in plain} == plain
    assert set(got) - set(plain) == {"len@bon/sampled", "len@bon/win_rate", "len@bon/length", "len@bon/forward_tokens"}
    params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=3)
    candidates = make_generator(policy, tok).generate(PROMPTS, 3, params)
    picked = [min(row, key=lambda s: len(s.text)) for row in candidates]
    reference = draw(ref, tok, 3 + REFERENCE_SEED_OFFSET)
    assert got["len@bon/sampled"] == pytest.approx(-sum(len(s.text) for s in picked) / 4, abs=1e-12)
    wins = [1.0 if len(a.text) < len(b.text) else 0.5 if len(a.text) == len(b.text) else 0.0
            for a, b in zip(picked, reference, strict=True)]
    assert got["len@bon/win_rate"] == pytest.approx(sum(wins) / 4, abs=1e-12)
    assert got["len@bon/length"] == pytest.approx(sum(len(s.token_ids) - s.finished for s in picked) / 4, abs=1e-12)
    spent = sum(len(s.prompt_ids) + len(s.token_ids) for row in candidates for s in row)
    assert got["len@bon/forward_tokens"] == pytest.approx(spent / 4, abs=1e-12)
