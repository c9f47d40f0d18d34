"""Helpers for training tests: run a config, read back the trained weights."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file


def base_config(model_dir: Path, data: Path, out: Path, **overrides) -> dict:
    cfg = {
        "method": "dpo", "model": str(model_dir), "data": str(data), "output_dir": str(out),
        "max_steps": 2, "batch_size": 8, "grad_accum": 1, "lr": 1e-3, "max_length": 128,
        "progress": False, "seed": 0, "scheduler": "linear", "warmup_steps": 1,
    }
    cfg.update(overrides)
    return cfg


def weights(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """The saved weights; a reward model's head too."""
    out = load_file(Path(model_dir) / "model.safetensors")
    head = Path(model_dir) / "reward_head.safetensors"
    if head.exists():
        out.update(load_file(head))
    return out


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
