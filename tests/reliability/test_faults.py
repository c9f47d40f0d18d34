"""Runs killed at any moment resume to exactly the weights of an uninterrupted run; Ctrl-C and
SIGTERM write a checkpoint and exit cleanly; non-finite losses stop the run (or are skipped on
request) without touching the weights.

The kill tests run ``alignlab train`` in child processes through ``bench/faults.py``, the script
that repeats them at random points (``python bench/faults.py --runs 20``).
"""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import pytest
import torch

from alignlab import cli, train
from alignlab.training import checkpoint as ckpt
from alignlab.training.forward import preference
from alignlab.training.interrupt import StopRequest
from tests.conftest import bench_module
from tests.training.helpers import base_config, weights

REPO = Path(__file__).resolve().parents[2]


def _faults():
    return bench_module("faults")


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """The fault script, its setup (model, data) and the uninterrupted run's final weights."""
    f = _faults()
    s = f.prepare(tmp_path_factory.mktemp("faults"), steps=6)
    rc, log = f.run(s, s.work / "uninterrupted")
    assert rc == 0, log
    return f, s, f.final_weights(s.work / "uninterrupted")


@pytest.mark.parametrize("k", [7], ids=["checkpoint-3-trainable"])
def test_killed_while_writing_a_checkpoint_resumes_identical(faults, k):
    """Killed inside the k-th tensor file written (3 per checkpoint): the half-written checkpoint
    stays under its temporary name, the newest complete one is used, the result is bit-exact."""
    f, s, reference = faults
    out = s.work / f"write-{k}"
    killed, how = f.kill_in_write(s, out, k)
    assert killed, how
    newest, problems = f.check_checkpoints(out)
    assert problems == []
    assert newest == ((k - 1) // 3 or None)  # the checkpoints before the one being written
    assert any(p.name.startswith(".tmp-step-") for p in (out / "checkpoints").iterdir())
    same, log = _resume(f, s, out, reference)
    assert same, log
    assert (f"resumed from {out / 'checkpoints' / ckpt.step_name(newest)}" if newest else "starting from step 0") in log


def _resume(f, s, out, reference) -> tuple[bool, str]:
    rc, log = f.run(s, out, "--resume", "true")
    assert rc == 0, log
    return f.identical(f.final_weights(out), reference), log


def test_killed_at_random_points_resume_identical(faults, capsys):
    """bench/faults.py's own loop, two trials: one kill inside a file write, one at a random moment."""
    f, s, _ = faults
    rc = f.main(["--runs", "2", "--seed", "3", "--steps", "6", "--work", str(s.work)])  # reuses the uninterrupted run
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "2/2 resumed identical" in out


def test_stop_request_counts_signals():
    """SIGINT or SIGTERM asks once; a second Ctrl-C aborts at once; a repeated SIGTERM (launchers
    repeat it) does not; the previous handlers come back afterwards."""
    before = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        signal.raise_signal(signal.SIGTERM)
        assert stop.signal_name == "SIGTERM"
        signal.raise_signal(signal.SIGTERM)
        assert stop.signal_name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    with StopRequest() as stop:
        assert stop.signal_name is None
        signal.raise_signal(signal.SIGINT)
        assert stop.signal_name == "SIGINT"
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("sig", ["SIGINT"])
def test_a_signal_saves_a_checkpoint_and_exits_cleanly(faults, sig):
    """The signal arrives while checkpoint 2 is being written (its optimizer file, the 5th tensor
    file): that checkpoint is completed, the run stops there and exits 130 with one line; resumed,
    it ends with the uninterrupted run's weights."""
    f, s, reference = faults
    out = s.work / f"signal-{sig}"
    rc = f.start(s, out, env={"FAULTS_IN_WRITE": "5", "FAULTS_ACTION": sig}).wait(timeout=300)
    log = (out.parent / f"{out.name}.log").read_text()
    assert rc == 130, log
    line = [x for x in log.splitlines() if x.startswith("alignlab: stopped by")]
    assert line == [f"alignlab: stopped by {sig} after step 2 of 6; checkpoint "
                    f"{out / 'checkpoints' / ckpt.step_name(2)} written; continue with --resume"], log
    assert "Traceback" not in log
    newest, problems = f.check_checkpoints(out)
    assert problems == [] and newest == 2
    same, resumed_log = _resume(f, s, out, reference)
    assert same, resumed_log


def test_ctrl_c_at_a_random_moment(faults):
    """A real Ctrl-C from outside, whenever it lands: exit 130 after writing a checkpoint (or a
    normal finish when it lands after the last step), and the resumed run is bit-exact."""
    f, s, reference = faults
    out = s.work / "ctrl-c"
    proc = f.start(s, out)
    deadline = time.time() + 120
    while f.logged_steps(out) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=300)
    log = (out.parent / f"{out.name}.log").read_text()
    assert rc in (0, 130) and "Traceback" not in log, log
    if rc == 130:
        stopped = [x for x in log.splitlines() if x.startswith("alignlab: stopped by SIGINT after step")]
        assert len(stopped) == 1, log
        same, resumed_log = _resume(f, s, out, reference)
        assert same, resumed_log
    else:
        assert f.identical(f.final_weights(out), reference)


def _nan_on_call(monkeypatch, bad_calls: set[int], forward: type = preference.PreferenceForward) -> None:
    """The ``forward`` (the preference forward by default) returns NaN losses on the given calls
    (1-based: one per step here)."""
    real = forward.__call__
    calls = [0]

    def poisoned(self, model, batch):
        out = real(self, model, batch)
        calls[0] += 1
        if calls[0] in bad_calls:
            out.losses = out.losses * float("nan")
        return out

    monkeypatch.setattr(forward, "__call__", poisoned)


def test_non_finite_loss_stops_naming_step_and_rows_and_keeps_the_last_good_checkpoint(
        tmp_path, tiny_model_dir, pairs_file, monkeypatch, capsys):
    _nan_on_call(monkeypatch, {3})
    argv = ["train", "--method", "dpo", "--model", str(tiny_model_dir), "--data", str(pairs_file), "--output-dir",
            str(tmp_path / "run"), "--max-steps", "5", "--batch-size", "4", "--save-every", "1", "--progress", "false"]
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    line = [x for x in err.splitlines() if x.startswith("alignlab: error:")]
    assert len(line) == 1 and "step 3:" in line[0] and "data rows" in line[0] and "step-00000002" in line[0], err
    root = tmp_path / "run" / "checkpoints"
    assert [c.name for c in ckpt.list_checkpoints(root)][0] == "step-00000002"
    assert ckpt.verify(ckpt.list_checkpoints(root)[0]) is None


def test_a_non_finite_step_on_a_folder_of_files_names_each_rows_file(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """A folder of data files numbers each file's rows from 1: the step's rows are named with
    their files (a.jsonl and b.jsonl hold 2 pairs each; the one step of 4 holds all four rows)."""
    from tests.conftest import make_pairs, write_jsonl

    folder = tmp_path / "pairs"
    folder.mkdir()
    rows = make_pairs(4)
    write_jsonl(folder / "a.jsonl", rows[:2])
    write_jsonl(folder / "b.jsonl", rows[2:])
    _nan_on_call(monkeypatch, {1})
    argv = ["train", "--method", "dpo", "--model", str(tiny_model_dir), "--data", str(folder), "--output-dir",
            str(tmp_path / "run"), "--max-steps", "1", "--batch-size", "4", "--progress", "false"]
    assert cli.main(argv) == 2
    line = [x for x in capsys.readouterr().err.splitlines() if x.startswith("alignlab: error:")]
    a, b = folder / "a.jsonl", folder / "b.jsonl"
    assert len(line) == 1 and f"on the batch of {a} row 1, {a} row 2, {b} row 1, {b} row 2;" in line[0], line


def test_a_non_finite_online_step_on_a_folder_of_prompt_files_names_each_rows_file(tmp_path, tiny_model_dir,
                                                                                   monkeypatch, capsys):
    """The same for an online run: two prompt files of one prompt each, one step of both prompts."""
    from alignlab.training.forward import policy_gradient

    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"prompt": "1+1="}\n')
    (folder / "b.jsonl").write_text('{"prompt": "2+3="}\n')
    _nan_on_call(monkeypatch, {1}, policy_gradient.PolicyGradientForward)
    argv = ["train", "--method", "grpo", "--model", str(tiny_model_dir), "--data", str(folder), "--reward",
            "task:arithmetic:gold", "--num-generations", "2", "--batch-size", "4", "--max-new-tokens", "4",
            "--max-steps", "1", "--output-dir", str(tmp_path / "run"), "--progress", "false",
            "--skip-zero-advantage", "false"]
    assert cli.main(argv) == 2
    line = [x for x in capsys.readouterr().err.splitlines() if x.startswith("alignlab: error:")]
    a, b = folder / "a.jsonl", folder / "b.jsonl"
    assert len(line) == 1 and f"on the batch of {a} row 1, {b} row 1;" in line[0], line


def test_skip_nonfinite_skips_and_counts_the_bad_steps(tmp_path, tiny_model_dir, pairs_file, monkeypatch):
    """Steps 2 and 4 are poisoned: their updates are not applied (the weights after step 2 equal
    those after step 1), the schedule and the data order go on, and both are counted."""
    _nan_on_call(monkeypatch, {2, 4})
    cfg = base_config(tiny_model_dir, pairs_file, tmp_path / "run", max_steps=5, batch_size=4, save_every=1,
                      keep_checkpoints=0, skip_nonfinite=True)
    summary = train(cfg)
    root = tmp_path / "run" / "checkpoints"
    from safetensors.torch import load_file

    def trained(step):
        return load_file(root / ckpt.step_name(step) / "trainable.safetensors")

    one, two, three = trained(1), trained(2), trained(3)
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert not all(torch.equal(two[k], three[k]) for k in two)
    assert summary.train_metrics["skipped_steps"] == 2
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("skipped")] == [2, 4]
    assert all("loss" not in r for r in rows if r.get("skipped"))
    assert all(math.isfinite(r["loss"]) for r in rows if "loss" in r)
    assert ckpt.read_state(root / ckpt.step_name(5))["skipped_steps"] == 2
    assert weights(summary.model_dir).keys() == one.keys()
