"""make_generator: the one way to build a generator; unknown backends and options; weight sync."""

from __future__ import annotations

import copy

import pytest
import torch

from alignlab.errors import UserError
from alignlab.generation import HFGenerator, SamplingParams, make_generator
from alignlab.generation.native import NativeGenerator
from alignlab.models import load_model, load_tokenizer


@pytest.fixture(scope="module")
def model_tok(tiny_model_dir):
    return load_model(str(tiny_model_dir)).eval(), load_tokenizer(str(tiny_model_dir))


def test_native_backend_is_the_default_and_each_backend_takes_its_options(model_tok):
    model, tok = model_tok
    gen = make_generator(model, tok, batch_size=3, progress="label", prefill_tokens=99)
    assert isinstance(gen, NativeGenerator)
    assert (gen.model, gen.batch_size, gen.progress, gen.prefill_tokens) == (model, 3, "label", 99)
    gen = make_generator(model, tok, "hf", batch_size=3, progress="label")
    assert isinstance(gen, HFGenerator)
    assert (gen.model, gen.batch_size, gen.progress) == (model, 3, "label")
    with pytest.raises(UserError, match="unknown option 'prefill_tokens' \\(options: batch_size, progress\\)"):
        make_generator(model, tok, "hf", prefill_tokens=9)


def test_unknown_backend_is_a_one_line_user_error_naming_the_known_ones(model_tok):
    model, tok = model_tok
    with pytest.raises(UserError) as err:
        make_generator(model, tok, "vlm")
    assert str(err.value) == "generation backend 'vlm' is unknown; known: native, hf, vllm, ray"


def test_unknown_option_is_a_user_error(model_tok):
    model, tok = model_tok
    with pytest.raises(UserError, match="unknown option 'temperature' \\(options: batch_size, progress, prefill_tokens\\)"):
        make_generator(model, tok, temperature=0.5)


def test_update_weights_with_the_same_module_changes_nothing(model_tok):
    """The default backend runs on the policy's own parameters: an in-place change of a weight shows in
    the next samples with no call at all, and update_weights(policy) keeps the same module."""
    model, tok = model_tok
    policy = copy.deepcopy(model)
    gen = make_generator(policy, tok)
    params = SamplingParams(max_new_tokens=4, temperature=0.0)
    with torch.no_grad():
        policy.lm_head.weight.zero_()
    (row,) = gen.generate(["ab"], 1, params)
    assert set(row[0].token_ids) == {0}  # all logits 0: argmax is the first token id
    gen.update_weights(policy)
    assert gen.model is policy


def test_update_weights_with_another_module_samples_from_it(model_tok):
    model, tok = model_tok
    other = copy.deepcopy(model)
    torch.manual_seed(0)
    with torch.no_grad():
        other.lm_head.weight.add_(0.5 * torch.randn_like(other.lm_head.weight))
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    gen = make_generator(model, tok)
    before = gen.generate(["xy", "1+2="], 1, params)
    gen.update_weights(other)
    assert gen.model is other
    assert gen.generate(["xy", "1+2="], 1, params) == make_generator(other, tok).generate(["xy", "1+2="], 1, params)
    assert gen.generate(["xy", "1+2="], 1, params) != before


def test_a_module_that_cannot_generate_is_a_one_line_user_error(model_tok):
    """A DDP wrapper (or any module without ``generate``) is refused with the fix named."""
    _, tok = model_tok
    with pytest.raises(UserError, match=r"^make_generator: Linear cannot generate; give the causal LM itself"):
        make_generator(torch.nn.Linear(2, 2), tok)
