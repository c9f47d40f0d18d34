"""A comparison's cell interrupted mid-run and resumed by a rerun: it runs with the threads it was
first given (though fewer cells are left to share the cores), reads the reference log-probs its
first attempt cached, ends with exactly the weights of an uninterrupted cell, and its time is the
sum of its attempts. The two cells differ only in ``run_name`` (the run's name for trackers), so
they train alike: one is interrupted, the other is not."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from alignlab.compare import run as compare_run
from alignlab.compare.config import load_plan
from tests.training.helpers import weights

pytestmark = pytest.mark.slow

# Runs a cell as `alignlab compare` does; the first attempt of run_name=a is stopped by a SIGTERM
# that arrives while its step 3 is saved (as Ctrl-C or `kill` would stop it): the loop ends the
# step, keeps the checkpoint and the cell exits 130.
INTERRUPT_ONCE = r"""
import os, signal, sys
from pathlib import Path
import alignlab.training.loop as loop
cell = Path(sys.argv[1])
if cell.name == "run_name=a" and not (cell / "run" / "checkpoints").exists():
    real = loop.save
    def save(inp, unwrapped, optimizer, scheduler, step, *rest):
        real(inp, unwrapped, optimizer, scheduler, step, *rest)
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
    loop.save = save
from alignlab.compare.cell import main
sys.exit(main([str(cell)]))
"""

# Beside the data, which it names by a relative path (read from the config's folder).
CONFIG = """
output_dir: out
jobs: 2
base: {{model: {model}, data: pairs.jsonl, method: dpo, max_steps: 6, batch_size: 4, save_every: 3, lr: 1.0e-3,
        max_length: 128, scheduler: linear, warmup_steps: 1}}
grid:
  run_name: [a, b]
"""


def test_a_resumed_cell_keeps_its_threads_and_cache_and_ends_as_an_uninterrupted_one(
        tmp_path, tiny_model_dir, pairs_file, monkeypatch):
    monkeypatch.setattr(compare_run, "available_cores", lambda: 2)  # 2 cells at once: 1 thread each
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    path = pairs_file.parent / "compare.yaml"
    path.write_text(CONFIG.format(model=tiny_model_dir))
    plan = load_plan(path)
    command = lambda d: [sys.executable, "-c", INTERRUPT_ONCE, str(d)]  # noqa: E731

    first = compare_run.run_compare(plan, command=command)
    assert first.ran == ["run_name=b"] and first.failed["run_name=a"]["returncode"] == 130
    cut, full = (plan.cell_dir(c) for c in plan.cells)
    assert json.loads((cut / "cell.json").read_text())["threads"] == 1
    log_before = (cut / "log.txt").read_text()
    assert "stopped by SIGTERM after step 3 of 6" in log_before

    second = compare_run.run_compare(plan, command=command)  # one cell left: it still gets 1 thread
    assert second.ran == ["run_name=a"] and second.skipped == ["run_name=b"]
    resumed_log = (cut / "log.txt").read_text()[len(log_before):]
    assert "cell run_name=a (train), seed 0, 1 threads" in resumed_log, resumed_log
    assert "resuming the run" in resumed_log and "reference log-probs: read 32 from the cache" in resumed_log
    a, b = weights(full / "run" / "model"), weights(cut / "run" / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    attempts = json.loads((cut / "attempts.json").read_text())
    assert [x["end"] for x in attempts] == ["interrupted", "ok"]
    result = json.loads((cut / "result.json").read_text())
    assert result["attempts"] == 2
    assert result["seconds"] == pytest.approx(sum(x["seconds"] for x in attempts), abs=0.011)
    assert all(x["seconds"] > 0.5 for x in attempts)  # each loaded a model and trained
    assert "(stopped or failed, then resumed; their time counts every attempt): run_name=a (2 attempts)." in \
        (plan.output_dir / "report.md").read_text()
