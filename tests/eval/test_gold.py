"""GoldEvaluator: gold reward, win rate, KL and length against numbers computed independently."""

from __future__ import annotations

import copy

import pytest
import torch

from alignlab.eval.gold import REFERENCE_SEED_OFFSET, GoldEvaluator
from alignlab.generation import HFGenerator, SamplingParams, make_generator
from alignlab.models import load_model, load_tokenizer
from alignlab.tasks.base import Task


class CountTask(Task):
    """Gold reward = number of 'a' characters in the response (a stub with an obvious truth)."""

    name = "count"
    description = "count the letter a"
    max_new_tokens = 5

    def _make_eval_prompts(self):
        return ["p1", "second", "x", "fourth prompt"]

    def train_prompts(self, n, seed):
        return ["t"] * n

    def demonstrations(self, n, seed):
        return [("t", "a")] * n

    def corpus(self, n, seed):
        return ["a"] * n

    def gold(self, prompt, response):
        return float(response.count("a"))

    def proxy(self, prompt, response):
        return self.gold(prompt, response)


@pytest.fixture(scope="module")
def model_tok(tiny_model_dir):
    return load_model(str(tiny_model_dir)).eval(), load_tokenizer(str(tiny_model_dir))


def seq_logp_by_hand(model, prompt_ids, token_ids) -> float:
    """log π(y|x) as a plain sum over positions of log_softmax, one sequence at a time."""
    ids = torch.tensor([list(prompt_ids) + list(token_ids)])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    n = len(prompt_ids)
    return sum(float(logp[n - 1 + i, t]) for i, t in enumerate(token_ids))


def test_policy_equal_to_reference(model_tok):
    """Policy = reference: KL is exactly 0 (the same log-probs are subtracted), and the gold and
    length numbers equal those recomputed from the same seeded samples."""
    model, tok = model_tok
    task = CountTask()
    ev = GoldEvaluator(task, tok, seed=5)
    got = ev(model, model)
    gen = HFGenerator(model, tok)
    prompts = task.eval_prompts()
    sampled = [r[0] for r in gen.generate(prompts, 1, SamplingParams(max_new_tokens=5, seed=5))]
    greedy = [r[0] for r in gen.generate(prompts, 1, SamplingParams(max_new_tokens=5, temperature=0.0))]
    ref = [r[0] for r in gen.generate(prompts, 1, SamplingParams(max_new_tokens=5, seed=5 + REFERENCE_SEED_OFFSET))]
    assert got["gold/kl"] == 0.0
    assert got["gold/sampled"] == pytest.approx(sum(s.text.count("a") for s in sampled) / 4, abs=1e-12)
    assert got["gold/greedy"] == pytest.approx(sum(s.text.count("a") for s in greedy) / 4, abs=1e-12)
    wins = [1.0 if a.text.count("a") > b.text.count("a") else 0.5 if a.text.count("a") == b.text.count("a") else 0.0
            for a, b in zip(sampled, ref, strict=True)]
    assert got["gold/win_rate"] == pytest.approx(sum(wins) / 4, abs=1e-12)
    lengths = [len(s.token_ids) - (1 if s.finished else 0) for s in sampled]
    assert got["gold/length"] == pytest.approx(sum(lengths) / 4, abs=1e-12)


def test_kl_is_the_mean_log_ratio_on_policy_samples(model_tok):
    """With a perturbed policy, KL = mean over the policy's samples of log π − log π_ref, each
    computed here one unpadded sequence at a time."""
    model, tok = model_tok
    policy = copy.deepcopy(model)
    torch.manual_seed(0)
    with torch.no_grad():
        policy.lm_head.weight.add_(0.05 * torch.randn_like(policy.lm_head.weight))
    task = CountTask()
    got = GoldEvaluator(task, tok, seed=1)(policy, model)
    samples = [r[0] for r in make_generator(policy, tok).generate(task.eval_prompts(), 1,
                                                                  SamplingParams(max_new_tokens=5, seed=1))]
    expected = sum(seq_logp_by_hand(policy, s.prompt_ids, s.token_ids) - seq_logp_by_hand(model, s.prompt_ids, s.token_ids)
                   for s in samples) / len(samples)
    assert got["gold/kl"] == pytest.approx(expected, abs=1e-4)
    assert got["gold/kl"] != 0.0


def test_shards_sum_to_the_whole(model_tok):
    """Two shards cover every prompt once: their counts add up to the whole, and so does their
    greedy gold reward (which, unlike sampled answers, does not depend on the shard's seed)."""
    model, tok = model_tok
    task = CountTask()
    whole = GoldEvaluator(task, tok, seed=2).sums(model, model)
    parts = [GoldEvaluator(task, tok, seed=2, rank=r, world_size=2).sums(model, model) for r in range(2)]
    assert parts[0]["_count"] + parts[1]["_count"] == whole["_count"] == 4
    assert parts[0]["gold/greedy"] + parts[1]["gold/greedy"] == pytest.approx(whole["gold/greedy"], abs=1e-12)


def test_num_prompts_limits_the_set(model_tok):
    model, tok = model_tok
    ev = GoldEvaluator(CountTask(), tok, num_prompts=2)
    assert ev.prompts == ["p1", "second"]
    assert ev.sums(model, model)["_count"] == 2
