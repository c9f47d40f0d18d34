"""Generation health (eval/health.py): top-k entropy and mass on hand-made logits, distinct-n on
small strings, and the model pass against a plain forward pass of a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.eval.health import distinct_n, distinct_report, health_report, topk_stats, topk_sums, units
from alignlab.models import load_model, load_tokenizer

LN2 = math.log(2)


def test_topk_stats_by_hand():
    """Row 1, p = (1/2, 1/4, 1/8, 1/8), k = 2: the top two hold 3/4; renormalised (2/3, 1/3), whose
    entropy is ln 3 − (2/3) ln 2; the full entropy is (1/2)ln 2 + (1/4)ln 4 + 2·(1/8)ln 8 = 1.75 ln 2.
    Row 2, uniform over 4: the top two hold 1/2, entropy ln 2 over them and ln 4 in all.
    Row 3, one finite logit: all mass on it, both entropies 0 (−inf logits add nothing)."""
    logits = torch.tensor([[math.log(0.5), math.log(0.25), math.log(0.125), math.log(0.125)],
                           [0.3, 0.3, 0.3, 0.3],
                           [1.0, -math.inf, -math.inf, -math.inf]], dtype=torch.float64)
    ent_k, mass, ent = topk_stats(logits, 2)
    assert ent_k.tolist() == pytest.approx([math.log(3) - 2 / 3 * LN2, LN2, 0.0], abs=1e-12)
    assert mass.tolist() == pytest.approx([0.75, 0.5, 1.0], abs=1e-12)
    assert ent.tolist() == pytest.approx([1.75 * LN2, 2 * LN2, 0.0], abs=1e-12)


def test_topk_larger_than_the_vocabulary_is_the_whole_distribution():
    """k = 10 over 4 tokens: mass 1 and the top-k entropy is the full entropy, 1.75 ln 2."""
    logits = torch.tensor([[math.log(0.5), math.log(0.25), math.log(0.125), math.log(0.125)]], dtype=torch.float64)
    ent_k, mass, ent = topk_stats(logits, 10)
    assert float(mass) == pytest.approx(1.0)
    assert float(ent_k) == pytest.approx(1.75 * LN2) and float(ent) == pytest.approx(1.75 * LN2)
    with pytest.raises(ValueError, match="k must be >= 1"):
        topk_stats(logits, 0)


def test_distinct_n_on_small_strings():
    """Answers "a b a" and "a b" in words. Unigrams a, b, a, a, b: 2 distinct of 5. Bigrams (a b),
    (b a) from the first and (a b) from the second (none across answers): 2 of 3. Trigrams: only
    (a b a): 1 of 1. Four-grams: none, so None."""
    answers = [units("a b a", "words"), units("a b", "words")]
    assert distinct_n(answers, 1) == pytest.approx(2 / 5)
    assert distinct_n(answers, 2) == pytest.approx(2 / 3)
    assert distinct_n(answers, 3) == 1.0
    assert distinct_n(answers, 4) is None
    assert units("ab a", "chars") == ["a", "b", " ", "a"]


def test_distinct_per_prompt_is_the_mean_over_prompts():
    """Prompt 1: "x y", "x y" (unigrams 2 of 4 distinct = 1/2; bigrams 1 of 2 = 1/2); prompt 2:
    "x z" (1 and 1). Pooled: unigrams x, y, x, y, x, z: 3 of 6 = 1/2; bigrams (x y) (x y) (x z):
    2 of 3. Per prompt: unigrams (1/2 + 1)/2 = 3/4, bigrams 3/4; trigrams exist nowhere: None."""
    groups = [[["x", "y"], ["x", "y"]], [["x", "z"]]]
    out = distinct_report(groups)
    assert out["distinct"] == {"1": 0.5, "2": pytest.approx(2 / 3), "3": None}
    assert out["distinct_per_prompt"] == {"1": 0.75, "2": 0.75, "3": None}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    torch.manual_seed(0)
    model = load_model(str(tiny_model_dir)).eval()
    other = load_model(str(tiny_model_dir)).eval()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, other, load_tokenizer(str(tiny_model_dir))


PROMPTS = [(5, 6, 7), (8, 9)]
RESPONSES = [(10, 11, 12, 2), (13,)]


def by_hand(model, k: int):
    """The statistics at the generated positions, read off one plain forward pass per sample: a
    prompt of length P and a response of length R predict the response at positions P−1 … P+R−2."""
    sums = {"positions": 0, "topk_entropy": 0.0, "topk_mass": 0.0, "entropy": 0.0}
    logps = []
    with torch.no_grad():
        for prompt, response in zip(PROMPTS, RESPONSES, strict=True):
            ids = torch.tensor([list(prompt) + list(response)])
            logits = model(input_ids=ids).logits[0].double()
            rows = logits[len(prompt) - 1:len(prompt) + len(response) - 1]
            p = rows.softmax(-1)
            top = p.topk(k, dim=-1).values
            q = top / top.sum(-1, keepdim=True)
            sums["positions"] += len(response)
            sums["topk_mass"] += float(top.sum())
            sums["topk_entropy"] += float(-(q * q.log()).sum())
            sums["entropy"] += float(-(p * p.log()).sum())
            logps.append(float(rows.log_softmax(-1).gather(-1, torch.tensor(response)[:, None]).sum()))
    return sums, logps


def test_topk_sums_match_a_plain_forward_pass(tiny):
    model, _, tok = tiny
    want, _ = by_hand(model, 5)
    got = topk_sums(model, PROMPTS, RESPONSES, tok.pad_token_id, k=5, batch_size=1)
    assert got["positions"] == want["positions"] == 5
    for key in ("topk_entropy", "topk_mass", "entropy"):
        assert got[key] == pytest.approx(want[key], rel=1e-5), key


def test_health_report_means_and_kl(tiny):
    """The report's top-k numbers are the sums over the 5 generated positions divided by 5, and
    its KL the mean over the 2 samples of log π(y|x) − log π_ref(y|x) from plain forward passes;
    against itself the KL is exactly 0."""
    model, other, tok = tiny
    want, lp = by_hand(model, 3)
    _, lr = by_hand(other, 3)
    groups = [[["a"]], [["b", "c"]]]
    out = health_report(groups, [1.0, 2.0], model, tok.pad_token_id, PROMPTS, RESPONSES, other, k=3)
    assert out["positions"] == 5 and out["top_k"] == 3 and out["mean_length"] == 1.5
    assert out["topk_mass"] == pytest.approx(want["topk_mass"] / 5, rel=1e-5)
    assert out["topk_entropy"] == pytest.approx(want["topk_entropy"] / 5, rel=1e-5)
    terms = [a - b for a, b in zip(lp, lr, strict=True)]
    assert out["kl"] == pytest.approx(sum(terms) / 2, abs=1e-4)
    assert out["kl_stderr"] == pytest.approx(abs(terms[0] - terms[1]) / 2, abs=1e-4)  # sd/√2 of two values
    same = health_report(groups, [1.0, 2.0], model, tok.pad_token_id, PROMPTS, RESPONSES, model, k=3)
    assert same["kl"] == 0.0
    assert "topk_mass" not in health_report(groups, [1.0, 2.0])  # without a model: distinct-n and length only
