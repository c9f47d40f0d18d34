"""Online DPO through the shared loop: two samples per prompt, ranked by the reward, trained on the
DPO (or IPO) loss against the starting policy; the loop's guarantees hold for it too (the update
does not depend on how the step is split; an interrupted run resumes exactly)."""

from __future__ import annotations

import pytest

from alignlab import train
from alignlab.errors import ConfigError
from alignlab.training import checkpoint as ckpt
from tests.training.helpers import crash_after_save, max_abs_diff, weights
from tests.training.test_online import metrics, online

# the number of letters in an answer: 6 random byte tokens differ in it, with a tie now and then
LETTERS = "fn:tests.training.online_rewards:letters"


def dpo_run(model_dir, out, **overrides) -> dict:
    return online(model_dir, out, **{"method": "online-dpo", "num_generations": 2, "batch_size": 8, "reward": [LETTERS],
                                     **overrides})


def test_online_dpo_trains_and_logs_its_pairs(tmp_path, tiny_model_dir):
    """8 completions = 4 prompts × 2 per step. The reward (letters in 6 random tokens) ties some
    pairs; the loss is the mean over the decisive pairs, and the metrics are DPO's over them."""
    summary = train(dpo_run(tiny_model_dir, tmp_path / "run", max_steps=3))
    rows = [m for m in metrics(tmp_path / "run") if "loss" in m]
    assert [m["step"] for m in rows] == [1, 2, 3]
    # at step 1 the policy is the reference: every implicit reward is 0, the loss is log 2
    first = rows[0]
    assert first["pairs/tied"] < 1
    assert first["loss"] == pytest.approx(0.6931471805599453, abs=1e-12)
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-12) and first["rewards/margins"] == pytest.approx(0.0, abs=1e-12)
    assert first["kl/sequence"] == pytest.approx(0.0, abs=1e-12)
    for m in rows:
        assert m["pairs/tied"] in (0.0, 0.25, 0.5, 0.75, 1.0)  # 4 pairs a step
        assert m["advantage/mean"] == pytest.approx(0.0, abs=1e-12)  # labels +1 / −1 cancel, ties are 0
        assert 0 <= m["reward"] <= 6
    later = [m for m in rows[1:] if m["pairs/tied"] < 1]
    assert later and all(m["rewards/margins"] != 0 for m in later)
    assert max_abs_diff(weights(summary.model_dir), weights(tiny_model_dir)) > 1e-4


def test_ipo_trains_too(tmp_path, tiny_model_dir):
    """IPO at step 1 (policy = reference, Δ̄ = 0): the loss is (0 − 1/(2·0.1))² = 25 for every
    decisive pair."""
    train(dpo_run(tiny_model_dir, tmp_path / "ipo", max_steps=2, loss_type="ipo"))
    rows = [m for m in metrics(tmp_path / "ipo") if "loss" in m]
    assert rows[0]["pairs/tied"] < 1 and rows[0]["loss"] == pytest.approx(25.0, abs=1e-9)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_the_update_does_not_depend_on_how_the_step_is_split(tmp_path, tiny_model_dir, loss_type):
    """8 completions per step as 8 × 1, 2 × 4 and 4 × 2 (micro-batch × accumulation): the same
    pairs, the same losses over the same number of decisive pairs, so the same weights after 3
    steps (fp64). Padded rows (``packing=False``): with packing a pair shares its prompt in one
    row, and Llama's RMSNorm computes in fp32 even in an fp64 model, so the shared prompt's
    gradient (summed once) differs from two rows' by fp32 rounding, which would blur an fp64
    comparison; ``test_online_packing.py`` checks packed rows against padded ones."""
    runs = []
    for bs, ga in ((8, 1), (2, 4), (4, 2)):
        out = tmp_path / f"{bs}x{ga}"
        runs.append(train(dpo_run(tiny_model_dir, out, batch_size=bs, grad_accum=ga, packing=False, max_steps=3,
                                  loss_type=loss_type)))
    a, b, c = (weights(r.model_dir) for r in runs)
    assert max_abs_diff(a, b) < 1e-9 and max_abs_diff(a, c) < 1e-9
    assert max_abs_diff(a, weights(tiny_model_dir)) > 1e-4


def test_dividing_by_every_pair_instead_of_the_decisive_ones_would_change_the_update(tmp_path, tiny_model_dir,
                                                                                    monkeypatch):
    """The check above can fail: with 1 unit per pair (ties counted) instead of per decisive pair,
    the same run ends elsewhere (the letter count ties some pairs in these steps)."""
    import dataclasses

    from alignlab.losses import REGISTRY

    a = train(dpo_run(tiny_model_dir, tmp_path / "a", max_steps=2, packing=False))
    assert any(m["pairs/tied"] > 0 for m in metrics(tmp_path / "a") if "loss" in m)
    every_pair = dataclasses.replace(REGISTRY["online-dpo"], units=lambda adv, params: (adv >= 0).double())
    monkeypatch.setitem(REGISTRY, "online-dpo", every_pair)
    b = train(dpo_run(tiny_model_dir, tmp_path / "b", max_steps=2, packing=False))
    assert max_abs_diff(weights(a.model_dir), weights(b.model_dir)) > 1e-6


def test_an_interrupted_run_resumes_exactly(tmp_path, tiny_model_dir):
    """Killed after the checkpoint of step 2 and resumed: the same weights and per-step metrics
    as an uninterrupted run of 4 steps (the rounds are redrawn from (seed, round, weights))."""
    cfg = dict(max_steps=4, save_every=1, keep_checkpoints=0)
    full = train(dpo_run(tiny_model_dir, tmp_path / "full", **cfg))
    with crash_after_save(lambda step: step == 2):
        train(dpo_run(tiny_model_dir, tmp_path / "cut", **cfg))
    assert ckpt.read_state(ckpt.list_checkpoints(tmp_path / "cut" / "checkpoints")[0])["step"] == 2
    resumed = train(dpo_run(tiny_model_dir, tmp_path / "cut", resume=True, **cfg))
    assert max_abs_diff(weights(full.model_dir), weights(resumed.model_dir)) == 0

    def per_step(out):
        keep = ("loss", "reward", "grad_norm", "pairs/tied", "rewards/margins")
        return {m["step"]: [m.get(k) for k in keep] for m in metrics(out) if "loss" in m}

    assert per_step(tmp_path / "cut") == per_step(tmp_path / "full")


def test_pairs_that_all_tie_give_no_loss_and_no_update(tmp_path, tiny_model_dir):
    """A constant reward ties every pair: loss 0, no units (the loop divides by at least 1), a
    zero gradient, and AdamW (no weight decay) leaves the weights where they were."""
    summary = train(dpo_run(tiny_model_dir, tmp_path / "ties", max_steps=2,
                            reward=["fn:tests.training.online_rewards:constant"]))
    rows = [m for m in metrics(tmp_path / "ties") if "loss" in m]
    assert all(m["loss"] == 0.0 and m["pairs/tied"] == 1.0 and m["grad_norm"] == 0.0 for m in rows)
    assert not any("rewards/margins" in m for m in rows)  # no decisive pair: nothing to average, not logged as 0
    assert max_abs_diff(weights(summary.model_dir), weights(tiny_model_dir)) < 1e-12


def test_bad_setups_are_one_line_errors(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match=r"^num_generations: method 'online-dpo' compares 2 samples per prompt; "
                                          r"set num_generations to 2, got 4$"):
        train(dpo_run(tiny_model_dir, tmp_path / "g", num_generations=4))
    with pytest.raises(ConfigError, match=r"^batch_size: .*a multiple of 2, got 3$"):
        train(dpo_run(tiny_model_dir, tmp_path / "b", batch_size=3, grad_accum=2))


def test_the_demo_samples_two_answers_per_prompt_for_it():
    from alignlab.errors import UserError
    from alignlab.testbed.demo import DemoSettings

    assert DemoSettings(method="online-dpo").k == 2 and DemoSettings(method="online-dpo", k=2).k == 2
    assert DemoSettings(method="grpo").k == 4 and DemoSettings(method="dpo").k == 4
    with pytest.raises(UserError, match="k=4: method 'online-dpo' compares 2 answers per prompt; give k=2"):
        DemoSettings(method="online-dpo", k=4)


def test_online_dpo_samples_two_answers_per_prompt_unless_told_otherwise(tmp_path, tiny_model_dir):
    """The config's num_generations (8 for the other online methods) is the method's 2 when not given."""
    from alignlab.config import make_config

    cfg = make_config({"method": "online-dpo", "model": str(tiny_model_dir), "data": "task:arithmetic"})
    assert cfg.rollout.num_generations == 2
    assert make_config({"method": "grpo", "model": str(tiny_model_dir), "data": "x"}).rollout.num_generations == 8
