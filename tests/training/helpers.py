"""Helpers for training tests: run a config, read back the trained weights."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
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
    """The saved weights; a reward model's head too, and a PPO critic saved beside a policy."""
    model_dir = Path(model_dir)
    out = load_file(model_dir / "model.safetensors") if (model_dir / "model.safetensors").exists() else {}
    for extra in ("reward_head.safetensors", "value_head.safetensors"):
        if (model_dir / extra).exists():
            out.update(load_file(model_dir / extra))
    if (model_dir / "value_model").is_dir():
        out.update({f"value_model/{k}": v for k, v in weights(model_dir / "value_model").items()})
    return out


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


class Crash(Exception):
    """Raised by ``crash_after_save``: the run stops as a killed process would, after a checkpoint."""


@contextlib.contextmanager
def crash_after_save(when: Callable[[int], bool]) -> Iterator[None]:
    """Within the block, a training run stops with ``Crash`` right after writing the checkpoint of
    a step for which ``when(step)`` is true; the block must end that way."""
    import alignlab.training.loop as loop

    real = loop.save

    def save_then_crash(inp, unwrapped, optimizer, scheduler, step, *rest):
        real(inp, unwrapped, optimizer, scheduler, step, *rest)
        if when(step):
            raise Crash

    with pytest.MonkeyPatch.context() as m:
        m.setattr(loop, "save", save_then_crash)
        with pytest.raises(Crash):
            yield
