"""Online training through the shared loop: GRPO and its variants and RLOO sample, score and learn
while training, and keep the loop's guarantees (the update does not depend on how the step is
split; an interrupted run resumes exactly; the same seed gives the same run)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from alignlab import train
from alignlab.errors import ConfigError, DataError, UserError
from alignlab.rewards.base import Scorer
from alignlab.training import checkpoint as ckpt
from alignlab.training.rollout import RewardError, RewardTerm, check_statistics, score_samples
from tests.training.helpers import base_config, crash_after_save, max_abs_diff, weights

DIGITS = "fn:tests.training.online_rewards:digits"


def online(model_dir, out, **overrides) -> dict:
    cfg = base_config(model_dir, "task:arithmetic", out, method="grpo", reward=[DIGITS], num_generations=4,
                      max_new_tokens=6, dtype="fp64", warmup_steps=0, lr=1e-2)
    cfg.update(overrides)
    return cfg


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_grpo_trains_and_logs_the_round(tmp_path, tiny_model_dir):
    summary = train(online(tiny_model_dir, tmp_path / "run", max_steps=2))
    rows = [m for m in metrics(tmp_path / "run") if "loss" in m]
    assert [m["step"] for m in rows] == [1, 2]
    for m in rows:
        # 8 completions of 2 prompts per step; the reward is their digit count, 0..6
        assert 0 <= m["reward"] <= 6 and m["reward_std"] >= 0
        assert m[f"reward/{DIGITS}"] == pytest.approx(m["reward"])
        assert 1 <= m["completion_length"] <= 6 and 0 <= m["truncated"] <= 1
        assert m["generation_s"] > 0 and m["training_s"] > 0 and m["generation_tokens_per_s"] > 0
        # the first (and only) update of a round is on-policy: every ratio is 1, nothing is clipped
        assert m["ratio/mean"] == pytest.approx(1.0, abs=1e-12)
        assert m["clip/low"] == 0 and m["clip/high"] == 0
    assert max_abs_diff(weights(summary.model_dir), weights(tiny_model_dir)) > 1e-4  # it learned something


def test_the_weights_push_counts_as_generation_time(tmp_path, tiny_model_dir, monkeypatch):
    """A generator whose weights take 0.4 s to arrive (Ray workers, a vLLM engine): the time is the
    round's generation_s, not its training_s."""
    import time

    import alignlab.training.online_run as online_run

    made = online_run.make_generator

    def slow_push(*args, **kwargs):
        generator = made(*args, **kwargs)
        push = generator.update_weights

        def update_weights(model):
            time.sleep(0.4)
            push(model)

        generator.update_weights = update_weights
        return generator

    monkeypatch.setattr(online_run, "make_generator", slow_push)
    train(online(tiny_model_dir, tmp_path / "run", max_steps=1))
    [m] = [m for m in metrics(tmp_path / "run") if "loss" in m]
    assert m["generation_s"] >= 0.4 and m["training_s"] < m["generation_s"]


@pytest.mark.parametrize("method,extra", [("grpo", {}), ("grpo", {"aggregation": "seq_mean_token_mean"}),
                                          ("dr_grpo", {}), ("grpo", {"scale_rewards": "batch"}), ("rloo", {}),
                                          ("gspo", {}), ("luspo", {}), ("cispo", {}), ("sapo", {}), ("vespo", {}),
                                          ("gmpo", {"updates_per_rollout": 2, "max_steps": 4}),
                                          ("grpo", {"delta": 1.3, "off_policy_mask": 0.01, "updates_per_rollout": 2,
                                                    "max_steps": 4}),
                                          # a random model's 6-token answers all hit the limit, which
                                          # DAPO masks by default: nothing would train
                                          ("dapo", {"mask_truncated": False}),
                                          ("remax", {}), ("opo", {"max_new_tokens": 40}), ("grpo_passk", {}), ("gpg", {}),
                                          ("reinforce++", {}),
                                          ("reinforce++", {"baseline": "group", "kl_coef": 0.0}),
                                          # DPPO's trust region bites from the second update of a round
                                          ("dppo", {}), ("dppo", {"surrogate": "dppo_kl", "eps_low": 0.05,
                                                                  "eps_high": 0.05, "updates_per_rollout": 2,
                                                                  "max_steps": 4}),
                                          # each token's baseline from the round's log-probs and Σπ²
                                          ("otb", {}), ("otb", {"updates_per_rollout": 2, "max_steps": 4,
                                                                "is_mode": "token_truncate"}),
                                          # the critic's weights are compared too
                                          ("ppo", {}), ("ppo", {"critic": "separate", "updates_per_rollout": 2,
                                                                "max_steps": 4})])
def test_the_update_does_not_depend_on_how_the_step_is_split(tmp_path, tiny_model_dir, method, extra):
    """Every online method (the registry's, each trained here); 8 completions per step as 8 × 1,
    1 × 8 and 2 × 4 (micro-batch × accumulation): the same
    samples, the same losses divided by the same global units, so the same weights after 2 steps
    (fp64; the second step samples from the first step's weights, so it checks those too). Padded
    rows: packing shares a prompt only within a micro-batch, and Llama's fp32 RMSNorm makes a
    shared prompt's gradient differ from per-row ones by fp32 rounding
    (``test_online_packing.py`` checks packed against padded)."""
    runs = []
    for bs, ga in ((8, 1), (1, 8), (2, 4)):
        out = tmp_path / f"{bs}x{ga}"
        runs.append(train(online(tiny_model_dir, out, method=method, batch_size=bs, grad_accum=ga, packing=False,
                                  **extra)))
    a, b, c = (weights(r.model_dir) for r in runs)
    assert max_abs_diff(a, b) < 1e-9 and max_abs_diff(a, c) < 1e-9
    start = weights(tiny_model_dir)
    assert max_abs_diff({k: a[k] for k in start}, start) > 1e-4
    if method == "gmpo":  # the second update of a round clips tokens on both sides (measured: 0.17 and 0.29)
        rows = [m for m in metrics(tmp_path / "8x1") if "loss" in m]
        assert max(m["clip/high"] for m in rows) > 0.05 and max(m["clip/low"] for m in rows) > 0.05


def test_a_per_micro_batch_normaliser_would_change_the_update(tmp_path, tiny_model_dir, monkeypatch):
    """The check above can fail: dividing each micro-batch by its own token count (TRL's 'bnpo')
    gives 8 × 1 and 1 × 8 different weights."""
    from alignlab.training.forward.policy_gradient import PolicyGradientForward

    real = PolicyGradientForward.__call__

    def local_mean(self, model, batch):
        out = real(self, model, batch)
        out.losses = out.losses / max(batch.num_loss_tokens, 1)
        return out

    monkeypatch.setattr(PolicyGradientForward, "__call__", local_mean)
    a = train(online(tiny_model_dir, tmp_path / "a", batch_size=8, grad_accum=1, max_steps=1))
    b = train(online(tiny_model_dir, tmp_path / "b", batch_size=1, grad_accum=8, max_steps=1))
    assert max_abs_diff(weights(a.model_dir), weights(b.model_dir)) > 1e-6


@pytest.mark.parametrize("updates,crash_at,method", [(1, 2, "grpo"), (2, 1, "grpo"), (2, 3, "grpo"),
                                                    (2, 1, "ppo"), (1, 2, "reinforce++"), (2, 1, "otb")])
def test_an_interrupted_run_resumes_exactly(tmp_path, tiny_model_dir, updates, crash_at, method):
    """Killed after the checkpoint of step ``crash_at`` and resumed: the same weights and the same
    per-step metrics as an uninterrupted run (with 2 updates per round, steps 1 and 3 end inside a
    round, whose completions the checkpoint holds). PPO's critic (weights, optimizer state, the
    round's values and returns) resumes with the policy: its weights are compared too."""
    cfg = dict(max_steps=4, save_every=1, keep_checkpoints=0, updates_per_rollout=updates, method=method)
    full = train(online(tiny_model_dir, tmp_path / "full", **cfg))
    with crash_after_save(lambda step: step == crash_at):
        train(online(tiny_model_dir, tmp_path / "cut", **cfg))
    state = ckpt.read_state(ckpt.list_checkpoints(tmp_path / "cut" / "checkpoints")[0])  # the newest
    assert state["step"] == crash_at and ("rollout" in state["data_position"]) == bool(crash_at % updates)
    resumed = train(online(tiny_model_dir, tmp_path / "cut", resume=True, **cfg))
    assert max_abs_diff(weights(full.model_dir), weights(resumed.model_dir)) == 0

    def per_step(out):
        keep = ("loss", "reward", "grad_norm", "ratio/mean", "completion_length", "value_loss")
        return {m["step"]: [m.get(k) for k in keep] for m in metrics(out) if "loss" in m}

    assert per_step(tmp_path / "cut") == per_step(tmp_path / "full")
    if updates > 1:  # the second update of a round is off-policy: ratios move away from 1
        assert any(abs(m["ratio/mean"] - 1) > 1e-9 for m in metrics(tmp_path / "full") if m.get("step") == 2)


def test_the_same_seed_gives_the_same_run_and_another_seed_another(tmp_path, tiny_model_dir):
    a = train(online(tiny_model_dir, tmp_path / "a"))
    b = train(online(tiny_model_dir, tmp_path / "b"))
    c = train(online(tiny_model_dir, tmp_path / "c", seed=1))
    assert max_abs_diff(weights(a.model_dir), weights(b.model_dir)) == 0
    assert max_abs_diff(weights(a.model_dir), weights(c.model_dir)) > 1e-6


def test_kl_to_the_reference_is_logged_when_beta_is_set(tmp_path, tiny_model_dir):
    train(online(tiny_model_dir, tmp_path / "kl", beta=0.1))
    rows = [m for m in metrics(tmp_path / "kl") if "loss" in m]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-12)  # the policy is the reference at step 1
    assert rows[1]["kl"] > 0


class _Scorer(Scorer):
    def __init__(self, fn):
        self.fn = fn

    def score(self, prompts, responses):
        return self.fn(prompts, responses)


def test_reward_faults_name_the_reward_the_prompt_and_the_sample():
    where = ["prompt row 4, sample 1", "prompt row 4, sample 2", "prompt row 9, sample 1"]
    prompts, responses = ["a", "a", "b"], ["ok", "xx", "ok"]

    def term(fn):
        return [RewardTerm("mine", _Scorer(fn))]

    def raising(ps, rs):
        if any("x" in r for r in rs):
            raise ValueError("bad response")
        return [1.0] * len(rs)

    with pytest.raises(RewardError, match=r"^reward 'mine': prompt row 4, sample 2: raised ValueError: bad response$"):
        score_samples(term(raising), prompts, responses, where, [2, 2, 2])
    with pytest.raises(RewardError, match=r"^reward 'mine': prompt row 9, sample 1: returned nan, not a finite number$"):
        score_samples(term(lambda ps, rs: [1.0, 2.0, float("nan")]), prompts, responses, where, [2, 2, 2])
    with pytest.raises(RewardError, match=r"prompt row 4, sample 1: returned 'high', not a number"):
        score_samples(term(lambda ps, rs: ["high", 1, 2]), prompts, responses, where, [2, 2, 2])
    with pytest.raises(RewardError, match=r"returned 2 values for 3 responses \(the 3 samples prompt row 4, "
                                          r"sample 1, …, prompt row 9, sample 1\)"):
        score_samples(term(lambda ps, rs: [1.0, 2.0]), prompts, responses, where, [2, 2, 2])
    from alignlab.rewards import FunctionReward

    # a function's own check, as the sample at fault met it alone (not "raised UserError: ... item 0")
    texts = [RewardTerm("fn", FunctionReward(lambda p, r: "1.0" if "x" in r else 1.0, name="f"))]
    with pytest.raises(RewardError, match=r"^reward 'fn': prompt row 4, sample 2: reward function f: returned '1.0', "
                                          r"not a number$"):
        score_samples(texts, prompts, responses, where, [2, 2, 2])

    def batch_only(ps, rs):
        if len(rs) > 1:
            raise RuntimeError("only in a batch")
        return [1.0]

    with pytest.raises(RewardError, match=r"^reward 'mine': the 3 samples prompt row 4, sample 1, …, prompt row 9, "
                                          r"sample 1, each alone scoring: raised RuntimeError: only in a batch$"):
        score_samples(term(batch_only), prompts, responses, where, [2, 2, 2])
    total, parts = score_samples([RewardTerm("a", _Scorer(lambda ps, rs: [1.0, 2.0, 3.0]), 2.0),
                                  RewardTerm("b", _Scorer(lambda ps, rs: [0.5, 0.5, 0.5]), -1.0)],
                                 prompts, responses, where, [2, 2, 2])
    assert total.tolist() == [1.5, 3.5, 5.5] and parts["b"].tolist() == [0.5, 0.5, 0.5]


def test_rewards_too_large_for_the_rounds_arithmetic_are_reward_faults():
    """Finite values whose weighted sum or squares leave float64 (largest 1.797e308): 2 × 1e308 is
    inf, which the advantages turned into a NaN loss blamed on the learning rate; 1e300 squared is
    1e600, on which the round's reward std stopped the run with a bare OverflowError. 1e100 (its
    deviations squared and summed: at most 3 · (2e100)² = 1.2e201) is a reward like any other."""
    where = ["prompt row 4, sample 1", "prompt row 4, sample 2", "prompt row 9, sample 1"]
    prompts, responses = ["a", "a", "b"], ["ok", "xx", "ok"]
    with pytest.raises(RewardError, match=r"^reward: prompt row 4, sample 2: the weighted sum of the rewards "
                                          r"overflows \(inf\); rescale the rewards or their weights$"):
        score_samples([RewardTerm("a", _Scorer(lambda ps, rs: [1.0, 1e308, 1.0]), 2.0)], prompts, responses,
                      where, [2, 2, 2])
    with pytest.raises(RewardError, match=r"^reward: the 3 samples prompt row 4, sample 1, …, prompt row 9, sample 1: rewards as "
                                          r"large as 1e\+300 overflow the round's statistics \(their squared "
                                          r"differences leave float64's range\); rescale the rewards$"):
        check_statistics(torch.tensor([1e300, -1e300, 0.0], dtype=torch.float64), where)
    check_statistics(torch.tensor([1e100, -1e100, 0.0], dtype=torch.float64), where)


def test_a_reward_too_large_for_the_rounds_arithmetic_stops_the_run_in_one_line(tmp_path, tiny_model_dir):
    with pytest.raises(RewardError, match=r"^reward: the \d+ samples prompt row 1, sample 1, …, prompt row \d+, sample 4: rewards "
                                          r"as large as \S+ overflow the round's statistics"):
        train(online(tiny_model_dir, tmp_path / "run", reward=["fn:tests.training.online_rewards:astronomical"]))


def test_advantages_beyond_the_losss_precision_are_reward_faults():
    """float32 holds magnitudes up to 3.4028e38, bfloat16 up to 3.3895e38 and float16 up to 65504
    (IEEE 754 / the bfloat16 format's largest finite values); float64 holds 1e100."""
    from alignlab.training.rollout import check_range

    check_range(3.4e38, torch.float32, "advantages")
    check_range(1e100, torch.float64, "advantages")
    check_range(65504.0, torch.float16, "advantages")
    with pytest.raises(RewardError, match=r"^reward: this round's advantages reach 3\.5e\+38, beyond what the "
                                          r"loss's float32 holds \(3\.403e\+38\); rescale the rewards$"):
        check_range(3.5e38, torch.float32, "advantages")
    with pytest.raises(RewardError, match=r"^reward: this round's value targets reach 3\.39e\+38, beyond what the "
                                          r"loss's bfloat16 holds \(3\.39e\+38\)"):
        check_range(3.3899e38, torch.bfloat16, "value targets")
    with pytest.raises(RewardError, match=r"float16 holds \(6\.55e\+04\)"):
        check_range(65520.0, torch.float16, "advantages")


@pytest.mark.parametrize("method,what", [("rloo", "advantages"), ("ppo", "value targets")])
def test_rewards_whose_advantages_overflow_fp32_stop_the_run_naming_them(tmp_path, tiny_model_dir, method, what):
    """Rewards of 1e100 × (1 + length) in fp32: rloo's advantage (a reward minus the others' mean)
    is of that size, as are PPO's value targets (its returns; the whitened advantages are not), so
    both stop before the loss turns them into a NaN blamed on the learning rate. GRPO divides by
    the group's std, so its advantages stay within ±sqrt(G-1) = ±1.73 and the run trains."""
    reward = ["fn:tests.training.online_rewards:huge"]
    with pytest.raises(RewardError, match=rf"^reward: this round's {what} reach \S+e\+10\d, beyond what the "
                                          r"loss's float32 holds"):
        train(online(tiny_model_dir, tmp_path / method, method=method, reward=reward, dtype="fp32", max_steps=1))
    summary = train(online(tiny_model_dir, tmp_path / "grpo", reward=reward, dtype="fp32", max_steps=1))
    assert summary.steps == 1 and math.isfinite(summary.train_metrics["loss"])


def test_a_failing_reward_stops_the_run_keeping_the_last_checkpoint(tmp_path, tiny_model_dir):
    with pytest.raises(RewardError, match=r"reward 'fn:tests.training.online_rewards:nan_on_x': prompt row \d+, "
                                          r"sample \d+: reward function \S+: returned nan, not a "):
        # 'x' is one of ~260 byte tokens: within 40 steps of 8 six-token samples one surely shows up
        train(online(tiny_model_dir, tmp_path / "nan", max_steps=40, save_every=1,
                     reward=["fn:tests.training.online_rewards:nan_on_x"]))
    assert ckpt.list_checkpoints(tmp_path / "nan" / "checkpoints")  # the steps before it were kept


def test_bad_online_setups_are_one_line_errors(tmp_path, tiny_model_dir):
    with pytest.raises(UserError, match="unknown task 'arithmatic'.*did you mean 'arithmetic'"):
        train(online(tiny_model_dir, tmp_path / "a", data="task:arithmatic"))
    with pytest.raises(UserError, match="scorer 'nope:x': unknown kind 'nope'"):
        train(online(tiny_model_dir, tmp_path / "b", reward=["nope:x"]))
    with pytest.raises(UserError, match="must be a multiple of num_generations"):
        train(online(tiny_model_dir, tmp_path / "c", batch_size=6, num_generations=4))
    long_prompts = tmp_path / "long.jsonl"
    long_prompts.write_text(json.dumps({"prompt": "1+1="}) + "\n" + json.dumps({"prompt": "9" * 2100}) + "\n")
    with pytest.raises(DataError, match=r"long.jsonl, row 2, field 'prompt': 2100 tokens \+ max_new_tokens 6 exceed "
                                        r"max_length \(128 tokens\)"):
        train(online(tiny_model_dir, tmp_path / "d", data=str(long_prompts)))


def test_with_skip_nonfinite_a_failing_reward_skips_the_step(tmp_path, tiny_model_dir):
    summary = train(online(tiny_model_dir, tmp_path / "skip", max_steps=40, skip_nonfinite=True,
                           reward=["fn:tests.training.online_rewards:nan_on_x"]))
    skipped = [m for m in metrics(tmp_path / "skip") if m.get("skipped")]
    assert skipped and summary.train_metrics["skipped_steps"] == len(skipped)
    assert len([m for m in metrics(tmp_path / "skip") if "loss" in m]) == 40 - len(skipped)


def test_a_round_whose_reward_failed_is_not_resumed_from_the_round_before(tmp_path, tiny_model_dir, monkeypatch):
    """2 updates per round, skip_nonfinite: round 1's reward fails (a RewardError where the round's
    rewards are gathered), so steps 3 and 4 both try round 1 and are skipped. A run killed after
    the checkpoint of step 3 (inside round 1) must skip step 4 too when resumed, not train it on
    round 0's completions, which the source still held when the reward failed."""
    import alignlab.training.online as online_source

    collect, score = online_source.OnlineSource._collect, online_source.score_samples
    scoring: list[int] = []  # the round being scored

    def remember_the_round(self, round_):
        scoring[:] = [round_]
        collect(self, round_)

    def round_1_fails(*args):
        if scoring == [1]:
            raise RewardError("reward 'r': prompt row 1, sample 1: raised ValueError: round 1")
        return score(*args)

    monkeypatch.setattr(online_source.OnlineSource, "_collect", remember_the_round)
    monkeypatch.setattr(online_source, "score_samples", round_1_fails)
    cfg = dict(max_steps=6, save_every=1, keep_checkpoints=0, updates_per_rollout=2, skip_nonfinite=True)
    full = train(online(tiny_model_dir, tmp_path / "full", **cfg))
    assert [m["step"] for m in metrics(tmp_path / "full") if m.get("skipped")] == [3, 4]
    with crash_after_save(lambda step: step == 3):
        train(online(tiny_model_dir, tmp_path / "cut", **cfg))
    resumed = train(online(tiny_model_dir, tmp_path / "cut", resume=True, **cfg))
    assert [m["step"] for m in metrics(tmp_path / "cut") if m.get("skipped")] == [3, 4]
    assert max_abs_diff(weights(full.model_dir), weights(resumed.model_dir)) == 0


def test_dapo_masks_completions_cut_at_the_limit(tmp_path, tiny_model_dir, capsys):
    """A random model's 6-token answers all hit the limit: DAPO (mask_truncated) gives them no loss
    and no units, so nothing moves, the step says so, and the means over the loss's completions
    (ratio, clip shares, advantages) are not logged as 0; with the mask off the same run trains,
    its ratio exactly 1 (one update per round)."""
    masked = train(online(tiny_model_dir, tmp_path / "masked", method="dapo", max_steps=1))
    rows = [m for m in metrics(tmp_path / "masked") if "loss" in m]
    assert rows[0]["truncated"] == 1.0 and rows[0]["loss"] == 0.0
    assert not {"ratio/mean", "clip/low", "clip/high", "advantages"} & set(rows[0])
    assert "step 1: no token is in the loss (mask_truncated leaves out every completion" in capsys.readouterr().err
    assert max_abs_diff(weights(masked.model_dir), weights(tiny_model_dir)) < 1e-12  # fp64 save of fp32 weights
    unmasked = train(online(tiny_model_dir, tmp_path / "unmasked", method="dapo", max_steps=1, mask_truncated=False))
    assert max_abs_diff(weights(unmasked.model_dir), weights(tiny_model_dir)) > 1e-4
    assert [m["ratio/mean"] for m in metrics(tmp_path / "unmasked") if "loss" in m] == [1.0]
    assert "no token is in the loss" not in capsys.readouterr().err


def test_ppo_saves_its_critic_beside_the_policy_and_learns_values(tmp_path, tiny_model_dir):
    """The policy directory holds the policy alone (it loads as a plain causal LM); the critic is in
    ``value_model/``: a shared head's weights, or a separate critic as a reward-model directory.
    The shared head starts at zero and training moves it off zero; the first update of a round has
    values equal to the round's, so no value is clipped."""
    from alignlab.models import load_model
    from alignlab.rewards.model import load_reward_model

    shared = train(online(tiny_model_dir, tmp_path / "shared", method="ppo", max_steps=3))
    assert set(weights(shared.model_dir)) - set(weights(tiny_model_dir)) == {"value_model/weight", "value_model/bias"}
    assert not any("value" in k for k in load_file(tmp_path / "shared" / "model" / "model.safetensors"))
    load_model(shared.model_dir)
    head = load_file(tmp_path / "shared" / "model" / "value_model" / "value_head.safetensors")
    assert head["weight"].abs().max() > 0
    rows = [m for m in metrics(tmp_path / "shared") if "loss" in m]
    assert rows[0]["value/clip"] == 0 and all(m["value_loss"] > 0 for m in rows)

    train(online(tiny_model_dir, tmp_path / "separate", method="ppo", critic="separate", max_steps=2))
    critic = load_reward_model(tmp_path / "separate" / "model" / "value_model")
    assert critic.settings.dim == 1 and critic.head.weight.abs().max() > 0


def test_remax_logs_the_greedy_baseline(tmp_path, tiny_model_dir):
    """ReMax samples one greedy answer per prompt each round; its mean reward is logged, and the
    advantages are the samples' rewards minus it (their mean over the round's tokens is then the
    token-weighted mean reward minus the greedy mean: every answer here is 6 tokens, so the plain
    means)."""
    train(online(tiny_model_dir, tmp_path / "remax", method="remax"))
    for m in (m for m in metrics(tmp_path / "remax") if "loss" in m):
        assert 0 <= m["reward/greedy"] <= 6
        if m["truncated"] == 1:  # every completion has 6 tokens
            assert m["advantage/mean"] == pytest.approx(m["reward"] - m["reward/greedy"], abs=1e-12)


def test_a_critic_that_cannot_be_built_is_a_one_line_error(tmp_path, tiny_model_dir):
    with pytest.raises(UserError, match="critic: '.*nowhere' is neither"):
        train(online(tiny_model_dir, tmp_path / "bad", method="ppo", critic=str(tmp_path / "nowhere")))


def test_a_gpt2_policy_gets_a_separate_critic_and_a_last_token_reward_model(tmp_path):
    """GPT-2's causal LM class is saved as ``GPT2LMHeadModel``, not ``...ForCausalLM``: it is a
    causal LM all the same, so PPO's separate critic is built on it (it was refused as "not a causal
    LM") and a reward model on it pools its last token, as on any decoder (it pooled the mean)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from alignlab.models import build_tiny_tokenizer, save_pretrained
    from alignlab.rewards.model import load_reward_model, new_reward_model

    tok = build_tiny_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=256,
                                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                       eos_token_id=tok.eos_token_id))
    save_pretrained(model, tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    assert new_reward_model(str(tmp_path / "gpt2"), "bt", 1, "auto", False, False, 1.0).settings.pool == "last"
    train(online(tmp_path / "gpt2", tmp_path / "separate", method="ppo", critic="separate", max_steps=2))
    critic = load_reward_model(tmp_path / "separate" / "model" / "value_model")
    assert critic.settings.causal and critic.settings.pool == "last" and critic.head.weight.abs().max() > 0


def test_a_run_whose_every_step_was_skipped_says_so(tmp_path, tiny_model_dir, capsys):
    """A reward that is NaN for every answer, with skip_nonfinite: every step is skipped, the saved
    model is the starting one, and the run ends with one warning line saying so (it exited 0 with
    nothing but the per-step lines). A run with some steps applied prints no such line."""
    summary = train(online(tiny_model_dir, tmp_path / "all", max_steps=3, skip_nonfinite=True,
                           reward=["fn:tests.training.online_rewards:always_nan"]))
    assert summary.train_metrics["skipped_steps"] == 3
    assert max_abs_diff(weights(summary.model_dir), weights(tiny_model_dir)) == 0
    err = capsys.readouterr().err
    assert "warning: every step of the run (3) was skipped (skip_nonfinite), so the model saved is the one it " \
           "started from" in err
    train(online(tiny_model_dir, tmp_path / "some", max_steps=3, skip_nonfinite=True))
    assert "warning: every step" not in capsys.readouterr().err


def recorded_rounds(monkeypatch) -> list[list[list[tuple[float, int, float]]]]:
    """Per round, per group (G consecutive completions): (reward, tokens, advantage) of each sample."""
    import alignlab.training.online as online_mod

    rounds: list = []
    real = online_mod.OnlineSource._collect

    def collect(self, round_):
        real(self, round_)
        done = [(e.reward, len(e.completion_ids), e.advantages[0]) for e in self._examples]
        assert all(set(e.advantages) == {e.advantages[0]} for e in self._examples)  # one per sequence
        rounds.append([done[i:i + self.G] for i in range(0, len(done), self.G)])

    monkeypatch.setattr(online_mod.OnlineSource, "_collect", collect)
    return rounds


def test_opo_trains_with_the_length_weighted_baseline(tmp_path, tiny_model_dir, monkeypatch):
    """Each completion's advantage is its reward minus Σ|y|·r/Σ|y| over its group (written out here),
    with lengths that differ within some group (the random model stops early at times: 40 tokens at most); so the
    advantages, weighted by their tokens, sum to 0 over each group and the logged token mean
    ``advantage/mean`` is 0, where the group mean baseline (Dr. GRPO) would not give 0."""
    rounds = recorded_rounds(monkeypatch)
    summary = train(online(tiny_model_dir, tmp_path / "opo", method="opo", max_new_tokens=40, max_steps=3))
    assert len(rounds) == 3
    unequal = False
    for group in (g for groups in rounds for g in groups):
        baseline = sum(n * r for r, n, _ in group) / sum(n for _, n, _ in group)
        assert [a for _, _, a in group] == pytest.approx([r - baseline for r, _, _ in group], abs=1e-12)
        unequal |= len({n for _, n, _ in group}) > 1 and len({r for r, _, _ in group}) > 1
    assert unequal
    rows = [m for m in metrics(tmp_path / "opo") if "loss" in m]
    assert all(m["advantage/mean"] == pytest.approx(0.0, abs=1e-12) for m in rows)
    assert max_abs_diff(weights(summary.model_dir), weights(tiny_model_dir)) > 1e-4


def test_grpo_passk_gives_only_each_groups_best_sample_an_advantage(tmp_path, tiny_model_dir, monkeypatch):
    """Each group's advantages are 0 but for its unique best sample, whose advantage is its margin
    over the second best divided by the group's unbiased std + 1e-6 (written out here); with a
    binary reward (has the answer a digit) groups with two or more right answers tie at the top
    and train nothing, and the logged share of zero-advantage tokens is at least (G − 1)/G."""
    rounds = recorded_rounds(monkeypatch)
    train(online(tiny_model_dir, tmp_path / "pk", method="grpo_passk", max_steps=4,
                 reward=["fn:tests.training.online_rewards:has_digit"]))
    winners = ties = 0
    for group in (g for groups in rounds for g in groups):
        rewards = [r for r, _, _ in group]
        top, second = sorted(rewards, reverse=True)[:2]
        mean = sum(rewards) / len(rewards)
        std = (sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1)) ** 0.5
        expected = [(top - second) / (std + 1e-6) if r == top and top > second else 0.0 for r in rewards]
        assert [a for _, _, a in group] == pytest.approx(expected, abs=1e-12)
        winners += top > second
        ties += top == second and std > 0
    assert winners and ties
    rows = [m for m in metrics(tmp_path / "pk") if "loss" in m]
    assert all(m["advantage/zero"] >= 0.75 for m in rows)


def test_a_resume_on_changed_prompts_of_the_same_number_is_refused(tmp_path, tiny_model_dir):
    """A prompt's text edited after the checkpoint of step 1 (as many prompts): refused in one line,
    where the run would go on sampling other prompts than the checkpoint's run."""
    data = tmp_path / "prompts.jsonl"
    texts = ["1+2=", "3+4=", "5+6=", "7+8="]
    data.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    cfg = online(tiny_model_dir, tmp_path / "cut", data=str(data), max_steps=2, save_every=1)
    with crash_after_save(lambda step: step == 1):
        train(cfg)
    data.write_text("".join(json.dumps({"prompt": t.replace("5+6", "5+9")}) + "\n" for t in texts))
    with pytest.raises(ConfigError) as e:
        train({**cfg, "resume": True})
    assert str(e.value).startswith("resume: checkpoint step-00000001 was written from other data") \
        and "\n" not in str(e.value)
