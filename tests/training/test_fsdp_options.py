"""FSDP2's options on one process (a process group of one): activation checkpointing gives the
gradients of a run without it, bf16 mixed precision trains and saves in bf16, and what fsdp cannot
shard is a one-line error."""

from __future__ import annotations

import json

import pytest

from alignlab import train
from alignlab.errors import ConfigError
from tests.training.helpers import base_config, max_abs_diff, weights

pytestmark = pytest.mark.slow


def _lines(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def test_activation_checkpointing_same_gradients(tmp_path, tiny_model_dir, pairs_file):
    """The layers' forward passes run again in the backward pass, and the gradients are the same."""
    import torch
    from torch.nn.modules.module import register_module_forward_pre_hook
    from transformers.models.llama import modeling_llama

    # Counted at each layer's MLP, by a global hook: a recomputation calls the layer's forward, not
    # its __call__ (transformers keeps module hooks such as FSDP's outside the checkpoint), and
    # FSDP's subclass of the layer, made once per process, holds the forward it saw first, so a
    # patched LlamaDecoderLayer.forward is not seen either.
    calls = {"forward": 0, "recomputed": 0}

    def count(module, _args):
        if isinstance(module, modeling_llama.LlamaMLP):
            calls["forward"] += 1
            calls["recomputed"] += torch._C._current_graph_task_id() != -1  # called by the autograd engine

    handle = register_module_forward_pre_hook(count)
    try:
        common = dict(max_steps=2, dtype="fp64", batch_size=4, fsdp=True, lr=1e-2, eval_fraction=0.0, cache=False)
        plain = train(base_config(tiny_model_dir, pairs_file, tmp_path / "plain", **common))
        without = dict(calls)
        ckpt = train(base_config(tiny_model_dir, pairs_file, tmp_path / "ac", gradient_checkpointing=True, **common))
    finally:
        handle.remove()
    assert without["recomputed"] == 0 and without["forward"] > 0
    assert calls["recomputed"] == 2 * 2  # 2 layers × 2 steps, run again in the backward passes
    assert calls["forward"] - without["forward"] == without["forward"] + 2 * 2
    for a, b in zip(_lines(tmp_path / "plain"), _lines(tmp_path / "ac"), strict=True):
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], abs=1e-12)
    assert max_abs_diff(weights(plain.model_dir), weights(ckpt.model_dir)) < 1e-12


def test_bf16_mixed_precision(tmp_path, tiny_model_dir, pairs_file):
    """Parameters gathered in bf16 for compute: the first loss is the unsharded bf16 run's up to
    bf16 rounding, and the model is saved in bf16."""
    import torch

    common = dict(max_steps=2, dtype="bf16", batch_size=4, lr=1e-2)
    plain = train(base_config(tiny_model_dir, pairs_file, tmp_path / "plain", **common))
    sharded = train(base_config(tiny_model_dir, pairs_file, tmp_path / "fsdp", fsdp=True, **common))
    a, b = _lines(tmp_path / "plain"), _lines(tmp_path / "fsdp")
    assert b[0]["loss"] == pytest.approx(a[0]["loss"], rel=2e-2)
    saved = weights(sharded.model_dir)
    assert all(v.dtype == torch.bfloat16 for v in saved.values())
    assert max_abs_diff(saved, weights(plain.model_dir)) < 0.05  # same updates, up to bf16 compute
    assert max_abs_diff(saved, weights(tiny_model_dir)) > 1e-3


def test_no_decoder_layers_is_one_line_error(tmp_path, tiny_model_dir, pairs_file, monkeypatch):
    """A model class that names no layer it keeps whole (``_no_split_modules``)."""
    from transformers.models.llama import modeling_llama

    monkeypatch.setattr(modeling_llama.LlamaPreTrainedModel, "_no_split_modules", None)
    with pytest.raises(ConfigError, match="fsdp: cannot find the decoder layers of model type 'llama'.*without fsdp"):
        train(base_config(tiny_model_dir, pairs_file, tmp_path / "x", fsdp=True, max_steps=1))


def test_ppo_shared_critic_as_unsharded(tmp_path, tiny_model_dir):
    """PPO with a value head on the policy, the head a unit of its own: sharded over a process
    group of one, the policy and the head end as the unsharded run's (fp64)."""
    common = dict(method="ppo", reward=["fn:tests.training.online_rewards:digits"], num_generations=4,
                  max_new_tokens=6, dtype="fp64", warmup_steps=0, lr=1e-2, max_steps=2, updates_per_rollout=2,
                  batch_size=8, save_every=1, keep_checkpoints=0)
    plain = train(base_config(tiny_model_dir, "task:arithmetic", tmp_path / "plain", **common))
    sharded = train(base_config(tiny_model_dir, "task:arithmetic", tmp_path / "fsdp", fsdp=True, **common))
    a, b = weights(plain.model_dir), weights(sharded.model_dir)
    assert {"value_model/weight", "value_model/bias"} <= a.keys()
    assert max_abs_diff(a, b) < 1e-12
    assert float(b["value_model/weight"].abs().max()) > 1e-4  # the head starts at zero
    for x, y in zip(_lines(tmp_path / "plain"), _lines(tmp_path / "fsdp"), strict=True):
        assert y["value_loss"] == pytest.approx(x["value_loss"], abs=1e-12)
    # the run's policies over training: the checkpoints' critic is left out of them
    from alignlab.training.saved import run_models

    a, b = list(run_models(tmp_path / "plain", dtype="fp64")), list(run_models(tmp_path / "fsdp", dtype="fp64"))
    assert [x for x, _ in a] == [x for x, _ in b] == ["start", "step-00000001", "step-00000002", "final"]
    for (label, load_a), (_, load_b) in zip(a[1:], b[1:], strict=True):
        assert max_abs_diff(load_a().state_dict(), load_b().state_dict()) < 1e-12, label


def test_no_sync_keeps_gradients_on_the_process(tiny_model_dir):
    """Inside ``fsdp.no_sync`` a backward pass leaves the sharded gradients unset (nothing was
    reduce-scattered: the gradient waits, unsharded, on the process); the next backward pass
    outside it reduces the sum of both, which is the unsharded model's accumulated gradient."""
    from alignlab.models import load_model
    from alignlab.training import fsdp
    from alignlab.training.distributed import end_own_group, init_distributed

    dist = init_distributed(group=True)
    try:
        _no_sync_check(dist, load_model(str(tiny_model_dir), dtype="fp64"), fsdp)
    finally:
        end_own_group(dist)


def _no_sync_check(dist, plain, fsdp) -> None:
    import copy

    import torch

    model = fsdp.shard(copy.deepcopy(plain), dist, bf16=False)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, plain.config.vocab_size, (2, 7), generator=gen) for _ in range(2)]
    for ids in batches:
        plain(input_ids=ids, labels=ids).loss.backward()
    with fsdp.no_sync(model):
        model(input_ids=batches[0], labels=batches[0]).loss.backward()
    assert all(p.grad is None for p in model.parameters())
    model(input_ids=batches[1], labels=batches[1]).loss.backward()
    want = dict(plain.named_parameters())
    for name, p in model.named_parameters():
        assert float((p.grad.full_tensor() - want[name].grad).abs().max()) < 1e-12, name
