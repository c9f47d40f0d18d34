"""eval/displacement.py and `alignlab eval displacement`: the log-prob change from a starting model,
by hand and over a training run's checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from alignlab.cli import main
from alignlab.eval.displacement import displacement
from alignlab.eval.pairs import PairLogps
from alignlab.models import load_model, load_tokenizer
from alignlab.training.saved import run_models
from tests.conftest import make_pairs, write_jsonl
from tests.eval.test_ranking import teacher_forced


def logps(chosen, rejected) -> PairLogps:
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return PairLogps(t(chosen), t(rejected), t([1.0] * len(chosen)), t([1.0] * len(chosen)))


def test_displacement_by_hand():
    """Start: chosen (−2, −3, −1, −4), rejected (−5, −5, −6, −2). End: chosen (−2.5, −1, −1, −6),
    rejected (−8, −4, −9, −2).
    Δ chosen = (−0.5, +2, 0, −2): mean −0.125; fell (< 0) in 2 of 4 pairs (0 is no fall) → 0.5.
    Δ rejected = (−3, +1, −3, 0): mean −1.25; fell in 2 of 4 → 0.5.
    margin change Δc − Δr = (2.5, 1, 3, −2): mean 1.125. Mean end log-probs: chosen −2.625, rejected −5.75."""
    start = logps([-2, -3, -1, -4], [-5, -5, -6, -2])
    end = logps([-2.5, -1, -1, -6], [-8, -4, -9, -2])
    got = displacement(start, end)
    assert got == pytest.approx({"pairs": 4, "chosen_logp": -2.625, "rejected_logp": -5.75, "chosen_change": -0.125,
                                 "rejected_change": -1.25, "margin_change": 1.125, "chosen_fell": 0.5,
                                 "rejected_fell": 0.5})


def test_a_model_against_itself_moves_nothing(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(5))
    out = tmp_path / "report.json"
    assert main(["eval", "displacement", "--data", str(data), "--models", str(tiny_model_dir), str(tiny_model_dir),
                 "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    report = json.loads(out.read_text())
    assert [m["model"] for m in report["models"]] == [str(tiny_model_dir)] * 2
    assert report["models"][1]["chosen_change"] == 0.0 and report["models"][1]["chosen_fell"] == 0.0


def test_a_runs_checkpoints_in_order(tiny_model_dir, tmp_path, capsys):
    """A DPO run of 2 steps with a checkpoint at each: start, step-00000001, step-00000002, final.
    The start is the run's starting model and the last checkpoint the final model, so their
    log-probs (teacher-forced passes through the models loaded from their own directories) give
    the report's numbers; without --data the run's own training pairs are read."""
    rows = make_pairs(8)
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    run = tmp_path / "run"
    assert main(["train", "--method", "dpo", "--model", str(tiny_model_dir), "--data", str(data), "--output-dir",
                 str(run), "--max-steps", "2", "--batch-size", "4", "--lr", "1e-2", "--save-every", "1",
                 "--keep-checkpoints", "0", "--progress", "false"]) == 0
    assert [name for name, _ in run_models(run)] == ["start", "step-00000001", "step-00000002", "final"]
    out = tmp_path / "report.json"
    assert main(["eval", "displacement", "--run", str(run), "--out", str(out), "--no-progress", "--device",
                 "cpu"]) == 0
    report = json.loads(out.read_text())
    tok = load_tokenizer(str(tiny_model_dir))
    start, final = load_model(str(tiny_model_dir)).eval(), load_model(str(run / "model")).eval()

    def mean_change(side: str) -> float:
        return sum(teacher_forced(final, tok, r["prompt"], r[side]) - teacher_forced(start, tok, r["prompt"], r[side])
                   for r in rows) / len(rows)

    by_name = {m["model"]: m for m in report["models"]}
    assert by_name["start"]["chosen_change"] == 0.0
    for name in ("step-00000002", "final"):
        assert by_name[name]["chosen_change"] == pytest.approx(mean_change("chosen"), abs=1e-4)
        assert by_name[name]["rejected_change"] == pytest.approx(mean_change("rejected"), abs=1e-4)
    assert by_name["step-00000001"]["margin_change"] != 0.0  # one step already moved the weights
    assert report["pairs"] == 8 and "chosen fell" in capsys.readouterr().out


def test_a_runs_relative_paths_are_read_from_where_it_was_started(tiny_model_dir, pairs_file, tmp_path, monkeypatch):
    """A run started in folder W with ``--model m --data pairs.jsonl --output_dir runs/x`` keeps
    those paths as typed in run.yaml; read from another folder, its model and data are W's, and
    its models load. A run moved elsewhere (its folder no longer tells) keeps them as written."""
    from alignlab import train
    from alignlab.training.saved import run_config
    from tests.training.helpers import base_config

    work = tmp_path / "w"
    work.mkdir()
    shutil.copytree(tiny_model_dir, work / "m")
    shutil.copy(pairs_file, work / "pairs.jsonl")
    monkeypatch.chdir(work)
    train(base_config("m", "pairs.jsonl", "runs/x", method="dpo", max_steps=1, save_every=1, keep_checkpoints=0))
    saved = yaml.safe_load((work / "runs" / "x" / "run.yaml").read_text())
    assert saved["model"] == "m" and saved["data"] == "pairs.jsonl"  # as typed
    monkeypatch.chdir(tmp_path)
    config = run_config("w/runs/x")
    assert config["model"] == str(work / "m") and config["data"] == str(work / "pairs.jsonl")
    labels = [label for label, _ in run_models("w/runs/x")]
    assert labels[0] == "start" and labels[-1] == "final"
    start = dict(run_models("w/runs/x"))["start"]()
    assert start.config.vocab_size > 0
    shutil.move(work / "runs" / "x", tmp_path / "moved")  # its folder no longer tells where it started
    assert run_config(tmp_path / "moved")["model"] == "m"
