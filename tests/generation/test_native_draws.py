"""The native backend's draws follow the model's distribution: chi-square tests of the first two
tokens of many samples against probabilities from a plain forward pass (no cache), at temperature
1, at a lower temperature with top-k, and with top-p. Each expected distribution is built here
from the forward pass's logits by the textbook rule, not by the backend's code."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare
from transformers import LlamaConfig, LlamaForCausalLM

from alignlab.generation import SamplingParams
from alignlab.generation.native import NativeGenerator

VOCAB, EOS = 12, 2
PROMPT = (1, 5, 7, 4)
DRAWS = 6000


class Tok:
    eos_token_id, pad_token_id, bos_token_id = EOS, 0, 1

    def decode(self, ids, skip_special_tokens=True):
        return ""


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(4)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    m = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # logits of spread ~2.5: every token likely enough to be counted
        m.lm_head.weight.mul_(0.45 / m.lm_head.weight.std())
    return m


def expected(model, context, temperature=1.0, top_k=0, top_p=1.0) -> list[float]:
    """Next-token probabilities after ``context``: softmax(logits / T), then keep the k largest,
    then the largest ones until their mass reaches top_p, renormalised."""
    with torch.no_grad():
        logits = model(torch.tensor([list(context)])).logits[0, -1].double()
    p = torch.softmax(logits / temperature, -1).tolist()
    order = sorted(range(VOCAB), key=lambda t: -p[t])
    kept = order[:top_k] if top_k else order
    if top_p < 1:
        mass, cut = 0.0, []
        for t in kept:
            if mass >= top_p:
                break
            cut.append(t)
            mass += p[t]
        kept = cut
    total = sum(p[t] for t in kept)
    return [p[t] / total if t in kept else 0.0 for t in range(VOCAB)]


def p_value(counts: list[int], probs: list[float]) -> float:
    """Chi-square goodness of fit, tokens expected fewer than 5 times pooled into one cell."""
    n = sum(counts)
    obs, exp, pool_o, pool_e = [], [], 0, 0.0
    for c, p in zip(counts, probs, strict=True):
        if p == 0:
            assert c == 0, "a token outside the sampling distribution was drawn"
        elif n * p < 5:
            pool_o, pool_e = pool_o + c, pool_e + n * p
        else:
            obs.append(c)
            exp.append(n * p)
    if pool_e:
        obs.append(pool_o)
        exp.append(pool_e)
    return float(chisquare(obs, exp).pvalue)


@pytest.mark.parametrize("options", [{}, {"temperature": 0.7, "top_k": 5}, {"top_p": 0.8}],
                         ids=["t1", "t0.7-top5", "top0.8"])
def test_first_two_tokens_follow_the_model(model, options):
    params = SamplingParams(max_new_tokens=2, seed=9, **options)
    (samples,) = NativeGenerator(model, Tok(), batch_size=512).generate_ids([PROMPT], DRAWS, params)
    firsts = [s.token_ids[0] for s in samples]
    counts = [firsts.count(t) for t in range(VOCAB)]
    assert p_value(counts, expected(model, PROMPT, **options)) > 1e-3
    # the second token, given the most frequent first one (not the end of the sequence)
    first = max((t for t in range(VOCAB) if t != EOS), key=counts.__getitem__)
    seconds = [s.token_ids[1] for s in samples if s.token_ids[0] == first]
    assert len(seconds) > 500
    counts2 = [seconds.count(t) for t in range(VOCAB)]
    assert p_value(counts2, expected(model, PROMPT + (first,), **options)) > 1e-3
    if options:  # the test can tell distributions apart: the unmodified one is rejected
        assert p_value([c if p > 0 else 0 for c, p in zip(counts, expected(model, PROMPT), strict=True)],
                       expected(model, PROMPT)) < 1e-6


def test_inverse_cdf_finds_the_token_whose_interval_holds_the_target():
    """Weights over 600 tokens (two blocks of 256 and a tail of 88) with zeros sprinkled in: for
    targets at the middle of each positive token's interval the two-level search returns that
    token; a target of 0 gives the first positive token, never one of weight 0."""
    from alignlab.generation.draw import inverse_cdf

    g = torch.Generator().manual_seed(0)
    weights = torch.rand(3, 600, generator=g, dtype=torch.float64)
    weights[:, ::7] = 0
    weights[1, :300] = 0  # the first block and a half empty
    weights[2, 500:] = 0  # the tail empty
    cdf = torch.cumsum(weights, 1)
    for row in range(3):
        positive = (weights[row] > 0).nonzero().flatten()
        total = float(cdf[row, -1])
        for t in positive[:: 5].tolist() + [int(positive[0]), int(positive[-1])]:
            middle = (float(cdf[row, t]) - float(weights[row, t]) / 2) / total
            u = torch.zeros(3, dtype=torch.float64)
            u[row] = middle
            tokens, totals = inverse_cdf(weights, u)
            assert int(tokens[row]) == t
            assert float(totals[row]) == pytest.approx(total, rel=1e-12)
        assert int(inverse_cdf(weights, torch.zeros(3, dtype=torch.float64))[0][row]) == int(positive[0])
