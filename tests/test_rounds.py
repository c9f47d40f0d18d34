"""Rounds (``alignlab.rounds``): sample from the current policy, score, convert, train, repeat;
everything kept under the run folder, and a run killed anywhere resumes to the same weights."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import yaml

from alignlab import train
from alignlab.cli import main
from alignlab.errors import ConfigError, DataError
from alignlab.models import TinyModelConfig, save_tiny_model
from tests.training.helpers import Crash, crash_after_save, max_abs_diff, weights

DIGITS = "fn:tests.training.online_rewards:digits"
PROMPTS = [f"Write a number for item {i}:" for i in range(1, 9)]


@pytest.fixture
def prompt_file(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def rounds_config(model_dir, data, out, **overrides) -> dict:
    cfg = {"method": "dpo", "model": str(model_dir), "data": str(data), "output_dir": str(out), "rounds": 2,
           "reward": [DIGITS], "num_generations": 4, "round_prompts": 4, "max_new_tokens": 6,
           "generation_batch_size": 8, "max_steps": 2, "batch_size": 2, "lr": 1e-3, "dtype": "fp64",
           "progress": False, "seed": 0, "warmup_steps": 0, "max_length": 64}
    cfg.update(overrides)
    if cfg["method"] is None:  # a recipe's own
        cfg.pop("method")
    return cfg


def digit_count(text: str) -> int:
    """What the ``digits`` reward counts: ASCII digits (not, say, '٠')."""
    return sum(ch in "0123456789" for ch in text)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_two_rounds_of_iterative_dpo(tmp_path, tiny_model_dir, prompt_file):
    """Round 1 samples prompts 1-4 from the starting model, round 2 prompts 5-8 from round 1's
    model; each round's pairs are its samples' first best against first worst by the digit count
    (recomputed here from the samples), ties dropped; round 2's reference is the starting model."""
    out = tmp_path / "run"
    summary = train(rounds_config(tiny_model_dir, prompt_file, out, recipe="iterative-dpo"))
    records = jsonl(out / "rounds.jsonl")
    assert [r["round"] for r in records] == [1, 2]
    assert records[0]["start_model"] == str(tiny_model_dir)
    assert records[1]["start_model"] == records[0]["model"] == str(out / "round-1" / "train" / "model")
    assert summary.model_dir == str(out / "round-2" / "train" / "model") and summary.output_dir == str(out)
    # the steps of both rounds (max_steps 2 each), not the last round's
    assert [json.loads((out / f"round-{r}" / "train" / "summary.json").read_text())["steps"] for r in (1, 2)] == [2, 2]
    assert summary.steps == 4
    for r, prompts in ((1, PROMPTS[:4]), (2, PROMPTS[4:])):
        folder = out / f"round-{r}"
        assert [row["prompt"] for row in jsonl(folder / "prompts.jsonl")] == prompts
        samples = jsonl(folder / "samples.jsonl")
        assert [row["prompt"] for row in samples] == prompts and all(len(row["samples"]) == 4 for row in samples)
        want, ties = [], 0
        for row in samples:
            scores = [digit_count(c) for c in row["completions"]]
            if len(set(scores)) < 2:
                ties += 1
                continue
            best, worst = scores.index(max(scores)), scores.index(min(scores))
            want.append({"prompt": row["prompt"], "chosen": row["completions"][best],
                         "rejected": row["completions"][worst]})
        got = [{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in jsonl(folder / "data.jsonl")]
        assert got == want and len(got) >= 1
        record = json.loads((folder / "round.json").read_text())
        assert record["data"] == {"examples": len(want), "dropped": {"lists whose scores all tie": ties} if ties else {}}
        flat = [digit_count(c) for row in samples for c in row["completions"]]
        assert record["reward"] == pytest.approx(sum(flat) / len(flat), abs=1e-12)
        run = yaml.safe_load((folder / "train" / "run.yaml").read_text())
        assert run["model"] == record["start_model"] and run["data"] == str(folder / "data.jsonl")
        assert run["reference_model"] == (None if r == 1 else str(tiny_model_dir))
    assert max_abs_diff(weights(summary.model_dir), weights(records[0]["model"])) > 1e-6


def test_round_reference_previous_uses_the_rounds_starting_policy(tmp_path, tiny_model_dir, prompt_file):
    out = tmp_path / "run"
    train(rounds_config(tiny_model_dir, prompt_file, out, round_reference="previous", rounds=2))
    assert yaml.safe_load((out / "round-2" / "train" / "run.yaml").read_text())["reference_model"] is None


def test_raft_trains_on_the_best_samples_that_reach_min_score(tmp_path, tiny_model_dir, prompt_file):
    """recipe raft: an SFT method on each prompt's 2 best samples (ties in the order drawn),
    those with fewer than 1 digit left out and counted."""
    out = tmp_path / "run"
    train(rounds_config(tiny_model_dir, prompt_file, out, recipe="raft", method=None, rounds=1, round_prompts=8,
                        keep_top=2, min_score=1.0))
    assert yaml.safe_load((out / "rounds.yaml").read_text())["method"] == "sft"
    samples = jsonl(out / "round-1" / "samples.jsonl")
    want, low = [], 0
    for row in samples:
        ranked = sorted(row["completions"], key=digit_count, reverse=True)[:2]  # sorted() is stable
        want += [{"prompt": row["prompt"], "completion": c} for c in ranked if digit_count(c) >= 1]
        low += sum(digit_count(c) < 1 for c in ranked)
    got = [{k: row[k] for k in ("prompt", "completion")} for row in jsonl(out / "round-1" / "data.jsonl")]
    assert got == want and 0 < len(got) < 16
    assert json.loads((out / "round-1" / "round.json").read_text())["data"]["dropped"] == (
        {"responses scored below 1": low} if low else {})


def test_a_round_killed_in_training_resumes_to_the_same_weights(tmp_path, tiny_model_dir, prompt_file, monkeypatch):
    """Killed after round 2's first checkpoint, then resumed with the folder written another way:
    round 1 is not redone (its folder is untouched) and the final weights equal an uninterrupted
    run's exactly."""
    extra = dict(save_every=1, keep_checkpoints=0)
    full = train(rounds_config(tiny_model_dir, prompt_file, tmp_path / "full", **extra))
    calls = []

    def third(step):  # round 1 saves steps 1 and 2; the third save is round 2's step 1
        calls.append(step)
        return len(calls) == 3

    with crash_after_save(third):
        train(rounds_config(tiny_model_dir, prompt_file, tmp_path / "cut", **extra))
    cut = tmp_path / "cut"
    assert (cut / "round-1" / "round.json").exists() and not (cut / "round-2" / "round.json").exists()
    stamp = (cut / "round-1" / "round.json").stat().st_mtime_ns
    # the round's data is kept, not scored again (a judge asked again may answer otherwise)
    import alignlab.rounds as rounds_mod

    def no_scoring(*args, **kwargs):
        raise AssertionError("scored again")

    (tmp_path / "x").mkdir()  # resumed through another spelling of the same folder
    with monkeypatch.context() as m:
        m.setattr(rounds_mod, "_score", no_scoring)
        resumed = train(rounds_config(tiny_model_dir, prompt_file, tmp_path / "x" / ".." / "cut", resume=True,
                                      **extra))
    assert (cut / "round-1" / "round.json").stat().st_mtime_ns == stamp
    assert max_abs_diff(weights(full.model_dir), weights(resumed.model_dir)) == 0
    assert len(jsonl(cut / "rounds.jsonl")) == 2


def test_a_round_killed_while_sampling_resumes_to_the_same_samples_and_weights(tmp_path, tiny_model_dir,
                                                                              prompt_file, monkeypatch):
    """Killed right after round 2 wrote the first of its two chunks of samples (chunks of 2
    prompts: 8 sequences at once, 4 per prompt; the file is synced a chunk at a time), then
    resumed: it samples the rest and ends with the same samples and weights."""
    import alignlab.sample_cli as sample_cli

    full = train(rounds_config(tiny_model_dir, prompt_file, tmp_path / "full"))
    real_fsync, synced = sample_cli.os.fsync, []

    def fsync_then_crash(fd):
        real_fsync(fd)
        if os.readlink(f"/proc/self/fd/{fd}").endswith("samples.jsonl"):  # not a checkpoint's files
            synced.append(fd)
            if len(synced) == 3:  # round 1 synced its 2 chunks; this is round 2's first
                raise Crash

    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        m.setattr(sample_cli.os, "fsync", fsync_then_crash)
        with pytest.raises(Crash):
            train(rounds_config(tiny_model_dir, prompt_file, cut))
    assert len(jsonl(cut / "round-2" / "samples.jsonl")) == 2 and not (cut / "round-2" / "train").exists()
    resumed = train(rounds_config(tiny_model_dir, prompt_file, cut, resume=True))
    assert (cut / "round-2" / "samples.jsonl").read_text() == (tmp_path / "full" / "round-2" / "samples.jsonl").read_text()
    assert max_abs_diff(weights(full.model_dir), weights(resumed.model_dir)) == 0


def test_a_run_folder_with_rounds_is_not_mixed_with_another(tmp_path, tiny_model_dir, prompt_file):
    """Another run of rounds, a training run, and an overwrite that would delete the model the
    rounds start from are refused; resume with other settings too."""
    out = tmp_path / "run"
    trained = tmp_path / "plain"
    (trained / "run.yaml").parent.mkdir()
    (trained / "run.yaml").write_text("method: dpo\n")
    with pytest.raises(ConfigError, match="holds a training run"):
        train(rounds_config(tiny_model_dir, prompt_file, trained, rounds=1))
    train(rounds_config(tiny_model_dir, prompt_file, out, rounds=1, round_prompts=2))
    with pytest.raises(ConfigError, match="already holds rounds; pass resume"):
        train(rounds_config(tiny_model_dir, prompt_file, out, rounds=1, round_prompts=2))
    with pytest.raises(ConfigError, match=r"other settings \(differs in .*round_prompts"):
        train(rounds_config(tiny_model_dir, prompt_file, out, rounds=1, round_prompts=3, resume=True))
    (out / "round-backup").mkdir()  # the user's own, beside the rounds: overwrite leaves them
    (out / "round-backup" / "keep.txt").write_text("mine")
    (out / "round-notes.txt").write_text("mine too")
    train(rounds_config(tiny_model_dir, prompt_file, out, rounds=1, round_prompts=3, overwrite=True))
    assert len(jsonl(out / "round-1" / "prompts.jsonl")) == 3
    assert (out / "round-backup" / "keep.txt").read_text() == "mine"
    assert (out / "round-notes.txt").read_text() == "mine too"
    inside = str(out / "round-1" / "train" / "model")
    with pytest.raises(ConfigError, match="overwrite: the model .* lies inside output_dir"):
        train(rounds_config(inside, prompt_file, out, rounds=1, round_prompts=3, overwrite=True))


@pytest.mark.parametrize("overrides,message", [
    ({"method": "grpo"}, "rounds: rounds train an offline method on their samples"),
    ({"method": "dpo", "recipe": "raft"}, "recipe: raft fine-tunes on the best samples with an SFT method"),
    ({"method": "sft", "recipe": "iterative-dpo"}, "recipe: iterative-dpo trains a pair method"),
    ({"rounds": 0, "recipe": "raft", "reward": []}, "recipe: a recipe runs rounds"),
    ({"round_reference": "initial"}, "round_reference: must be fixed or previous"),
    ({"keep_top": 0}, "keep_top: must be >= 1"),
    ({"pair_rule": "best"}, "pair_rule: must be best_worst"),
    ({"lora": True}, "lora: rounds start each round from the previous round's whole model"),
    ({"recipe": "spa", "method": None}, "reference_model: spa labels pairs by the policy's implicit reward"),
    ({"reference_model": "x", "round_reference": "previous"}, "round_reference: previous makes each round's"),
    ({"reward": ["reference={reference}"]}, "reward: 'reference={reference}' is no scorer spec"),
    ({"recipe": ["raft"]}, "recipe: expected a string"),
])
def test_bad_round_settings_are_one_line_errors(tmp_path, tiny_model_dir, prompt_file, overrides, message):
    cfg = rounds_config(tiny_model_dir, prompt_file, tmp_path / "run", **overrides)
    with pytest.raises(ConfigError, match=message) as err:
        train(cfg)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_a_file_with_fewer_prompts_than_rounds_and_no_reward(tmp_path, tiny_model_dir, prompt_file):
    with pytest.raises(ConfigError, match="holds 8 prompts, fewer than the 9 rounds"):
        train(rounds_config(tiny_model_dir, prompt_file, tmp_path / "a", rounds=9, round_prompts=None))
    with pytest.raises(ConfigError, match="reward: rounds score their samples with a reward"):
        train(rounds_config(tiny_model_dir, prompt_file, tmp_path / "b", reward=[]))


@pytest.mark.parametrize("method,shape", [("dpo", "pair"), ("kto", "unpaired"), ("listmle", "ranked")])
def test_one_sample_per_prompt_is_refused_where_the_round_compares_samples(tmp_path, method, shape):
    """Pairs, thumbs up/down and ranked lists compare a prompt's samples: with one sample per prompt
    a round would sample every prompt and then make no data, so it is refused before anything
    loads; SFT rounds (raft: best-of-1) take one sample."""
    from alignlab.config import make_config

    cfg = rounds_config("m", "p.jsonl", tmp_path, method=method, num_generations=1)
    with pytest.raises(ConfigError) as e:
        make_config(cfg)
    assert str(e.value) == (f"num_generations: rounds make {shape} data for method '{method}' by comparing each "
                            "prompt's samples; with 1 sample per prompt no prompt makes any: set num_generations to 2 "
                            "or more")
    assert make_config({**cfg, "method": "sft"}).rollout.num_generations == 1


def test_iterate_needs_rounds(tmp_path, tiny_model_dir, prompt_file, capsys):
    code = main(["iterate", "--model", str(tiny_model_dir), "--data", str(prompt_file), "--output-dir",
                 str(tmp_path / "run")])
    assert code == 2
    assert "alignlab iterate runs rounds: give rounds: N" in capsys.readouterr().err


@pytest.mark.parametrize("rounds", [[], ["--rounds", "0"]])
def test_iterate_without_rounds_says_so_before_the_keys_that_need_them(tmp_path, tiny_model_dir, prompt_file, capsys,
                                                                       rounds):
    """A recipe and a reward are keys of rounds: without rounds the error is the missing rounds,
    not the reward (it blamed the reward, as 'for online methods and for rounds')."""
    code = main(["iterate", "--recipe", "iterative-dpo", "--reward", "task:arithmetic", "--model", str(tiny_model_dir),
                 "--data", str(prompt_file), "--output-dir", str(tmp_path / "run"), *rounds])
    assert code == 2
    assert capsys.readouterr().err == ("alignlab: error: alignlab iterate runs rounds: give rounds: N (N >= 1) in the "
                                       "config or --rounds N\n")


def test_a_reference_model_of_its_own(tmp_path, tiny_model_dir, pairs_file):
    """DPO with ``reference_model`` the policy's own directory trains exactly as without it; another
    model as the reference gives other implicit rewards from the first step on, and another update."""
    base = {"method": "dpo", "model": str(tiny_model_dir), "data": str(pairs_file), "max_steps": 2, "batch_size": 4,
            "lr": 1e-3, "dtype": "fp64", "progress": False, "warmup_steps": 0, "cache": False}
    plain = train({**base, "output_dir": str(tmp_path / "a")})
    same = train({**base, "output_dir": str(tmp_path / "b"), "reference_model": str(tiny_model_dir)})
    assert max_abs_diff(weights(plain.model_dir), weights(same.model_dir)) == 0
    other = save_tiny_model(tmp_path / "other", TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4,
                                                                 intermediate_size=128, seed=7))
    moved = train({**base, "output_dir": str(tmp_path / "c"), "reference_model": str(other)})
    assert max_abs_diff(weights(plain.model_dir), weights(moved.model_dir)) > 1e-6
    plain_row = [m for m in jsonl(tmp_path / "a" / "metrics.jsonl") if "loss" in m][0]
    moved_row = [m for m in jsonl(tmp_path / "c" / "metrics.jsonl") if "loss" in m][0]
    assert plain_row["rewards/chosen"] == pytest.approx(0.0, abs=1e-12)  # the policy is its own reference
    assert abs(moved_row["rewards/chosen"]) > 1e-3


def test_a_round_on_a_task_reports_how_its_scores_agree_with_gold(tmp_path, tiny_model_dir):
    """Scored by the digit count on the arithmetic task's prompts: ``gold_agreement`` is, over
    every two samples of a prompt whose gold rewards differ, the share the digit counts order alike
    (ties half), and ``pairs_gold_correct`` the share of pairs whose chosen answer gold prefers;
    both recomputed here from the samples and the data."""
    from alignlab.rewards import load_scorer

    out = tmp_path / "run"
    train(rounds_config(tiny_model_dir, "task:arithmetic", out, rounds=1, round_prompts=6, max_new_tokens=4))
    gold = load_scorer("task:arithmetic:gold")
    agree = total = 0.0
    for row in jsonl(out / "round-1" / "samples.jsonl"):
        comps = row["completions"]
        g = gold.score([row["prompt"]] * len(comps), comps)
        d = [digit_count(c) for c in comps]
        for i in range(len(comps)):
            for j in range(i + 1, len(comps)):
                if g[i] != g[j]:
                    total += 1
                    agree += 1.0 if (d[i] - d[j]) * (g[i] - g[j]) > 0 else 0.5 if d[i] == d[j] else 0.0
    pairs = jsonl(out / "round-1" / "data.jsonl")
    correct = [gold.score([p["prompt"]], [p["chosen"]])[0] - gold.score([p["prompt"]], [p["rejected"]])[0]
               for p in pairs]
    record = json.loads((out / "round-1" / "round.json").read_text())
    assert record["gold_agreement"] == (pytest.approx(agree / total, abs=1e-12) if total else None)
    assert record["pairs_gold_correct"] == pytest.approx(
        sum(1.0 if c > 0 else 0.5 if c == 0 else 0.0 for c in correct) / len(correct), abs=1e-12)


def test_self_rewarding_judges_with_the_rounds_own_policy(tmp_path, tiny_model_dir, prompt_file, monkeypatch):
    """recipe self-rewarding: the reward ``judge:{policy}`` is loaded from each round's starting
    policy (round 2's judge is round 1's model), logged under the spec as written; the reference
    is the previous round's policy. A scripted judge stands in for the tiny model's verdicts (which
    it cannot write): it prefers the answer with more digits."""
    import alignlab.rewards as rewards
    from alignlab.rewards.judge import CallableBackend, PairwiseJudge

    loaded = []
    real = rewards.load_scorer

    def fake_load(spec, tokenizer=None, **options):
        if not spec.startswith("judge:"):
            return real(spec, tokenizer, **options)
        loaded.append(spec)

        def verdict(prompt: str) -> str:
            a = prompt.split("[The Start of Assistant A's Answer]")[1].split("[The End of Assistant A's")[0]
            b = prompt.split("[The Start of Assistant B's Answer]")[1].split("[The End of Assistant B's")[0]
            return "[[A]]" if digit_count(a) > digit_count(b) else "[[B]]" if digit_count(b) > digit_count(a) else "[[C]]"

        return PairwiseJudge(CallableBackend(verdict), name=spec)

    monkeypatch.setattr(rewards, "load_scorer", fake_load)
    out = tmp_path / "run"
    cfg = rounds_config(tiny_model_dir, prompt_file, out, recipe="self-rewarding", reward=[])
    cfg.pop("reward")
    train(cfg)
    assert loaded == [f"judge:{tiny_model_dir}", f"judge:{out / 'round-1' / 'train' / 'model'}"]
    record = json.loads((out / "round-2" / "round.json").read_text())
    assert "reward/judge:{policy}" in record
    # the judge's pairs: each chosen answer has more digits than its rejected one
    assert all(digit_count(p["chosen"]) > digit_count(p["rejected"]) for p in jsonl(out / "round-2" / "data.jsonl"))
    assert yaml.safe_load((out / "round-2" / "train" / "run.yaml").read_text())["reference_model"] is None


def test_osp_weighs_each_pair_by_the_scorers_probability(tmp_path, tiny_model_dir, prompt_file):
    """recipe osp (soft-preference): each best-worst pair carries strength σ(digits(chosen) −
    digits(rejected)), the scorer's Bradley-Terry probability, recomputed here."""
    out = tmp_path / "run"
    train(rounds_config(tiny_model_dir, prompt_file, out, recipe="osp", method=None, rounds=1, round_prompts=8))
    pairs = jsonl(out / "round-1" / "data.jsonl")
    assert pairs and yaml.safe_load((out / "rounds.yaml").read_text())["method"] == "soft-preference"
    for p in pairs:
        want = 1 / (1 + math.exp(-(digit_count(p["chosen"]) - digit_count(p["rejected"]))))
        assert p["strength"] == pytest.approx(want, abs=1e-12) and p["strength"] > 0.5


def test_spa_labels_by_the_implicit_reward_and_smooths_the_least_confident_pairs(tmp_path, tiny_model_dir,
                                                                                prompt_file):
    """recipe spa: two samples per prompt, ranked by the implicit reward β(ℓ_policy − ℓ_reference)
    of the round's policy against ``reference_model`` (recomputed here), the pair with the smallest
    margin of the 8 (10%, rounded up) smoothed to strength 0.9, the others 1."""
    import torch

    from alignlab.logprobs import completion_logps
    from alignlab.models import load_model, load_tokenizer
    from alignlab.rewards.tokens import render_pairs

    reference = save_tiny_model(tmp_path / "ref", TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4,
                                                                   intermediate_size=128, seed=7))
    out = tmp_path / "run"
    cfg = rounds_config(tiny_model_dir, prompt_file, out, recipe="spa", method=None, rounds=1, round_prompts=8,
                        reference_model=str(reference), reward=[])
    cfg.pop("reward")
    cfg.pop("num_generations")
    train(cfg)
    pairs = jsonl(out / "round-1" / "data.jsonl")
    assert len(pairs) == 8  # two samples per prompt that (almost surely) differ in implicit reward
    tok = load_tokenizer(str(tiny_model_dir))
    policy, ref = load_model(str(tiny_model_dir)), load_model(str(reference))

    def implicit(prompt, text):  # the response as training renders it (with its end-of-sequence token)
        (p, r), = render_pairs(tok, [prompt], [text], 1024)
        return 0.1 * float(completion_logps(policy, [p], [r.ids], tok.pad_token_id)
                           - completion_logps(ref, [p], [r.ids], tok.pad_token_id))

    # fp32: the run scores a batch of rows, this one row at a time; on some CPUs the matmuls of the
    # two shapes round apart by up to about 1e-5 nats a sequence (1.5e-6 here after β = 0.1); a
    # wrong reference, sign or token would be off by orders of magnitude more
    margins = []
    for p in pairs:
        assert p["score_chosen"] == pytest.approx(implicit(p["prompt"], p["chosen"]), abs=5e-6)
        assert p["score_rejected"] == pytest.approx(implicit(p["prompt"], p["rejected"]), abs=5e-6)
        margins.append(p["score_chosen"] - p["score_rejected"])
    assert min(margins) > 0
    weakest = margins.index(min(margins))
    assert [p["strength"] for p in pairs] == [0.9 if i == weakest else 1.0 for i in range(8)]
    assert torch.isfinite(torch.tensor(margins)).all()


def test_a_judge_spec_takes_a_mode_and_a_template(tmp_path, tiny_model_dir):
    from alignlab.errors import UserError
    from alignlab.rewards import load_scorer
    from alignlab.rewards.judge import PairwiseJudge, PointwiseJudge

    template = tmp_path / "t.txt"
    template.write_text("{prompt} {response} Score {low} to {high} = ")
    judge = load_scorer(f"judge:{tiny_model_dir},mode=pointwise,template={template},max_new_tokens=2")
    assert isinstance(judge, PointwiseJudge) and judge.template == template.read_text()
    assert isinstance(load_scorer(f"judge:{tiny_model_dir},swap=false"), PairwiseJudge)
    for spec, message in ((f"judge:{tiny_model_dir},mode=listwise", "mode must be pairwise or pointwise"),
                          (f"judge:{tiny_model_dir},mode=pointwise,swap=true", "swap is for a pairwise judge"),
                          (f"judge:{tiny_model_dir},template={tmp_path / 'none.txt'}", "template file .* not found"),
                          (f"judge:{tiny_model_dir},template={template}", "pairwise judge template is missing")):
        with pytest.raises(UserError, match=message):
            load_scorer(spec)


@pytest.mark.parametrize("method", ["kto", "listnet"])
def test_unpaired_and_ranked_methods_get_their_own_shape(tmp_path, tiny_model_dir, prompt_file, method):
    """kto: each best-worst pair as a thumbs up (the best) and a thumbs down (the worst); listnet:
    each prompt's samples as a list ranked by the digit count, prompts whose samples all tie left out."""
    out = tmp_path / "run"
    train(rounds_config(tiny_model_dir, prompt_file, out, method=method, rounds=1, round_prompts=8))
    samples = jsonl(out / "round-1" / "samples.jsonl")
    rows = jsonl(out / "round-1" / "data.jsonl")
    decisive = [s for s in samples if len({digit_count(c) for c in s["completions"]}) > 1]
    if method == "kto":
        assert [(r["prompt"], r["label"]) for r in rows] == [(s["prompt"], lab) for s in decisive for lab in (True, False)]
        for up, down in zip(rows[::2], rows[1::2], strict=True):
            assert digit_count(up["completion"]) > digit_count(down["completion"])
    else:
        assert [r["prompt"] for r in rows] == [s["prompt"] for s in decisive]
        for r, s in zip(rows, decisive, strict=True):
            assert sorted(r["completions"]) == sorted(s["completions"])
            assert r["scores"] == sorted((float(digit_count(c)) for c in s["completions"]), reverse=True)
    assert json.loads((out / "round-1" / "round.json").read_text())["trained"]


def test_skip_invalid_leaves_out_prompt_rows_without_a_prompt_or_room(tmp_path, tiny_model_dir, capsys):
    """Row 2 of the prompt file is empty, and row 4 is 2046 digits, one token each (a text prompt
    gets no template): with max_new_tokens 6 that is 2052 tokens, past the tiny model's 2048
    positions. Without skip_invalid the rounds stop naming the first before anything samples (and
    the long row once the empty one is gone); with it, both rows are left out, counted and
    printed, and round 1 answers the 4 other prompts, in order."""
    data, long = tmp_path / "holes.jsonl", "9" * 2046
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in [PROMPTS[0], "", PROMPTS[1], long, *PROMPTS[2:4]]))
    with pytest.raises(DataError, match=r"row 2, field 'prompt'"):
        train(rounds_config(tiny_model_dir, data, tmp_path / "a", rounds=1))
    filled = tmp_path / "long.jsonl"
    filled.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in [PROMPTS[0], long, *PROMPTS[1:4]]))
    with pytest.raises(DataError) as e:
        train(rounds_config(tiny_model_dir, filled, tmp_path / "c", rounds=1))
    assert str(e.value) == (f"{filled}, row 2, field 'prompt': 2046 tokens + max_new_tokens 6 exceed the model's "
                            "context of 2048 tokens (max_position_embeddings) (shorten the prompt or lower "
                            "max_new_tokens)")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()  # refused before the folder is claimed
    capsys.readouterr()
    train(rounds_config(tiny_model_dir, data, tmp_path / "b", rounds=1, skip_invalid=True))
    err = capsys.readouterr().err
    assert f"{data}: 1 invalid prompt row skipped (first: {data}, row 2, field 'prompt'" in err
    assert (f"{data}: 1 invalid prompt row skipped (first: {data}, row 4, field 'prompt': 2046 tokens + "
            "max_new_tokens 6 exceed the model's context of 2048 tokens (max_position_embeddings))") in err
    assert [r["prompt"] for r in jsonl(tmp_path / "b" / "round-1" / "prompts.jsonl")] == PROMPTS[:4]


def test_a_prompt_the_reward_cannot_score_is_named_before_the_first_round(tmp_path, tiny_model_dir, capsys):
    """The arithmetic task's reward scores prompts of the form '37+58='; row 2 is not one. Without
    skip_invalid the rounds stop naming it before anything samples (the run folder is not made);
    with it, the row is left out and round 1 answers the other 4, in order."""
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["1+1=", "hello", "2+2=", "3+3=", "4+4="]))
    with pytest.raises(DataError) as e:
        train(rounds_config(tiny_model_dir, data, tmp_path / "a", rounds=1, reward=["task:arithmetic"]))
    assert str(e.value).startswith(f"{data}, row 2, field 'prompt': reward 'task:arithmetic': not an arithmetic "
                                   "prompt: 'hello'"), e.value
    assert not (tmp_path / "a").exists()
    capsys.readouterr()
    train(rounds_config(tiny_model_dir, data, tmp_path / "b", rounds=1, reward=["task:arithmetic"], skip_invalid=True))
    assert f"{data}: 1 invalid prompt row skipped (first: {data}, row 2, field 'prompt': reward" in capsys.readouterr().err
    assert [r["prompt"] for r in jsonl(tmp_path / "b" / "round-1" / "prompts.jsonl")] == ["1+1=", "2+2=", "3+3=", "4+4="]


def test_a_reward_that_names_no_rounds_model_is_loaded_once_for_every_round(tmp_path, tiny_model_dir, prompt_file,
                                                                            monkeypatch):
    """Two rounds scored by the digits reward: its scorer is loaded once, before the first round,
    and both rounds score with it (each round's record has its mean reward)."""
    import alignlab.rewards as rewards

    loaded = []
    real = rewards.load_scorer

    def counted(spec, *args, **kwargs):
        loaded.append(spec)
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(rewards, "load_scorer", counted)
    out = tmp_path / "run"
    train(rounds_config(tiny_model_dir, prompt_file, out, rounds=2))
    assert loaded == [DIGITS]
    assert all(json.loads((out / f"round-{r}" / "round.json").read_text())["reward"] >= 0 for r in (1, 2))


@pytest.mark.parametrize("overrides,message", [
    ({"recipe": "iterative-dpo", "min_score": 0.5}, "min_score: applies to the rounds of SFT methods (recipe raft); "
                                                    "method 'dpo' trains on pair data: leave it out"),
    ({"keep_top": 2}, "keep_top: applies to the rounds of SFT methods (recipe raft); method 'dpo' trains on pair "
                      "data: leave it out"),
    ({"pair_margin": 0.5}, "pair_margin: applies to pair_rule random or margin, not best_worst"),
    ({"pair_rule": "all_pairs", "pair_margin": 0.5}, "pair_margin: applies to pair_rule random or margin, not "
                                                     "all_pairs"),
    ({"recipe": "raft", "method": None, "pair_rule": "all_pairs"},
     "pair_rule: applies to the rounds of pair and unpaired methods; method 'sft' trains on sft data: leave it out"),
    ({"method": "listmle", "pair_rule": "random"}, "pair_rule: applies to the rounds of pair and unpaired methods; "
                                                   "method 'listmle' trains on ranked data: leave it out"),
    ({"refine_fraction": 0.2}, "refine_fraction: applies to the spa recipe: leave it out"),
    ({"refine_smoothing": 0.2}, "refine_smoothing: applies to the spa recipe: leave it out"),
])
def test_round_options_the_method_would_ignore_are_refused(tmp_path, overrides, message):
    from alignlab.config import make_config

    with pytest.raises(ConfigError) as e:
        make_config(rounds_config("m", "p.jsonl", tmp_path, **overrides))
    assert str(e.value) == message


@pytest.mark.parametrize("overrides", [
    {}, {"recipe": "raft", "method": None}, {"method": "sft", "keep_top": 2, "min_score": 0.5},
    {"pair_rule": "margin", "pair_margin": 0.5}, {"method": "kto", "pair_rule": "random", "pair_margin": 0.1},
    {"keep_top": 1, "pair_rule": "best_worst", "refine_fraction": 0.1},  # the defaults, given or not
])
def test_round_options_that_apply_or_are_left_at_their_defaults_pass(tmp_path, overrides):
    from alignlab.config import make_config

    make_config(rounds_config("m", "p.jsonl", tmp_path, **overrides))


@pytest.mark.parametrize(("verdict", "message"), [
    ("0.7", "reward 'j' (comparing the round's pairs) failed on the pair of answers 'b2' and 'w2' to prompt 'p2': "
            "returned '0.7', "
            "not a number"),
    (float("nan"), "failed on the pair of answers 'b2' and 'w2' to prompt 'p2': returned nan, not a finite number"),
    (1.5, "reward 'j': its comparison of the round's pair 2 is 1.5, not a probability in [0, 1]"),
])
def test_a_judges_verdict_on_a_rounds_pair_is_read_by_the_score_rule(verdict, message):
    """A pairwise judge's strength for each pair of a round: text, NaN or a number outside [0, 1]
    for the second pair is one line naming it, not a traceback or a strength of nan."""
    from alignlab.data.records import PairRecord
    from alignlab.errors import UserError
    from alignlab.rewards.base import Scorer
    from alignlab.rounds import _strengths
    from alignlab.training.rollout import RewardTerm

    class Judge(Scorer):
        name = "j"
        compares_by_score = False

        def score(self, prompts, responses):
            return [0.0] * len(responses)

        def compare(self, prompts, first, second):
            return [verdict if a == "b2" else 0.75 for a in first]

    pairs = [PairRecord(f"p{i}", f"b{i}", f"w{i}", score_chosen=1.0, score_rejected=0.0) for i in (1, 2)]
    with pytest.raises(UserError) as e:
        _strengths(pairs, [RewardTerm("j", Judge())])
    assert message in str(e.value) and "\n" not in str(e.value)
    good = _strengths(pairs[:1], [RewardTerm("j", Judge())])
    assert good[0].strength == 0.75
