"""DAPO's dynamic sampling (``dynamic_sampling``): a round is filled with groups whose rewards
differ, drawing further batches of prompts, at most ``max_sampling_batches``; with the loop's
guarantees (the split of a step, 1 process or 2, a resumed run and the seed change nothing).

The reward ``digits_on_odd`` gives every answer to a prompt with an even first number 0.5 (a group
without spread, whose GRPO advantages are all 0) and counts digits otherwise."""

from __future__ import annotations

import json
import re

import pytest

import alignlab.training.online as online_mod
from alignlab import train
from alignlab.errors import ConfigError
from alignlab.training import checkpoint as ckpt
from tests.training.helpers import base_config, crash_after_save, max_abs_diff, weights

HALF = "fn:tests.training.online_rewards:digits_on_odd"


def cfg(model_dir, out, **overrides) -> dict:
    c = base_config(model_dir, "task:arithmetic", out, method="grpo", reward=[HALF], num_generations=4,
                    max_new_tokens=6, dtype="fp64", warmup_steps=0, lr=1e-2, batch_size=8, max_steps=3,
                    dynamic_sampling=True, packing=False)
    c.update(overrides)
    return c


def logged(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def trained_groups(monkeypatch) -> list[list[list[float]]]:
    """Records, per round, the rewards of each group the round trains on (G consecutive examples)."""
    rounds: list = []
    real = online_mod.OnlineSource._collect

    def collect(self, round_):
        real(self, round_)
        rewards = [e.reward for e in self._examples]
        rounds.append([rewards[i:i + self.G] for i in range(0, len(rewards), self.G)])

    monkeypatch.setattr(online_mod.OnlineSource, "_collect", collect)
    return rounds


def test_every_trained_group_has_spread(tmp_path, tiny_model_dir, monkeypatch):
    """Without dynamic sampling some of the round's groups have no spread (the prompts with an even
    first number); with it every trained group does, more than one batch was drawn for some round,
    and what was sampled (``reward/sampled``, all batches) differs from what was trained."""
    rounds = trained_groups(monkeypatch)
    train(cfg(tiny_model_dir, tmp_path / "plain", dynamic_sampling=False))
    assert any(max(g) == min(g) for groups in rounds for g in groups)
    rounds.clear()
    train(cfg(tiny_model_dir, tmp_path / "dyn"))
    assert len(rounds) == 3 and all(len(groups) == 2 for groups in rounds)
    assert all(max(g) > min(g) for groups in rounds for g in groups)
    rows = logged(tmp_path / "dyn")
    assert all(r["dynamic_sampling/with_spread"] == 1.0 for r in rows)
    assert any(r["dynamic_sampling/batches"] > 1 for r in rows)
    assert all(r["advantage/zero"] < 1 for r in rows)


def test_a_round_short_of_spread_is_completed_and_trains_nothing_from_it(tmp_path, tiny_model_dir):
    """A reward without spread anywhere (``constant``) and one batch at most: the round is the
    batch's groups, every advantage 0, ``with_spread`` 0, and the weights do not move (β = 0)."""
    out = train(cfg(tiny_model_dir, tmp_path / "c", reward=["fn:tests.training.online_rewards:constant"],
                    max_sampling_batches=1, max_steps=2))
    rows = logged(tmp_path / "c")
    assert [r["dynamic_sampling/with_spread"] for r in rows] == [0.0, 0.0]
    assert [r["dynamic_sampling/batches"] for r in rows] == [1.0, 1.0]
    assert max_abs_diff(weights(out.model_dir), weights(tiny_model_dir)) == 0


@pytest.mark.parametrize("updates", [1, 2])
def test_the_split_of_a_step_changes_nothing(tmp_path, tiny_model_dir, updates):
    """8 × 1, 1 × 8 and 2 × 4 (micro-batch × accumulation): the same weights to 1e-9 (fp64) and the
    same logged rewards, sampled and trained."""
    runs = []
    for bs, ga in ((8, 1), (1, 8), (2, 4)):
        runs.append(train(cfg(tiny_model_dir, tmp_path / f"{bs}x{ga}", batch_size=bs, grad_accum=ga,
                              updates_per_rollout=updates, max_steps=2 * updates)))
    a = weights(runs[0].model_dir)
    for r in runs[1:]:
        assert max_abs_diff(a, weights(r.model_dir)) < 1e-9
    assert max_abs_diff({k: a[k] for k in weights(tiny_model_dir)}, weights(tiny_model_dir)) > 1e-4
    keys = ("reward", "reward/sampled", "dynamic_sampling/batches")
    first = [r.get(k, -1.0) for r in logged(tmp_path / "8x1") for k in keys]
    for name in ("1x8", "2x4"):
        assert [r.get(k, -1.0) for r in logged(tmp_path / name) for k in keys] == pytest.approx(first, abs=1e-12)


@pytest.mark.parametrize("crash_at", [1, 2])
def test_an_interrupted_run_resumes_exactly(tmp_path, tiny_model_dir, crash_at):
    """Two updates per round; killed after the checkpoint of step 1 (inside a round: the checkpoint
    holds the round's groups) or 2 (at a round boundary: the next round redraws its batches), then
    resumed: the same weights and per-step losses and rewards as an uninterrupted run."""
    common = dict(updates_per_rollout=2, max_steps=4, save_every=1, keep_checkpoints=0)
    full = train(cfg(tiny_model_dir, tmp_path / "full", **common))
    with crash_after_save(lambda step: step == crash_at):
        train(cfg(tiny_model_dir, tmp_path / "cut", **common))
    state = ckpt.read_state(ckpt.list_checkpoints(tmp_path / "cut" / "checkpoints")[0])
    assert ("rollout" in state["data_position"]) == (crash_at == 1)
    resumed = train(cfg(tiny_model_dir, tmp_path / "cut", resume=True, **common))
    assert max_abs_diff(weights(full.model_dir), weights(resumed.model_dir)) == 0

    def per_step(out):
        return {r["step"]: [r.get(k) for k in ("loss", "reward", "grad_norm")] for r in logged(out)}

    assert per_step(tmp_path / "cut") == per_step(tmp_path / "full")


def test_the_same_seed_gives_the_same_run(tmp_path, tiny_model_dir):
    a = train(cfg(tiny_model_dir, tmp_path / "a"))
    b = train(cfg(tiny_model_dir, tmp_path / "b"))
    c = train(cfg(tiny_model_dir, tmp_path / "c", seed=1))
    assert max_abs_diff(weights(a.model_dir), weights(b.model_dir)) == 0
    assert max_abs_diff(weights(a.model_dir), weights(c.model_dir)) > 1e-6


@pytest.mark.parametrize("method", ["remax", "ppo", "reinforce++", "online-dpo"])
def test_methods_without_a_group_advantage_refuse_it(tmp_path, tiny_model_dir, method):
    extra = {"num_generations": 2} if method == "online-dpo" else {}
    with pytest.raises(ConfigError, match=r"^dynamic_sampling: keeps the groups whose rewards differ.*method "
                                          rf"'{re.escape(method)}' has no such advantage"):
        train(cfg(tiny_model_dir, tmp_path / "x", method=method, **extra))


def test_max_sampling_batches_must_be_positive(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match=r"max_sampling_batches: must be >= 1, got 0"):
        train(cfg(tiny_model_dir, tmp_path / "x", max_sampling_batches=0))


def test_a_round_draws_each_prompt_once_while_the_prompt_set_lasts(tmp_path, tiny_model_dir, monkeypatch):
    """The further batches of a round draw prompts the round has not drawn yet, as DAPO's next
    batches of the data loader do: with 2 prompts a batch and at most 4 batches, a round's (up to)
    8 prompts are distinct (the prompt set holds 8). Each batch drawing from a
    permutation of its own, one prompt came back in a later batch of round 2 (row 6 twice) and was
    trained twice in that round."""
    drawn: dict[int, list[int]] = {}
    sizes: set[int] = set()
    real = online_mod.OnlineSource._draw

    def draw(self, round_, batch, *args):
        d = real(self, round_, batch, *args)
        drawn.setdefault(round_, []).extend(d.rows)
        sizes.add(len(self.prompts))
        return d

    monkeypatch.setattr(online_mod.OnlineSource, "_draw", draw)
    out = train(cfg(tiny_model_dir, tmp_path / "d", max_steps=4, max_sampling_batches=4))
    assert len(drawn) == 4 and any(len(rows) > 2 for rows in drawn.values())
    assert sizes == {8}
    assert all(len(rows) == len(set(rows)) for rows in drawn.values()), drawn
    assert out.steps == 4


def test_packing_on_a_split_of_the_step_changes_nothing(tmp_path, tiny_model_dir):
    """As ``test_the_split_of_a_step_changes_nothing`` with packing on (the default): packing lays
    a run of completions of one prompt in one row, so a prompt trained twice in a round (two
    groups side by side) was one row of 8 in a micro-batch of 8 and two rows of 4 in micro-batches
    of 4, and the weights differed by 1.2e-8 (fp64)."""
    a = train(cfg(tiny_model_dir, tmp_path / "8x1", packing=True, max_steps=4))
    b = train(cfg(tiny_model_dir, tmp_path / "4x2", packing=True, max_steps=4, batch_size=4, grad_accum=2))
    assert max_abs_diff(weights(a.model_dir), weights(b.model_dir)) < 1e-12


def test_generation_throughput_counts_every_batch_drawn(tmp_path, tiny_model_dir, monkeypatch):
    """``generation_tokens_per_s`` × ``generation_s`` is the number of tokens generated in the
    round, over every batch drawn (``generation_s`` is their time too); it counted the trained
    completions' tokens alone, a fraction of those drawn in a round of several batches."""
    tokens: dict[int, int] = {}
    real = online_mod.OnlineSource._draw

    def draw(self, round_, batch, *args):
        d = real(self, round_, batch, *args)
        tokens[round_] = tokens.get(round_, 0) + sum(len(s.token_ids) for s in d.flat)
        return d

    monkeypatch.setattr(online_mod.OnlineSource, "_draw", draw)
    train(cfg(tiny_model_dir, tmp_path / "t"))
    rows = logged(tmp_path / "t")
    assert any(r["dynamic_sampling/batches"] > 1 for r in rows)
    assert [r["generation_tokens_per_s"] * r["generation_s"] for r in rows] == \
        pytest.approx([tokens[k] for k in range(3)], rel=1e-9)


def test_grpo_passk_keeps_the_groups_whose_best_answer_is_unique(tmp_path, tiny_model_dir, monkeypatch):
    """Pass@k gives a group an advantage only where its best reward is its own: a group whose rewards
    differ but whose best is tied (a binary reward: two or three answers with 1) trains nothing, so
    dynamic sampling keeps the groups with a unique best first, the round's with_spread counting
    those. The plain run shows such tied groups are drawn (the check could fail)."""
    binary = ["fn:tests.training.online_rewards:odd_letters"]

    def unique_best(g):
        top, second = sorted(g, reverse=True)[:2]
        return top > second

    rounds = trained_groups(monkeypatch)
    train(cfg(tiny_model_dir, tmp_path / "plain", method="grpo_passk", reward=binary, dynamic_sampling=False))
    assert any(max(g) > min(g) and not unique_best(g) for groups in rounds for g in groups)
    rounds.clear()
    train(cfg(tiny_model_dir, tmp_path / "dyn", method="grpo_passk", reward=binary))
    rows = logged(tmp_path / "dyn")
    assert len(rounds) == len(rows) == 3
    for groups, row in zip(rounds, rows, strict=True):
        assert row["dynamic_sampling/with_spread"] == sum(map(unique_best, groups)) / len(groups)
        kept = [unique_best(g) for g in groups]
        assert kept == sorted(kept, reverse=True)  # groups with a unique best first, the rest fill up
    assert any(r["dynamic_sampling/with_spread"] == 1.0 for r in rows)


def test_opo_keeps_the_groups_whose_rewards_differ(tmp_path, tiny_model_dir, monkeypatch):
    rounds = trained_groups(monkeypatch)
    train(cfg(tiny_model_dir, tmp_path / "opo", method="opo"))
    rows = logged(tmp_path / "opo")
    assert all(r["dynamic_sampling/with_spread"] == 1.0 for r in rows)
    assert all(max(g) > min(g) for groups in rounds for g in groups)
