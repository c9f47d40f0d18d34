"""Metric sinks (``alignlab/training/sinks.py``): TensorBoard and W&B (offline) show exactly the
numbers of metrics.jsonl, at its steps, for offline, online and rounds runs; a resumed run shows
each step once; a sink that is unknown or not installed is a one-line error before anything loads."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alignlab import train
from alignlab.cli import _parse_flags, main
from alignlab.config import bool_keys, list_keys, load_config, make_config
from alignlab.errors import ConfigError
from alignlab.training import checkpoint as ckpt
from alignlab.training.metrics import read_metrics
from alignlab.training.sinks import SinkRun, open_sinks, resolve_report_to
from tests.training.helpers import base_config, crash_after_save
from tests.training.sink_files import (
    jsonl_by_step,
    jsonl_scalars,
    same,
    same_float32,
    tensorboard_scalars,
    wandb_runs,
)

pytest.importorskip("tensorboard")
pytest.importorskip("wandb")

BOTH = ["tensorboard", "wandb"]


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B offline, its settings and caches in this test's folder; no W&B variable of the caller's."""
    for name in ("WANDB_DIR", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_RUN_GROUP", "WANDB_NAME",
                 "WANDB_ENTITY", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))


def assert_tensorboard_is_metrics_jsonl(out: Path, folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every number of metrics.jsonl is a TensorBoard scalar of the same name, with the same steps
    and the same values (stored as float32), and nothing else is."""
    expected, shown = jsonl_scalars(out), tensorboard_scalars(folder)
    assert shown.keys() == expected.keys()
    for tag, points in expected.items():
        assert [s for s, _ in shown[tag]] == [s for s, _ in points], tag
        assert all(same_float32(a, b) for (_, a), (_, b) in zip(points, shown[tag], strict=True)), tag
    return shown


def test_a_dpo_run_logs_metrics_jsonl_to_tensorboard_and_wandb(tmp_path, tiny_model_dir, pairs_file, wandb_offline):
    out = tmp_path / "dpo-sinks"
    train(base_config(tiny_model_dir, pairs_file, out, max_steps=4, batch_size=4, eval_fraction=0.25, eval_every=2,
                      eval_at_start=True, report_to=BOTH))
    shown = assert_tensorboard_is_metrics_jsonl(out, out / "tensorboard")
    assert {"loss", "lr", "grad_norm", "rewards/accuracies", "eval/loss", "eval/rewards/margins"} <= shown.keys()
    assert [s for s, _ in shown["eval/loss"]] == [0, 2, 4] and [s for s, _ in shown["loss"]] == [1, 2, 3, 4]

    # W&B: one offline run under the output folder, named after it; one history row per step with
    # that step's numbers (its training and evaluation records) exactly, the summary the last ones
    (run,) = wandb_runs(out)
    assert (run["name"], run["group"], run["project"], run["exit_code"]) == ("dpo-sinks", "dpo-sinks", "alignlab", 0)
    assert run["config"]["method"] == "dpo" and run["config"]["tracking"]["report_to"] == BOTH
    by_step = jsonl_by_step(out)
    assert [step for step, _ in run["history"]] == sorted(by_step) == [0, 1, 2, 3, 4]
    for step, row in run["history"]:
        assert same(row, by_step[step]), step
    last = {key: points[-1][1] for key, points in jsonl_scalars(out).items()}
    assert same(run["summary"], last)
    final = read_metrics(out / "metrics.jsonl")[-1]
    assert final["step"] == 4 and all(run["summary"][k] == v for k, v in final.items() if k != "step")


def test_the_command_line_keeps_stdout_for_the_summary(tmp_path, tiny_model_dir, pairs_file, wandb_offline, capsys):
    out = tmp_path / "cli"
    code = main(["train", "--model", str(tiny_model_dir), "--data", str(pairs_file), "--output-dir", str(out),
                 "--max-steps", "2", "--batch-size", "4", "--progress", "false",
                 "--report-to", "tensorboard", "wandb", "--run-name", "from-the-cli"])
    printed = capsys.readouterr().out
    assert code == 0 and json.loads(printed)["steps"] == 2
    assert_tensorboard_is_metrics_jsonl(out, out / "tensorboard")
    assert [run["name"] for run in wandb_runs(out)] == ["from-the-cli"]


def test_a_resumed_run_shows_each_step_once(tmp_path, tiny_model_dir, pairs_file, wandb_offline, monkeypatch):
    """Killed after step 4 with the newest checkpoint at step 2: steps 3 and 4 are logged twice,
    and TensorBoard shows them once, with the resumed run's numbers (purge_step). W&B gets a second
    run, in the first one's group, from step 3 on; WANDB_DIR is honoured."""
    out = tmp_path / "cut"
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-runs"))
    cfg = base_config(tiny_model_dir, pairs_file, out, max_steps=6, batch_size=4, save_every=2, keep_checkpoints=0,
                      eval_fraction=0.25, eval_every=3, report_to=BOTH)
    with crash_after_save(lambda step: step == 4):
        train(cfg)
    shutil.rmtree(out / "checkpoints" / ckpt.step_name(4))  # as if killed before that checkpoint
    first = tensorboard_scalars(out / "tensorboard")
    assert [s for s, _ in first["loss"]] == [1, 2, 3, 4]

    train({**cfg, "resume": True})
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 2
    shown = assert_tensorboard_is_metrics_jsonl(out, out / "tensorboard")
    assert [s for s, _ in shown["loss"]] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in shown["eval/loss"]] == [3, 6]

    assert not (out / "wandb").exists()
    cut, resumed = wandb_runs(tmp_path / "wandb-runs")
    assert (cut["name"], cut["exit_code"]) == ("cut", 1)  # failed: the run raised
    assert [step for step, _ in cut["history"]] == [1, 2, 3, 4]
    assert (resumed["name"], resumed["group"], resumed["exit_code"]) == ("cut-resumed-2", "cut", 0)
    assert resumed["config"]["resumed_from_step"] == 2 and resumed["id"] != cut["id"]
    by_step = jsonl_by_step(out)
    assert [step for step, _ in resumed["history"]] == [3, 4, 5, 6]
    for step, row in resumed["history"]:
        assert same(row, by_step[step]), step


def test_a_fresh_start_hides_an_earlier_runs_events_and_overwrite_removes_them(tmp_path, tiny_model_dir,
                                                                               pairs_file):
    logs = tmp_path / "tb"
    cfg = base_config(tiny_model_dir, pairs_file, tmp_path / "a", max_steps=3, batch_size=4, report_to="tensorboard",
                      logging_dir=str(logs))
    train(cfg)
    train({**cfg, "output_dir": str(tmp_path / "b"), "max_steps": 2, "lr": 1e-2})
    assert len(list(logs.glob("events.out.tfevents.*"))) == 2
    assert_tensorboard_is_metrics_jsonl(tmp_path / "b", logs)  # run a's steps 1-3 are gone from view

    plain = base_config(tiny_model_dir, pairs_file, tmp_path / "c", max_steps=2, batch_size=4, report_to="tensorboard")
    train(plain)
    train({**plain, "overwrite": True})
    assert len(list((tmp_path / "c" / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_an_online_run_logs_its_rewards(tmp_path, tiny_model_dir):
    out = tmp_path / "grpo"
    train(base_config(tiny_model_dir, "task:arithmetic", out, method="grpo", reward=["fn:tests.training.online_rewards:digits"],
                      num_generations=4, max_new_tokens=6, warmup_steps=0, max_steps=2, report_to="tensorboard"))
    shown = assert_tensorboard_is_metrics_jsonl(out, out / "tensorboard")
    assert {"reward", "reward_std", "completion_length", "generation_s"} <= shown.keys()


def test_rounds_log_each_rounds_training_under_one_folder(tmp_path, tiny_model_dir, wandb_offline):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Write a number for item {i}:"}) + "\n" for i in range(1, 9)))
    out = tmp_path / "rounds"
    train({"method": "dpo", "model": str(tiny_model_dir), "data": str(prompts), "output_dir": str(out), "rounds": 2,
           "reward": ["fn:tests.training.online_rewards:digits"], "num_generations": 4, "round_prompts": 4,
           "max_new_tokens": 6, "max_steps": 2, "batch_size": 2, "lr": 1e-3, "progress": False, "warmup_steps": 0,
           "max_length": 64, "report_to": BOTH, "project": "sinks-test"})
    for r in (1, 2):
        assert_tensorboard_is_metrics_jsonl(out / f"round-{r}" / "train", out / "tensorboard" / f"round-{r}")
    runs = [run for r in (1, 2) for run in wandb_runs(out / f"round-{r}" / "train")]
    assert [(run["name"], run["group"], run["project"]) for run in runs] == [
        ("rounds-round-1", "rounds", "sinks-test"), ("rounds-round-2", "rounds", "sinks-test")]


def test_sinks_take_non_finite_values_and_booleans_and_leave_text(tmp_path, wandb_offline):
    """What ``open_sinks`` gives a comparison or any other job: records in, each number at its step."""
    run = SinkRun(out_dir=tmp_path / "job", name="job", config={"what": "a test"})
    with open_sinks(BOTH, run) as sinks:
        sinks.write({"step": 1, "a": math.nan, "b": math.inf, "c": True, "d": "text", "e": None, "f": 2})
        sinks.write({"step": 2, "a": 0.25, "b": -math.inf, "c": False, "f": 3})
    shown = tensorboard_scalars(tmp_path / "job" / "tensorboard")
    assert shown.keys() == {"a", "b", "c", "f"}
    assert math.isnan(shown["a"][0][1]) and shown["a"][1] == (2, 0.25)
    assert shown["b"] == [(1, math.inf), (2, -math.inf)] and shown["c"] == [(1, 1.0), (2, 0.0)]
    (wb,) = wandb_runs(tmp_path / "job")
    assert wb["exit_code"] == 0 and wb["config"]["what"] == "a test"
    assert same(wb["history"][0][1], {"a": math.nan, "b": math.inf, "c": 1.0, "f": 2.0})
    assert same(wb["history"][1][1], {"a": 0.25, "b": -math.inf, "c": 0.0, "f": 3.0})

    with pytest.raises(RuntimeError), open_sinks(["wandb"], SinkRun(out_dir=tmp_path / "failed", name="failed")) as sinks:
        sinks.write({"step": 1, "a": 1.0})
        raise RuntimeError("the job failed")
    assert wandb_runs(tmp_path / "failed")[0]["exit_code"] == 1


def test_trackio(tmp_path):
    """trackio (an optional extra, not in dev: skipped where it is not installed) gets the same
    numbers; run in a process of its own, since trackio reads TRACKIO_DIR when imported."""
    pytest.importorskip("trackio")
    script = """
import json, math, sys
from pathlib import Path
from alignlab.training.sinks import SinkRun, open_sinks
with open_sinks(["trackio"], SinkRun(out_dir=Path(sys.argv[1]), name="job", project="sinks-test")) as sinks:
    sinks.write({"step": 1, "loss": 0.5, "eval/x": math.nan})
    sinks.write({"step": 3, "loss": 0.25, "eval/x": 1.0})
from trackio.sqlite_storage import SQLiteStorage
rows = SQLiteStorage.get_logs("sinks-test", "job")
print(json.dumps([[r["step"], r["loss"], None if math.isnan(r["eval/x"]) else r["eval/x"]] for r in rows]))
"""
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [[1, 0.5, None], [3, 0.25, 1.0]]


# -- the setting ------------------------------------------------------------------------------------


def test_report_to_reads_as_trl_takes_it(monkeypatch):
    base = {"model": "m", "data": "d"}
    assert make_config(base).tracking.report_to == []
    for value in ("none", ["none"], None, []):
        assert make_config({**base, "report_to": value}).tracking.report_to == []
    assert make_config({**base, "report_to": "wandb"}).tracking.report_to == ["wandb"]
    assert make_config({**base, "tracking": {"report_to": "tensorboard,wandb,tensorboard"}}).tracking.report_to == BOTH
    monkeypatch.setitem(sys.modules, "trackio", None)  # not installed
    assert make_config({**base, "report_to": "all"}).tracking.report_to == BOTH
    monkeypatch.setitem(sys.modules, "wandb", None)
    assert resolve_report_to("all") == ["tensorboard"]


def test_report_to_takes_several_values_on_the_command_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: m\ndata: d\n")
    for tokens in (["--report-to", "tensorboard", "wandb", str(path)], [str(path), "--report-to", "tensorboard,wandb"],
                   ["--tracking.report-to", "tensorboard", "wandb", "--lr", "0.1", str(path)]):
        config, overrides, _ = _parse_flags(tokens, frozenset(bool_keys()), frozenset(list_keys()))
        assert config == str(path)
        assert load_config(config, overrides).tracking.report_to == BOTH


@pytest.mark.parametrize("value,message", [
    ("tensorbord", "report_to: unknown sink 'tensorbord': choose from tensorboard, wandb, trackio, all or none; "
                   "did you mean 'tensorboard'?"),
    ("mlflow", "report_to: unknown sink 'mlflow'"),
    ("none,wandb", "report_to: 'none' cannot be combined with other sinks"),
])
def test_a_bad_report_to_is_a_one_line_error(value, message, capsys):
    code = main(["train", "--model", "m", "--data", "d", "--report-to", value])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_sink_whose_library_is_missing_is_a_one_line_error_before_anything_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"^report_to: wandb needs the wandb package, which is not installed: "
                                          r"pip install 'alignlab\[wandb\]'"):
        make_config({"model": "m", "data": "d", "report_to": ["tensorboard", "wandb"]})
    out = tmp_path / "never"
    code = main(["train", "--model", "no-such-model", "--data", "d", "--output-dir", str(out), "--report-to", "wandb"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "pip install 'alignlab[wandb]'" in err
    assert not out.exists()


def test_a_library_that_is_there_but_does_not_import_is_a_one_line_error(tmp_path, monkeypatch):
    import alignlab.training.sinks as sinks

    monkeypatch.setattr(sinks, "installed", lambda name: True)
    monkeypatch.setitem(sys.modules, "trackio", None)  # found, but importing it fails
    with pytest.raises(ConfigError, match=r"^report_to: importing trackio failed \(.*\); reinstall it: "
                                          r"pip install 'alignlab\[trackio\]'$"):
        open_sinks(["tensorboard", "trackio"], SinkRun(out_dir=tmp_path, name="job"))
