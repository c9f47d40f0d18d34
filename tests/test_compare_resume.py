"""A comparison's cell interrupted mid-run and resumed by a rerun: it runs with the threads it was
first given (though fewer cells are left to share the cores), reads the reference log-probs its
first attempt cached, ends with exactly the weights of an uninterrupted cell, and its time is the
sum of its attempts."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from alignlab.compare import run as compare_run
from alignlab.compare.config import load_plan
from tests.training.helpers import weights

pytestmark = pytest.mark.slow

# Runs a cell as `alignlab compare` does; the first attempt of seed=0 is stopped by a SIGTERM that
# arrives while its step 3 is saved (as Ctrl-C or `kill` would stop it): the loop ends the step,
# keeps the checkpoint and the cell exits 130.
INTERRUPT_ONCE = r"""
import os, signal, sys
from pathlib import Path
import alignlab.training.loop as loop
cell = Path(sys.argv[1])
if cell.name == "seed=0" and not (cell / "run" / "checkpoints").exists():
    real = loop.save
    def save(inp, unwrapped, optimizer, scheduler, step, *rest):
        real(inp, unwrapped, optimizer, scheduler, step, *rest)
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
    loop.save = save
from alignlab.compare.cell import main
sys.exit(main([str(cell)]))
"""

CONFIG = """
output_dir: {out}
jobs: 2
base: {{model: {model}, data: {data}, method: dpo, max_steps: 6, batch_size: 4, save_every: 3, lr: 1.0e-3,
        max_length: 128, scheduler: linear, warmup_steps: 1}}
grid:
  seed: {seeds}
"""


def _plan(name: str, model: Path, data: Path, seeds: str = "[0, 1]"):
    """The config beside the data, which it names by a relative path (read from the config's folder)."""
    path = data.parent / f"{name}.yaml"
    path.write_text(textwrap.dedent(CONFIG.format(out=name, model=model, data=data.name, seeds=seeds)))
    return load_plan(path)


def test_a_resumed_cell_keeps_its_threads_and_cache_and_ends_as_an_uninterrupted_one(
        tmp_path, tiny_model_dir, pairs_file, monkeypatch):
    monkeypatch.setattr(compare_run, "available_cores", lambda: 2)  # 2 cells at once: 1 thread each
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    command = lambda d: [sys.executable, "-c", INTERRUPT_ONCE, str(d)]  # noqa: E731

    cut = _plan("cut", tiny_model_dir, pairs_file)
    first = compare_run.run_compare(cut, command=command)
    assert first.ran == ["seed=1"] and first.failed["seed=0"]["returncode"] == 130
    folder = cut.cell_dir(cut.cells[0])
    assert json.loads((folder / "cell.json").read_text())["threads"] == 1
    log_before = (folder / "log.txt").read_text()
    assert "stopped by SIGTERM after step 3 of 6" in log_before

    second = compare_run.run_compare(cut, command=command)  # one cell left: it still gets 1 thread
    assert second.ran == ["seed=0"] and second.skipped == ["seed=1"]
    resumed_log = (folder / "log.txt").read_text()[len(log_before):]
    assert "cell seed=0 (train), seed 0, 1 threads" in resumed_log, resumed_log
    assert "resuming the run" in resumed_log and "reference log-probs: read 32 from the cache" in resumed_log

    monkeypatch.setattr(compare_run, "available_cores", lambda: 1)  # a cell alone: 1 thread
    full = _plan("full", tiny_model_dir, pairs_file, seeds="[0]")
    assert compare_run.run_compare(full).ran == ["seed=0"]
    a = weights(full.cell_dir(full.cells[0]) / "run" / "model")
    b = weights(folder / "run" / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    attempts = json.loads((folder / "attempts.json").read_text())
    assert [x["end"] for x in attempts] == ["interrupted", "ok"]
    result = json.loads((folder / "result.json").read_text())
    assert result["attempts"] == 2
    assert result["seconds"] == pytest.approx(sum(x["seconds"] for x in attempts), abs=0.051)
    assert all(x["seconds"] > 0.5 for x in attempts)  # each loaded a model and trained
    assert "(stopped or failed, then resumed; their time counts every attempt): seed=0 (2 attempts)." in \
        (cut.output_dir / "report.md").read_text()
