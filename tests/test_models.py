"""Loading, LoRA, the reference model and saving."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignlab import train
from alignlab.errors import UserError
from alignlab.models import (
    LoraSettings,
    Reference,
    add_lora,
    build_tiny_model,
    first_non_finite,
    load_model,
    load_tokenizer,
)
from tests.conftest import DAMAGED_SIZE, DAMAGED_TENSOR, DAMAGED_VALUES
from tests.training.helpers import base_config


def test_tiny_model_is_about_one_million_parameters():
    model, tok = build_tiny_model()
    n = sum(p.numel() for p in model.parameters())
    assert 0.5e6 < n < 1.5e6
    assert tok.chat_template and tok.eos_token == "<|end|>" and tok.pad_token_id != tok.eos_token_id


def test_tiny_model_is_seeded():
    a, _ = build_tiny_model()
    b, _ = build_tiny_model()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_saved_tiny_model_loads_with_auto_classes(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok("hello", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], len(tok))
    assert tok.decode(ids[0]) == "hello"


@pytest.mark.parametrize("path,message", [("/nonexistent/model", "does not exist"), ("./missing-dir", "does not exist")])
def test_missing_model_directory(path, message):
    with pytest.raises(UserError, match=message):
        load_model(path)


def test_missing_directory_inside_an_existing_folder_is_not_a_hub_name(tmp_path, monkeypatch):
    """'runs/tiny-model' where 'runs/' exists is a local path that is missing, not a hub repo."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(UserError, match="'runs/tiny-model' does not exist"):
        load_model("runs/tiny-model")


def test_directory_without_config(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        load_tokenizer(str(tmp_path))


def test_a_model_folder_without_a_tokenizer_is_one_whole_line_naming_it(tiny_model_dir, tmp_path):
    """Only config.json: the error names the folder and says what is missing, on one line."""
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(UserError) as got:
        load_tokenizer(str(bare))
    message = str(got.value)
    assert message.startswith(f"cannot load tokenizer from '{bare}': the folder has no tokenizer files (none of "
                              "tokenizer.json, ") and "\n" not in message and not message.endswith(": ")


def test_a_cause_that_announces_its_lines_is_kept_whole():
    from alignlab.models import load_failed

    error = ValueError("Couldn't instantiate the backend tokenizer from one of: \n(1) a file, \n(2) a class")
    assert str(load_failed("tokenizer", "m", error)) == ("cannot load tokenizer from 'm': ValueError: Couldn't "
                                                         "instantiate the backend tokenizer from one of: (1) a file, "
                                                         "(2) a class")


def test_bad_dtype(tiny_model_dir):
    with pytest.raises(UserError, match="dtype"):
        load_model(str(tiny_model_dir), dtype="fp8")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_a_model_with_non_finite_weights_is_refused_naming_file_and_tensor(damaged_model_dir, dtype):
    """A model.safetensors damaged in place (same size, NaN and inf in two tensors): one line naming
    the directory, the file, the first damaged tensor in parameter order and how many of its
    values are bad."""
    with pytest.raises(UserError) as e:
        load_model(str(damaged_model_dir), dtype=dtype)
    assert str(e.value) == (
        f"model '{damaged_model_dir}' has non-finite weights: '{DAMAGED_TENSOR}' (in {damaged_model_dir}/"
        f"model.safetensors) holds {DAMAGED_VALUES} NaN or infinite values of {DAMAGED_SIZE}; the file is damaged, "
        "or was saved after a training run diverged")


def test_first_non_finite_finds_nan_and_inf_and_is_not_fooled_by_an_overflowing_sum():
    big = torch.full((4,), 3e38)  # finite values whose float32 sum overflows to inf
    assert first_non_finite([("big", big), ("ints", torch.arange(3)), ("ok", torch.zeros(2))]) is None
    inf = torch.tensor([1.0, float("inf"), -float("inf")])  # a sum of inf - inf is NaN: still found
    assert first_non_finite([("big", big), ("inf", inf), ("nan", torch.tensor([float("nan")]))]) == ("inf", 2, 3)
    assert first_non_finite([("half", torch.tensor([1.0, float("nan")], dtype=torch.bfloat16))]) == ("half", 1, 2)


def test_bf16_loading(tiny_model_dir):
    assert load_model(str(tiny_model_dir), dtype="bf16").dtype == torch.bfloat16


def test_lora_reference_is_the_same_network_with_the_adapter_off(tiny_model_dir):
    base = load_model(str(tiny_model_dir))
    ids = torch.tensor([[5, 80, 81, 82, 83]])
    base_logits = base(ids).logits.detach()
    policy = add_lora(base, LoraSettings(r=4, alpha=8))
    with torch.no_grad():  # make the adapter non-zero so that policy and reference differ
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.fill_(0.05)
    ref = Reference(policy)
    assert ref._copy is None  # no second copy of the weights
    with ref.model(policy) as m:
        assert torch.allclose(m(ids).logits, base_logits, atol=1e-6)
    assert not torch.allclose(policy(ids).logits, base_logits, atol=1e-3)


def test_full_finetuning_reference_is_a_frozen_copy(tiny_model_dir):
    policy = load_model(str(tiny_model_dir))
    ref = Reference(policy)
    with torch.no_grad():
        next(policy.parameters()).add_(1.0)
    with ref.model(policy) as m:
        assert m is not policy and not any(p.requires_grad for p in m.parameters())
        assert not torch.equal(next(m.parameters()), next(policy.parameters()))


def test_lora_training_saves_adapter_and_merged_weights(tmp_path, tiny_model_dir, pairs_file):
    from peft import PeftModel

    summary = train(base_config(tiny_model_dir, pairs_file, tmp_path / "run", lora=True, lora_r=4,
                                lora_alpha=8, merge_lora=True, max_steps=2, lr=1e-2, batch_size=4))
    model_dir = tmp_path / "run" / "model"
    assert (model_dir / "adapter_config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    adapted = PeftModel.from_pretrained(base, model_dir)
    merged = AutoModelForCausalLM.from_pretrained(model_dir / "merged")
    ids = torch.tensor([[5, 80, 81, 82, 83, 84]])
    assert torch.allclose(adapted(ids).logits, merged(ids).logits, atol=1e-5)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.allclose(plain(ids).logits, merged(ids).logits, atol=1e-4)  # the adapter learned something
    assert summary.train_metrics["rewards/margins"] != 0.0


@pytest.mark.parametrize("options", [{}, {"lora": True, "lora_r": 4}, {"lora": True, "lora_r": 4,
                                                                      "gradient_checkpointing": True,
                                                                      "merge_lora": True}],
                         ids=["full", "lora", "lora-checkpointed"])
def test_training_uses_no_deprecated_transformers_api(options, tmp_path, tiny_model_dir, pairs_file):
    """No deprecation warning from transformers (of `is_gradient_checkpointing`, which peft's LoRA
    wrapper read, or any other), neither as a Python warning nor through transformers' logger."""
    import logging
    import warnings

    logged: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = logged.append
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(base_config(tiny_model_dir, pairs_file, tmp_path / "run", max_steps=1, batch_size=4, **options))
    finally:
        hf_logger.removeHandler(handler)
    said = [f"{w.category.__name__}: {w.message}" for w in caught] + [r.getMessage() for r in logged]
    assert not [s for s in said if "deprecat" in s.lower()], said


@pytest.mark.parametrize("adapted", ["lm_head", "embed_tokens"])
def test_a_merged_lora_on_a_tied_embedding_computes_what_the_adapter_does(tmp_path, tied_model_dir, adapted):
    """A LoRA on the output layer (or the input embeddings) of a model whose two share one weight:
    merged into that weight, the adapter of one would move the other too, and ``model/merged`` and
    the merged checkpoints ``run_models`` gives (alignlab eval --run) would be another model (their
    logits were off by 0.9). Reference: peft's own model of the saved adapter on the base (fp64)."""
    from peft import PeftModel

    from alignlab.training.saved import run_models

    train(base_config(tied_model_dir, "task:arithmetic", tmp_path / "run", method="grpo", num_generations=4,
                      reward=["fn:tests.training.online_rewards:digits"], max_new_tokens=6, dtype="fp64",
                      warmup_steps=0, lr=5e-2, max_steps=2, save_every=2, lora=True, lora_r=2, lora_alpha=4,
                      lora_target_modules=["q_proj", adapted], merge_lora=True))
    model_dir = tmp_path / "run" / "model"
    base = AutoModelForCausalLM.from_pretrained(tied_model_dir, dtype=torch.float64)
    adapter = PeftModel.from_pretrained(base, model_dir).eval()
    ids = torch.tensor([[5, 80, 81, 82, 83, 84]])
    with torch.no_grad():
        want = adapter(ids).logits
        untouched = AutoModelForCausalLM.from_pretrained(tied_model_dir, dtype=torch.float64)(ids).logits
        assert (want - untouched).abs().max() > 1e-3  # the adapter learned something
        merged = AutoModelForCausalLM.from_pretrained(model_dir / "merged", dtype=torch.float64).eval()
        assert (merged(ids).logits - want).abs().max() < 1e-10
        models = dict(run_models(tmp_path / "run", dtype="fp64"))
        assert (models["step-00000002"]().eval()(ids).logits - want).abs().max() < 1e-10
