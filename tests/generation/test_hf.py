"""The Hugging Face generation backend: padding, stopping, seeding and the sampling distribution."""

from __future__ import annotations

import pytest
import torch

from alignlab.data.records import Message
from alignlab.errors import UserError
from alignlab.generation import HFGenerator, SamplingParams
from alignlab.models import load_model, load_tokenizer


@pytest.fixture(scope="module")
def model_tok(tiny_model_dir):
    return load_model(str(tiny_model_dir)).eval(), load_tokenizer(str(tiny_model_dir))


def greedy_by_hand(model, ids: list[int], steps: int, eos: int) -> list[int]:
    """Argmax decoding one token at a time, no cache and no padding: the reference."""
    out: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1]
            out.append(int(logits.argmax()))
            if out[-1] == eos:
                break
    return out


def test_greedy_matches_step_by_step_argmax_with_left_padding(model_tok):
    model, tok = model_tok
    gen = HFGenerator(model, tok, batch_size=8)
    prompts = ["1+1=", "a much longer prompt than the first one", "xy"]  # different lengths: left padding
    samples = gen.generate(prompts, 1, SamplingParams(max_new_tokens=7, temperature=0.0))
    for prompt, (sample,) in zip(prompts, samples, strict=True):
        ids = tok(prompt, add_special_tokens=True)["input_ids"]
        assert sample.prompt_ids == tuple(ids)
        assert list(sample.token_ids) == greedy_by_hand(model, ids, 7, tok.eos_token_id)
        assert sample.finished == (sample.token_ids[-1] == tok.eos_token_id)
        body = sample.token_ids[:-1] if sample.finished else sample.token_ids
        assert sample.text == tok.decode(list(body), skip_special_tokens=True)


def test_conversation_prompt_opens_the_assistant_turn(model_tok):
    model, tok = model_tok
    gen = HFGenerator(model, tok)
    ids = gen.prompt_ids((Message("user", "hi"),))
    assert tok.decode(list(ids)) == "<|user|>hi<|end|><|assistant|>"


def test_same_seed_same_samples_and_global_rng_untouched(model_tok):
    model, tok = model_tok
    gen = HFGenerator(model, tok, batch_size=4)
    params = SamplingParams(max_new_tokens=5, seed=3)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = gen.generate(["ab", "cd"], 3, params)
    assert torch.equal(torch.get_rng_state(), before)
    b = gen.generate(["ab", "cd"], 3, params)
    c = gen.generate(["ab", "cd"], 3, SamplingParams(max_new_tokens=5, seed=4))
    assert a == b
    assert a != c
    assert len(a) == 2 and all(len(row) == 3 for row in a)


def test_a_later_piece_of_a_prompt_set_draws_from_a_stream_of_its_own(model_tok):
    """Two processes' shares of a round (or two chunks) call with the same seed and ``start`` 0 and
    2: the second piece must not reuse the first's random numbers. Same prompts at start 2 give
    other samples than at start 0, the same again at start 2, and start 0 is the seed alone (the
    samples of a call without ``start``). With one stream, each process's k-th sample drew the same
    uniforms, so a round's shares were correlated (two processes gave near-copies)."""
    model, tok = model_tok
    gen = HFGenerator(model, tok, batch_size=8)
    params = SamplingParams(max_new_tokens=6, seed=5)
    first = gen.generate(["ab", "cd"], 4, params, start=0)
    assert first == gen.generate(["ab", "cd"], 4, params)
    later = gen.generate(["ab", "cd"], 4, params, start=2)
    assert later != first
    assert later == gen.generate(["ab", "cd"], 4, params, start=2)


def test_sampling_follows_the_model_distribution_without_a_top_k_cut(model_tok):
    """First-token frequencies over 3000 samples match softmax(logits) at temperature 1.

    The untrained model spreads its probability over all 263 tokens, so a hidden top-k of 50
    (transformers' old default) would show up as at most 50 distinct tokens, and a wrong
    temperature as a wrong frequency of the most likely token (checked within 4 standard errors).
    """
    model, tok = model_tok
    gen = HFGenerator(model, tok, batch_size=1000)
    (row,) = gen.generate(["q"], 3000, SamplingParams(max_new_tokens=1, seed=0))
    first = torch.tensor([s.token_ids[0] for s in row])
    ids = tok("q", add_special_tokens=True)["input_ids"]
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].double(), -1)
    assert len(set(first.tolist())) > 100
    top = int(probs.argmax())
    p = float(probs[top])
    freq = float((first == top).double().mean())
    assert abs(freq - p) < 4 * (p * (1 - p) / 3000) ** 0.5


def test_temperature_zero_gives_identical_copies(model_tok):
    model, tok = model_tok
    (row,) = HFGenerator(model, tok).generate(["zz"], 4, SamplingParams(max_new_tokens=4, temperature=0.0, seed=9))
    assert len({s.token_ids for s in row}) == 1


@pytest.mark.parametrize("kwargs", [{"max_new_tokens": 0}, {"temperature": -1.0}, {"temperature": float("nan")},
                                    {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1}])
def test_bad_sampling_params_are_user_errors(kwargs):
    with pytest.raises(UserError):
        SamplingParams(**kwargs)


def test_bad_n_and_batch_size(model_tok):
    model, tok = model_tok
    with pytest.raises(UserError, match="n must be"):
        HFGenerator(model, tok).generate(["a"], 0, SamplingParams())
    with pytest.raises(UserError, match="batch_size"):
        HFGenerator(model, tok, batch_size=0)


def test_the_checkpoints_own_generation_settings_do_not_leak_in(model_tok):
    """A checkpoint may ship a generation_config with processors (here: suppress the model's most
    likely first token, and a repetition penalty); samples must still follow softmax(logits)."""
    import copy

    model, tok = model_tok
    ids = tok("q", add_special_tokens=True)["input_ids"]
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].double(), -1)
    top = int(probs.argmax())
    p = float(probs[top])
    odd = copy.deepcopy(model)
    odd.generation_config.suppress_tokens = [top]
    odd.generation_config.repetition_penalty = 5.0
    (row,) = HFGenerator(odd, tok, batch_size=1000).generate(["q"], 3000, SamplingParams(max_new_tokens=1, seed=1))
    freq = sum(s.token_ids[0] == top for s in row) / 3000
    assert abs(freq - p) < 4 * (p * (1 - p) / 3000) ** 0.5


def test_seed_out_of_range_is_a_user_error():
    with pytest.raises(UserError, match="seed"):
        SamplingParams(seed=2**64)
