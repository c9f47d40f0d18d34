"""`task:` in a training config: the testbed's gold-reward measurements at every evaluation."""

from __future__ import annotations

import json

import pytest

from alignlab import train
from alignlab.errors import ConfigError
from tests.training.helpers import base_config

KEYS = {"eval/gold/sampled", "eval/gold/greedy", "eval/gold/win_rate", "eval/gold/kl", "eval/gold/length"}


def test_gold_metrics_are_logged_at_each_evaluation_and_at_the_end(tiny_model_dir, pairs_file, tmp_path):
    cfg = base_config(tiny_model_dir, pairs_file, tmp_path / "run", task="arithmetic", task_eval_prompts=6,
                      max_steps=3, eval_every=2, lr=1e-2)
    summary = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/gold/kl" in r]
    assert [r["step"] for r in evals] == [2, 3]
    assert KEYS <= set(summary.eval_metrics)
    # the policy moved away from the starting model, so the sampled KL estimate is no longer 0
    assert summary.eval_metrics["eval/gold/kl"] != 0.0
    assert 0.0 <= summary.eval_metrics["eval/gold/win_rate"] <= 1.0
    assert summary.eval_metrics["eval/gold/length"] <= 6  # the task's max_new_tokens


def test_the_reference_is_the_starting_model_when_reference_logps_are_cached(tiny_model_dir, pairs_file, tmp_path):
    """A second run finds the reference log-probs in the cache, so nothing runs the reference
    before training; the task evaluation must still compare against the starting model, not the
    trained one (then the KL would be exactly 0). Both runs end with the same numbers."""
    cfg = dict(task="arithmetic", task_eval_prompts=6, max_steps=3, eval_every=0, lr=1e-2)
    first = train(base_config(tiny_model_dir, pairs_file, tmp_path / "a", **cfg))
    second = train(base_config(tiny_model_dir, pairs_file, tmp_path / "b", **cfg))
    assert second.eval_metrics["eval/gold/kl"] != 0.0
    assert second.eval_metrics == pytest.approx(first.eval_metrics, abs=1e-9)


def test_unknown_task_is_a_config_error(tiny_model_dir, pairs_file, tmp_path):
    with pytest.raises(ConfigError, match="task: must be one of arithmetic, chainsum, constraints, sentiment"):
        train(base_config(tiny_model_dir, pairs_file, tmp_path / "run", task="arith"))
