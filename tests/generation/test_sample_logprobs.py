"""Sample.logprobs: the log-prob of each generated token under the model's raw distribution
(temperature 1, no processing), equal to a teacher-forced pass; asking for it changes no token."""

from __future__ import annotations

import pytest
import torch

from alignlab.generation import SamplingParams, make_generator
from alignlab.logprobs import completion_logps
from alignlab.models import load_model, load_tokenizer

PROMPTS = ["1+1=", "a much longer prompt than the first one", "xy", "seven"]  # left padding in one batch


@pytest.fixture(scope="module")
def model_tok(tiny_model_dir):
    return load_model(str(tiny_model_dir)).eval(), load_tokenizer(str(tiny_model_dir))


def token_logps_by_hand(model, prompt_ids, token_ids) -> list[float]:
    """log_softmax of one unpadded forward pass over prompt + response, in float64, at each
    response token: position n-1+i predicts token i."""
    ids = torch.tensor([list(prompt_ids) + list(token_ids)])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    n = len(prompt_ids)
    return [float(logp[n - 1 + i, t]) for i, t in enumerate(token_ids)]


@pytest.mark.parametrize("backend", ["native", "hf"])
@pytest.mark.parametrize("params", [
    SamplingParams(max_new_tokens=8, temperature=0.0),
    SamplingParams(max_new_tokens=8, temperature=1.0, seed=3),
    # Drawn at temperature 0.5 with a top-k cut, yet scored at temperature 1 with no cut.
    SamplingParams(max_new_tokens=8, temperature=0.5, top_k=20, top_p=0.9, seed=4),
], ids=["greedy", "sampled", "tempered"])
def test_sample_logprobs_match_a_teacher_forced_pass(model_tok, params, backend):
    model, tok = model_tok
    rows = make_generator(model, tok, backend, batch_size=8).generate(PROMPTS, 2, params)
    samples = [s for row in rows for s in row]
    assert {len(s.prompt_ids) for s in samples} == {len(tok(p)["input_ids"]) for p in PROMPTS}  # 4 lengths
    for s in samples:
        assert len(s.logprobs) == len(s.token_ids) >= 1
        assert s.logprobs == pytest.approx(token_logps_by_hand(model, s.prompt_ids, s.token_ids), abs=1e-5)
        assert all(lp < 0 for lp in s.logprobs)
    # The same sums through the library's own padded teacher-forced path.
    sums = completion_logps(model, [s.prompt_ids for s in samples], [s.token_ids for s in samples],
                            tok.pad_token_id, batch_size=8)
    assert [sum(s.logprobs) for s in samples] == pytest.approx(sums.tolist(), abs=1e-5)


def test_asking_for_logprobs_draws_the_same_tokens(model_tok):
    """The "hf" backend's tokens equal those of a plain ``model.generate`` call without logits, on the same seed,
    batch and settings: the log-probs cost no random draw."""
    from transformers import GenerationConfig

    model, tok = model_tok
    params = SamplingParams(max_new_tokens=6, seed=11)
    rows = make_generator(model, tok, "hf", batch_size=8).generate(PROMPTS, 2, params)
    contexts = [tuple(tok(p)["input_ids"]) for p in PROMPTS for _ in range(2)]
    width = max(map(len, contexts))
    pad = tok.pad_token_id
    ids = torch.tensor([[pad] * (width - len(c)) + list(c) for c in contexts])
    attn = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts])
    config = GenerationConfig(max_new_tokens=6, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                              eos_token_id=tok.eos_token_id, pad_token_id=pad)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(11)
        plain = model.generate(input_ids=ids, attention_mask=attn, generation_config=config)[:, width:].tolist()
    for s, row in zip([s for r in rows for s in r], plain, strict=True):
        assert list(s.token_ids) == row[:len(s.token_ids)]
        assert s.finished or len(s.token_ids) == 6
