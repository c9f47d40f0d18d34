"""Every registered offline method (and two combinations) trains a few steps on the tiny model, on
data of its own shape, and lowers its own loss on that data."""

from __future__ import annotations

import json

import pytest

from alignlab import train
from alignlab.losses import REGISTRY, get_loss
from tests.training.helpers import base_config
from tests.training.shape_data import write_shape

COMBINATIONS = ["dpo+0.005*sft", "0.5*simpo+0.1*sft"]
# Settings a method needs at this size: fewer and shorter reference samples for D2O; a smaller
# step for SPPO-hard, whose squared targets of ±5 nats give large gradients.
EXTRA = {"d2o": {"num_samples": 2, "sample_max_new_tokens": 6}, "sppo-hard": {"lr": 3e-4}}


def _eval_losses(out) -> tuple[float, float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/loss" in r]
    return evals[0]["eval/loss"], evals[-1]["eval/loss"]


# Online methods have no fixed data to lower a loss on; tests/training/test_online.py trains each of
# them (split invariance, resume, faults).
OFFLINE = sorted(name for name, spec in REGISTRY.items() if spec.shape != "online")


@pytest.mark.parametrize("method", OFFLINE + COMBINATIONS)
def test_method_trains_and_lowers_its_own_loss(method, tmp_path, tiny_model_dir):
    spec = get_loss(method)
    data = write_shape(tmp_path, spec.shape, n=8, seed=0)
    settings = {"lr": 3e-3, **EXTRA.get(method, {})}
    cfg = base_config(tiny_model_dir, data, tmp_path / "run", method=method, max_steps=6, batch_size=4,
                      eval_data=str(data), eval_at_start=True, warmup_steps=0, scheduler="constant", **settings)
    if "group" in spec.needs:
        cfg["mix_data"] = str(write_shape(tmp_path, "pair", n=8, seed=1))
    summary = train(cfg)
    start, end = _eval_losses(tmp_path / "run")
    assert summary.steps == 6
    assert end < start - 1e-4, f"{method}: eval loss went from {start} to {end}"
