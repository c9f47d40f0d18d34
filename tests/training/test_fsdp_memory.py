"""Per-process bytes of parameters, gradients and AdamW state under FSDP2 halve with two
processes (``bench/fsdp_memory.py``, run under torchrun), against the whole state counted on
one unsharded copy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from alignlab.models import TinyModelConfig, load_model, save_tiny_model

pytestmark = pytest.mark.slow


def _measure(processes: int) -> list[dict]:
    from tests.training.train_many import free_port, launch_env

    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                           "--master_port", free_port(), "bench/fsdp_memory.py", "--hidden", "64", "--layers", "2"],
                          env=launch_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith('{"rank"')]
    assert [r["rank"] for r in rows] == list(range(processes))
    return rows


def test_state_per_process_halves(tmp_path):
    # The whole state, counted on a plain copy of the same model: fp32 weights, their gradients,
    # AdamW's two moments, and one step count (a 4-byte scalar) per parameter tensor.
    save_tiny_model(tmp_path, TinyModelConfig(hidden_size=64, num_layers=2, intermediate_size=256, num_heads=8))
    params = list(load_model(str(tmp_path), dtype="fp32").parameters())
    numel = sum(p.numel() for p in params)
    whole = 4 * numel * 4 + 4 * len(params)

    two = _measure(2)
    assert sum(r["param_bytes"] for r in two) == 4 * numel  # the shards partition the weights
    for r in two:
        assert r["grad_bytes"] == r["param_bytes"] and r["optimizer_bytes"] == 2 * r["param_bytes"] + 4 * len(params)
        assert 0.49 * whole < r["total_bytes"] < 0.51 * whole
