"""Completions with advantage 0 are left out of the forward and backward passes where their loss is
exactly 0 (``rollout.skip_zero_advantage``): the update must be the one of computing them all.

Why it can be: under ``policy_gradient_loss`` with β = 0 a completion whose advantage is 0 has
per-token loss −min(c·0, clip(c)·0) = 0 whatever its ratio c, so its loss and gradient are 0; the
step's normaliser U (its tokens under 'token_mean', one per completion otherwise) still counts it
(``Batch.idle``), so Σ_i ℓ_i / U is the same number with or without it. The reward here is binary
(has the answer a digit), so some groups of 4 tie (all 0 or all 1: advantages 0) and others not.
"""

from __future__ import annotations

import json

import pytest

from alignlab import train
from alignlab.training.forward.policy_gradient import PolicyGradientForward
from tests.training.helpers import max_abs_diff, weights
from tests.training.test_online import online

BINARY = "fn:tests.training.online_rewards:has_digit"


def logged(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def run(model_dir, tmp_path, name, **kw):
    cfg = online(model_dir, tmp_path / name, reward=[BINARY], **{"max_steps": 3, **kw})
    return train(cfg), logged(tmp_path / name)


@pytest.mark.parametrize("method,extra", [("grpo", {}), ("grpo", {"aggregation": "seq_mean_token_mean"}),
                                          ("dr_grpo", {}), ("rloo", {}), ("gspo", {}), ("luspo", {}),
                                          ("cispo", {}), ("sapo", {}), ("vespo", {}), ("gmpo", {}), ("opo", {}), ("gpg", {}),
                                          ("grpo_passk", {}),
                                          ("grpo", {"surrogate": "clip_cov", "cov_ratio": 0.2, "clip_cov_lb": -1e9,
                                                    "clip_cov_ub": 1e9}),
                                          ("grpo", {"updates_per_rollout": 2, "max_steps": 4})])
@pytest.mark.parametrize("bs,ga", [(8, 1), (2, 4)])
def test_leaving_out_zero_advantage_completions_gives_the_same_update(tmp_path, tiny_model_dir, method, extra, bs, ga):
    """fp64, 3 steps (each samples from the last one's weights): the same losses, weights and
    logged rewards to 1e-12 with the completions left out as with every one computed, and some
    were left out."""
    kw = {"method": method, "batch_size": bs, "grad_accum": ga, "packing": False, **extra}
    off, off_rows = run(tiny_model_dir, tmp_path, "off", skip_zero_advantage=False, **kw)
    on, on_rows = run(tiny_model_dir, tmp_path, "on", **kw)
    assert [r["loss"] for r in on_rows] == pytest.approx([r["loss"] for r in off_rows], abs=1e-12)
    assert max_abs_diff(weights(on.model_dir), weights(off.model_dir)) < 1e-12
    # every step of a round logs the round's reward (over all its completions, not those computed)
    assert [r["reward"] for r in on_rows] == pytest.approx([r["reward"] for r in off_rows], abs=1e-12)
    assert all("skipped_zero_advantage" not in r for r in off_rows)
    assert any(r["skipped_zero_advantage"] > 0 for r in on_rows)
    assert max_abs_diff(weights(on.model_dir), weights(tiny_model_dir)) > 1e-4  # it learned


def test_the_check_can_fail_without_counting_the_left_out_units(tmp_path, tiny_model_dir, monkeypatch):
    """If the normaliser forgot the completions left out, the update would change."""
    off, _ = run(tiny_model_dir, tmp_path, "off", skip_zero_advantage=False)
    monkeypatch.setattr(PolicyGradientForward, "units", lambda self, batch: float(sum(
        len(e.completion_ids) for e in batch.examples)))
    on, rows = run(tiny_model_dir, tmp_path, "on")
    assert any(r["skipped_zero_advantage"] > 0 for r in rows)
    assert max_abs_diff(weights(on.model_dir), weights(off.model_dir)) > 1e-6


def test_completions_are_left_out_of_the_forward_pass(tmp_path, tiny_model_dir, monkeypatch):
    """The forward sees only completions with a non-zero advantage, except a micro-batch with none,
    where one stands in (every process must run its passes) and its metrics do not count; the
    logged share is what it did not see, and the entropy is the mean over the completions seen."""
    seen: list[list] = []
    real = PolicyGradientForward.__call__

    def keep(self, model, batch):
        out = real(self, model, batch)
        seen.append((batch.placeholder, [e.advantages[0] for e in batch.examples], out.metrics))
        return out

    monkeypatch.setattr(PolicyGradientForward, "__call__", keep)
    _, rows = run(tiny_model_dir, tmp_path, "on", batch_size=2, grad_accum=4, max_steps=4)
    assert len(seen) == 16  # 4 micro-batches × 4 steps, none dropped
    for step, row in enumerate(rows):
        parts = seen[4 * step:4 * step + 4]
        computed = [a for placeholder, advs, _ in parts if not placeholder for a in advs]
        assert all(a != 0 for a in computed)
        assert all(len(advs) == 1 and advs[0] == 0 for placeholder, advs, _ in parts if placeholder)
        assert row["skipped_zero_advantage"] == pytest.approx(1 - len(computed) / 8, abs=1e-12)
        entropy = sum(float(m["entropy"].sum()) for p, _, m in parts if not p)
        tokens = sum(float(m["_count/entropy"].sum()) for p, _, m in parts if not p)
        if computed:
            assert row["entropy"] == pytest.approx(entropy / tokens, abs=1e-12)
        else:
            assert "entropy" not in row
    assert any(p for p, _, _ in seen) and any(not p for p, _, _ in seen)


@pytest.mark.parametrize("method,extra", [("grpo", {"beta": 0.1}), ("ppo", {}), ("grpo", {"entropy_coef": 0.01}),
                                          ("grpo", {"surrogate": "kl_cov"})])
def test_nothing_is_left_out_where_a_zero_advantage_still_has_a_loss(tmp_path, tiny_model_dir, method, extra):
    """A KL term (β > 0), PPO's value loss, an entropy bonus or KL-Cov's penalty gives a zero-advantage
    completion a gradient."""
    _, rows = run(tiny_model_dir, tmp_path, "on", method=method, **extra)
    assert all("skipped_zero_advantage" not in r for r in rows)
