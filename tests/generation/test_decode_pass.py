"""The native backend's written-out decode step (``decode_pass.py``): which models take it, that
it computes the model's own function, and that a pass that does not is never used."""

from __future__ import annotations

import contextlib

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import alignlab.generation.native as native
from alignlab import packed_linear
from alignlab.generation import SamplingParams
from alignlab.generation.decode_pass import DecodePass
from alignlab.generation.hf import HFGenerator
from alignlab.generation.native import NativeGenerator, decode_pass_ok
from tests.generation.test_native import (
    EOS,
    PAD,
    VOCAB,
    Tok,
    _sharpen,
    contexts,
    gpt2,
    llama,
    mistral,
    qwen2,
    teacher_forced,
)


def llama_variant():
    """A Llama with what the plain test model lacks: biases in every projection, a head dimension
    that is not hidden size / heads (12, not 8), 4 query heads over 2 key/value heads, and llama3
    rotary scaling, whose frequencies depend on the position range."""
    torch.manual_seed(4)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=12, attention_bias=True,
                         mlp_bias=True, max_position_embeddings=128, eos_token_id=EOS, pad_token_id=PAD,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 16})
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.3)  # biases start at zero: make them count
    _sharpen(model)
    return model


BUILDS = [llama, llama_variant, qwen2, mistral]
IDS = ["llama", "llama-variant", "qwen2", "mistral"]


def _calls(monkeypatch) -> list[int]:
    """Counts the pass's decode steps (``[0]``) and prefills (``[1]``) from now on."""
    count = [0, 0]
    for i, name in enumerate(("__call__", "prefill")):
        run = getattr(DecodePass, name)

        def counted(self, *args, _run=run, _i=i):
            count[_i] += 1
            return _run(self, *args)

        monkeypatch.setattr(DecodePass, name, counted)
    return count


def _without_pass(monkeypatch, model):
    monkeypatch.setitem(native._FAST, model, False)


@pytest.mark.parametrize("build", BUILDS, ids=IDS)
def test_fp64_samples_equal_those_of_the_models_own_forward_pass(build, monkeypatch):
    """In float64 the pass and the model's forward pass agree to rounding (1e-12 on each sampled
    token's log-prob), so the same seed draws the same tokens: 7 ragged prompts × 3 samples, 5
    slots (sequences end, others are prefilled into their slots, and the slots are compacted).
    Both the prefills (left-padded prompts of several lengths) and the decode steps ran through
    the pass; then neither did."""
    model = build().double()
    assert decode_pass_ok(model)
    params = SamplingParams(max_new_tokens=14, temperature=1.0, top_k=30, seed=3)
    steps = _calls(monkeypatch)
    fast = NativeGenerator(model, Tok(), batch_size=5).generate_ids(contexts(), 3, params)
    assert steps[0] > 14 and steps[1] > 1  # the decode steps and the prefills ran through the pass
    through_pass = list(steps)
    _without_pass(monkeypatch, model)
    slow = NativeGenerator(model, Tok(), batch_size=5).generate_ids(contexts(), 3, params)
    assert steps == through_pass  # and now none did
    for a_row, b_row in zip(fast, slow, strict=True):
        for a, b in zip(a_row, b_row, strict=True):
            assert a.token_ids == b.token_ids and a.finished == b.finished
            assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < 1e-12
            assert max(abs(x - y) for x, y in zip(a.sampling_logprobs, b.sampling_logprobs, strict=True)) < 1e-12


@pytest.mark.parametrize("build", BUILDS, ids=IDS)
def test_fp32_greedy_equals_hf_generate_through_the_pass(build, monkeypatch):
    """In float32 (the default dtype) the pass's greedy tokens are transformers' ``generate``'s."""
    model = build()
    params = SamplingParams(max_new_tokens=12, temperature=0)
    steps = _calls(monkeypatch)
    ours = NativeGenerator(model, Tok(), batch_size=4).generate_ids(contexts(), 2, params)
    assert steps[0] > 0
    theirs = HFGenerator(model, Tok(), batch_size=16).generate_ids(contexts(), 2, params)
    assert [[s.token_ids for s in row] for row in ours] == [[s.token_ids for s in row] for row in theirs]


def test_other_models_and_wrapped_layers_decode_through_their_own_forward_pass(monkeypatch):
    """GPT-2, a Llama with a hook on a layer, a LoRA-wrapped Llama (the wrapper and the model
    under it) and a bfloat16 Llama decode through their own forward pass: only plain float32 and
    float64 Llama-family modules take the pass."""
    assert DecodePass.build(gpt2()) is None
    hooked = llama()
    hooked.model.layers[1].mlp.register_forward_hook(lambda module, args, out: out * 2)
    assert DecodePass.build(hooked) is None
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(llama(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert DecodePass.build(lora) is None and DecodePass.build(lora.get_base_model()) is None
    assert DecodePass.build(llama().bfloat16()) is None
    assert DecodePass.build(llama()) is not None and DecodePass.build(llama().double()) is not None
    # the engine still samples them, through the model's forward pass
    steps = _calls(monkeypatch)
    params = SamplingParams(max_new_tokens=6, temperature=0)
    for model in (gpt2(), hooked):
        NativeGenerator(model, Tok(), batch_size=4).generate_ids(contexts()[:3], 2, params)
    assert steps == [0, 0]


@pytest.mark.parametrize("part", ["__call__", "prefill"], ids=["decode", "prefill"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_a_pass_that_disagrees_with_the_model_is_not_used(dtype, part, monkeypatch):
    """The engine checks the pass against a plain forward pass before first use: a pass whose
    decode step or prefill is off by a little (one logit moved by 0.01) is refused, in float64 as
    in float32 (both agree with a plain forward pass to about 1e-5: a 16-bit model's looser
    tolerance is not theirs), and the samples are the model's own."""
    model = llama().to(dtype)
    right = NativeGenerator(model, Tok(), batch_size=4).generate_ids(contexts(), 2, SamplingParams(
        max_new_tokens=10, temperature=1.0, seed=2))
    run = getattr(DecodePass, part)

    def off(self, *args):
        logits = run(self, *args)
        logits[:, 7] += 0.01
        return logits

    monkeypatch.setattr(DecodePass, part, off)
    other = llama().to(dtype)  # a module the engine has not checked yet
    assert not decode_pass_ok(other)
    again = NativeGenerator(other, Tok(), batch_size=4).generate_ids(contexts(), 2, SamplingParams(
        max_new_tokens=10, temperature=1.0, seed=2))
    assert [[s.token_ids for s in row] for row in again] == [[s.token_ids for s in row] for row in right]


@pytest.mark.parametrize("change", ["hook", "forward", "bfloat16"])
def test_a_model_changed_after_its_check_decodes_through_its_own_forward_pass(change, monkeypatch):
    """The pass is checked once per module. A change to the module after that check which the
    pass does not compute (a forward hook that doubles a layer's MLP output, a ``forward`` set on
    that MLP that does the same, a cast to bfloat16) sends the decode steps back to the model's
    own forward pass, without an error: the samples are those drawn with the pass switched off."""
    model = llama()
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=2)
    NativeGenerator(model, Tok(), batch_size=4).generate_ids(contexts(), 2, params)
    assert decode_pass_ok(model)
    mlp = model.model.layers[1].mlp
    if change == "hook":
        mlp.register_forward_hook(lambda module, args, out: out * 2)
    elif change == "forward":
        inner = mlp.forward
        mlp.forward = lambda x: inner(x) * 2
    else:
        model.bfloat16()
    steps = _calls(monkeypatch)
    got = NativeGenerator(model, Tok(), batch_size=4).generate_ids(contexts(), 2, params)
    assert steps == [0, 0]
    _without_pass(monkeypatch, model)
    want = NativeGenerator(model, Tok(), batch_size=4).generate_ids(contexts(), 2, params)
    for a_row, b_row in zip(got, want, strict=True):
        for a, b in zip(a_row, b_row, strict=True):
            assert a.token_ids == b.token_ids and a.logprobs == b.logprobs


def test_a_module_with_a_forward_of_its_own_is_refused():
    """A ``forward`` set on a module the pass computes by hand (as accelerate's hooks set one) is
    code the pass would skip: such a model is not built, whatever the check would say."""
    model = llama()
    mlp = model.model.layers[0].mlp
    mlp.forward = mlp.forward  # the same function, as an instance attribute
    assert DecodePass.build(model) is None
    del mlp.forward
    assert DecodePass.build(model) is not None


def wide_llama():
    """A Llama whose every projection has at least 64K weights (q, k, v, o 256 × 256; gate, up,
    down 512 × 256; the output layer 512 × 256), so that in float32 each product of the pass and
    the output layer runs from oneDNN's packed weights (``packed_linear.py``)."""
    torch.manual_seed(5)
    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                         eos_token_id=EOS, pad_token_id=PAD, bos_token_id=1)
    model = LlamaForCausalLM(config).eval()
    _sharpen(model)
    return model


def wide_contexts() -> list[tuple[int, ...]]:
    """``contexts()``'s ragged prompts with token ids spread over ``wide_llama``'s 512 ids."""
    return [tuple(3 + (7 * k + 5 * i) % 509 for i in range(len(c))) for k, c in enumerate(contexts())]


@pytest.mark.skipif(not packed_linear._onednn(), reason="torch built without oneDNN")
def test_fp32_packed_products_give_the_models_log_probs(monkeypatch):
    """With every product packed, each sampled token's log-prob is that of a float64 forward pass
    of the same model over the same tokens to 1e-4: the model's own float32 forward pass is 2.6e-5
    off, and output-layer logits scaled by 1 + 3e-5 (far below bfloat16's rounding) are caught;
    7 ragged prompts × 3 samples in 5 slots (compaction included)."""
    model = wide_llama()
    built = DecodePass.build(model)
    assert all(p.packed is not None for layer in built.layers
               for p in (layer.q, layer.k, layer.v, layer.o, layer.gate, layer.up, layer.down))
    assert packed_linear.Linear(model.lm_head.weight.detach()).packed is not None
    assert decode_pass_ok(model)
    steps = _calls(monkeypatch)
    wide = wide_contexts()
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=1)
    out = NativeGenerator(model, Tok(), batch_size=5).generate_ids(wide, 3, params)
    assert steps[0] >= 9
    exact = model.double()
    worst = 0.0
    for context, row in zip(wide, out, strict=True):
        for s in row:
            want = teacher_forced(exact, context, s.token_ids).double()
            picked = want.gather(1, torch.tensor(s.token_ids).view(-1, 1)).flatten()
            worst = max(worst, (torch.tensor(s.logprobs, dtype=torch.float64) - picked).abs().max().item())
    assert worst < 1e-4


@pytest.mark.skipif(not packed_linear._onednn(), reason="torch built without oneDNN")
def test_under_cpu_autocast_the_packed_model_samples_as_its_own_forward_pass(monkeypatch):
    """Training with ``dtype: bf16`` runs the task evaluation's sampling under CPU autocast, after
    rollouts outside it have checked the pass. Under autocast the pass's products must be
    autocast's, as the model's own layers compute them (the prefill keeps bfloat16 values): the samples,
    tokens and log-probs, are those of the model's own forward pass and output layer under
    autocast (no pass, no prepared head), bit for bit, as they were before products were packed."""
    model = wide_llama()
    assert decode_pass_ok(model)  # checked outside autocast, as a rollout before the evaluation does
    wide = wide_contexts()
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=1)
    steps = _calls(monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = NativeGenerator(model, Tok(), batch_size=5).generate_ids(wide, 3, params)
        assert steps[0] >= 9
        _without_pass(monkeypatch, model)
        monkeypatch.setattr(native, "_fast_head", lambda _model: contextlib.nullcontext())
        own = NativeGenerator(model, Tok(), batch_size=5).generate_ids(wide, 3, params)
    for a_row, b_row in zip(fast, own, strict=True):
        for a, b in zip(a_row, b_row, strict=True):
            assert a.token_ids == b.token_ids and a.logprobs == b.logprobs


def test_a_model_first_checked_under_autocast_keeps_the_engine_and_the_pass():
    """A bf16 run's evaluation can be the first to sample from a module, under CPU autocast. The
    checks compare with a plain forward pass at the model's own precision, so they pass there as
    outside autocast; under autocast the float32 checks failed (log-probs 5e-3 apart in bfloat16)
    and the module lost the native engine for the rest of the run."""
    model = wide_llama()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert native.unsupported(model) is None
        assert decode_pass_ok(model)


def test_gradient_checkpointing_keeps_the_pass():
    """Gradient checkpointing makes transformers hook the input embeddings
    (``make_inputs_require_grads``, which only marks their output as needing gradients): the pass
    still runs, and in float64 its samples equal those of the model's own forward pass to 1e-12.
    Any other hook on the embeddings still sends decoding to the model's own forward pass."""
    model = llama().double()
    model.gradient_checkpointing_enable()
    assert model.model.embed_tokens._forward_hooks  # the hook is there
    assert DecodePass.build(model) is not None and decode_pass_ok(model)
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=4)
    fast = NativeGenerator(model, Tok(), batch_size=5).generate_ids(contexts(), 2, params)
    other = llama().double()
    other.gradient_checkpointing_enable()
    native._FAST[other] = False
    slow = NativeGenerator(other, Tok(), batch_size=5).generate_ids(contexts(), 2, params)
    for a_row, b_row in zip(fast, slow, strict=True):
        for a, b in zip(a_row, b_row, strict=True):
            assert a.token_ids == b.token_ids
            assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < 1e-12
    hooked = llama()
    hooked.model.embed_tokens.register_forward_hook(lambda module, args, out: out * 2)
    assert DecodePass.build(hooked) is None
