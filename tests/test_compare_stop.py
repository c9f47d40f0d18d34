"""Stopping and restarting a comparison: Ctrl-C twice stops slow cells at once (none is left
running), a cell's attempts are timed even when its process is killed outright, and one process
at a time runs a cell or a comparison's folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from alignlab.compare import cell as compare_cell
from alignlab.compare import run as compare_run
from alignlab.compare.attempts import Attempt, hold_lock, lock_holder, read_attempts
from alignlab.compare.config import load_plan
from alignlab.errors import UserError
from tests.conftest import process_alive

# A cell slow to stop: SIGTERM only makes it say so (as a training run finishing a long step);
# SIGINT after it ends it (as the training loop's "Ctrl-C twice").
STUBBORN_CELL = r"""
import os, signal, sys, time
from pathlib import Path
cell = Path(sys.argv[1])
def term(*_):
    print("asked to stop", flush=True)
signal.signal(signal.SIGTERM, term)
signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
(cell / "pid").write_text(str(os.getpid()))
while True:
    time.sleep(0.05)
"""

# `alignlab compare CONFIG` with STUBBORN_CELL as every cell's process.
HARNESS = r"""
import sys
from alignlab import cli
from alignlab.compare import run
run.cell_command = lambda d: [sys.executable, "-c", CELL, str(d)]
sys.exit(cli.main(["compare", sys.argv[1]]))
"""

CONFIG = """
output_dir: {out}
jobs: 2
base: {{model: /models/m, data: /data/pairs.jsonl, method: dpo}}
grid: {{lr: [0.1, 0.2]}}
"""


def _wait_for(condition, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _start_harness(path) -> subprocess.Popen:
    """``alignlab compare PATH`` with STUBBORN_CELL as every cell's process."""
    return subprocess.Popen([sys.executable, "-c", HARNESS.replace("CELL", repr(STUBBORN_CELL)), str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _end(harness: subprocess.Popen, pids) -> None:
    """Whatever a test left running, killed (the harness, and each cell by the pid it wrote)."""
    if harness.poll() is None:
        harness.kill()
    for p in pids:
        if p.exists() and p.read_text() and process_alive(int(p.read_text())):
            os.kill(int(p.read_text()), signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_second_stop_signal_stops_slow_cells_at_once(tmp_path, sig):
    """The first Ctrl-C (or SIGTERM: kill, timeout, a batch scheduler) asks the cells to stop
    (SIGTERM) and waits; the second stops them at once: the command exits 130 within seconds, no
    cell process is left, none is marked failed."""
    out = tmp_path / "out"
    path = tmp_path / "compare.yaml"
    path.write_text(CONFIG.format(out=out))
    harness = _start_harness(path)
    pids = [out / "cells" / f"lr={lr}" / "pid" for lr in ("0.1", "0.2")]
    logs = [p.with_name("log.txt") for p in pids]
    try:
        _wait_for(lambda: all(p.exists() and p.read_text() for p in pids))
        harness.send_signal(sig)
        _wait_for(lambda: all("asked to stop" in log.read_text() for log in logs))
        time.sleep(0.3)
        assert harness.poll() is None  # waiting for the cells to write their checkpoints
        start = time.monotonic()
        harness.send_signal(sig)
        _, err = harness.communicate(timeout=20)
    finally:
        _end(harness, pids)
    assert harness.returncode == 130 and time.monotonic() - start < 5, err
    assert "stopping 2 running cells" in err and "stopping them at once" in err, err
    assert err.rstrip().endswith("alignlab: comparison interrupted with 2 cells running; run the same command again "
                                 "to resume it"), err
    assert not any(process_alive(int(p.read_text())) for p in pids)
    assert not list(out.glob("cells/*/failed.json"))


def test_a_cell_still_running_is_neither_cleared_nor_run_again(tmp_path):
    """A cell whose lock a process still holds (left by a comparison killed outright), and whose
    settings the config has since changed: the rerun is a one-line error naming the cell and the
    process, and the cell's folder is left as it is."""
    path = tmp_path / "compare.yaml"
    path.write_text(CONFIG.format(out=tmp_path / "out"))
    plan = load_plan(path)
    cell = plan.cells[0]
    folder = plan.cell_dir(cell)
    folder.mkdir(parents=True)
    record = compare_run.cell_record(plan, cell, 1)
    record["settings"]["train"]["lr"] = 0.5  # started under another config
    (folder / "cell.json").write_text(json.dumps(record))
    (folder / "log.txt").write_text("training\n")
    held = hold_lock(folder / compare_cell.LOCK)
    try:
        with pytest.raises(UserError) as e:
            compare_run.run_compare(plan, command=lambda d: ["false"])
    finally:
        held.close()
    assert str(e.value) == (f"output_dir: cell {cell.id} is still running in another process (pid {os.getpid()}), "
                            "perhaps left by a comparison that was killed; wait for it or stop it, then run the "
                            "comparison again")
    assert (folder / "log.txt").read_text() == "training\n" and not plan.cell_dir(plan.cells[1]).exists()


def test_ctrl_c_pressed_in_a_burst_always_stops_the_cells(tmp_path):
    """Presses that land anywhere in the harness (here: bursts of SIGINT at random moments, over
    and over) never leave it hung or its cells running: each run exits 130 within seconds with no
    cell process left. A press is counted by a handler, not raised inside whatever runs (raised
    inside ``Popen.poll`` it could leave the process's lock held and ``wait`` blocked forever)."""
    import random

    rng = random.Random(0)
    for attempt in range(4):
        out = tmp_path / f"out{attempt}"
        path = tmp_path / f"compare{attempt}.yaml"
        path.write_text(CONFIG.format(out=out))
        harness = _start_harness(path)
        pids = [out / "cells" / f"lr={lr}" / "pid" for lr in ("0.1", "0.2")]
        try:
            _wait_for(lambda pids=pids: all(p.exists() and p.read_text() for p in pids))
            for _ in range(rng.randint(2, 6)):
                harness.send_signal(signal.SIGINT)
                time.sleep(rng.uniform(0, 0.02))
            _, err = harness.communicate(timeout=20)
        finally:
            _end(harness, pids)
        assert harness.returncode == 130, err
        assert not any(process_alive(int(p.read_text())) for p in pids), err


def test_an_attempt_killed_outright_keeps_its_time_to_the_last_heartbeat(tmp_path):
    """A process killed by SIGKILL after 0.6 s, beating every 0.05 s, leaves an attempt still
    'running' with at least 0.5 s; the next attempt adds its own, and the total is their sum."""
    killed = textwrap.dedent(f"""
        import os, signal, time
        from pathlib import Path
        from alignlab.compare.attempts import Attempt
        with Attempt(Path({str(tmp_path)!r}), heartbeat=0.05):
            time.sleep(0.6)
            os.kill(os.getpid(), signal.SIGKILL)
        """)
    start = time.perf_counter()
    assert subprocess.run([sys.executable, "-c", killed]).returncode == -signal.SIGKILL
    whole = time.perf_counter() - start  # the process's life, Python's start included
    (first,) = read_attempts(tmp_path)
    assert first["end"] == "running" and 0.3 <= first["seconds"] <= whole, first

    start = time.perf_counter()
    with Attempt(tmp_path) as attempt:
        time.sleep(0.2)
        attempt.end = "ok"
    whole = time.perf_counter() - start
    seconds, count = attempt.total()
    recorded = read_attempts(tmp_path)
    assert [a["end"] for a in recorded] == ["running", "ok"] and count == 2
    assert 0.2 <= recorded[1]["seconds"] <= whole + 0.005
    assert seconds == pytest.approx(first["seconds"] + recorded[1]["seconds"], abs=0.006)


def test_an_attempt_is_timed_from_the_launch_of_its_process(tmp_path):
    """The harness tells a cell when it launched it; an attempt launched 5 s before it began
    counts those 5 s (its start-up: imports, loading)."""
    from alignlab.compare.attempts import LAUNCHED

    with Attempt(tmp_path, launched=time.time() - 5.0) as attempt:
        attempt.end = "ok"
    assert 5.0 <= attempt.seconds < 6.0 and 5.0 <= read_attempts(tmp_path)[0]["seconds"] < 6.0
    path = tmp_path / "compare.yaml"
    path.write_text(CONFIG.format(out=tmp_path / "out"))
    plan = load_plan(path)
    write = f"import os, sys; open(sys.argv[1] + '/launched', 'w').write(os.environ[{LAUNCHED!r}])"
    before = time.time()
    compare_run.run_cells(plan, plan.cells[:1], command=lambda d: [sys.executable, "-c", write, str(d)], poll=0.05)
    launched = float((plan.cell_dir(plan.cells[0]) / "launched").read_text())
    assert before <= launched <= time.time()


def test_an_attempt_that_raises_is_recorded_as_failed(tmp_path):
    with pytest.raises(RuntimeError), Attempt(tmp_path):
        raise RuntimeError("boom")
    assert [a["end"] for a in read_attempts(tmp_path)] == ["failed"]


def test_one_process_at_a_time_runs_a_cell_or_a_comparison(tmp_path, capsys):
    """A lock held elsewhere (here: by this process, through another open file) refuses a second
    holder, which is told the holder's pid; a comparison whose folder is locked is a one-line
    error, and so is a cell run twice at once (left by a killed comparison)."""
    first = hold_lock(tmp_path / "lock")
    assert first is not None and hold_lock(tmp_path / "lock") is None
    assert lock_holder(tmp_path / "lock") == str(os.getpid())
    first.close()
    again = hold_lock(tmp_path / "lock")
    assert again is not None
    again.close()

    path = tmp_path / "compare.yaml"
    path.write_text(CONFIG.format(out=tmp_path / "out"))
    plan = load_plan(path)
    plan.output_dir.mkdir()
    held = hold_lock(plan.output_dir / compare_run.LOCK)
    with pytest.raises(UserError, match=rf"^output_dir: {plan.output_dir} is in use by another alignlab compare "
                                        rf"\(pid {os.getpid()}\); wait for it to end"):
        compare_run.run_compare(plan, command=lambda d: ["false"])
    held.close()

    folder = plan.cell_dir(plan.cells[0])
    folder.mkdir(parents=True)
    (folder / "cell.json").write_text(json.dumps(compare_run.cell_record(plan, plan.cells[0], 1)))
    held = hold_lock(folder / compare_cell.LOCK)
    assert compare_cell.main([str(folder)]) == 2
    held.close()
    err = capsys.readouterr().err
    assert err == (f"alignlab: error: cell lr=0.1 is already running in another process (pid {os.getpid()}), "
                   "perhaps left by a comparison that was killed; wait for it or stop it\n")
    assert not (folder / "attempts.json").exists()


# A cell that finished: seed 1 after two attempts, its time their sum.
TIMED_CELL = r"""
import json, sys
from pathlib import Path
cell = Path(sys.argv[1])
seed = json.loads((cell / "cell.json").read_text())["seed"]
result = {"status": "ok", "metrics": {"eval/loss": 1.0}, "steps": 1, "seconds": 3.0 + 2 * seed, "attempts": 1 + seed}
(cell / "result.json").write_text(json.dumps(result))
"""


def test_the_report_shows_time_over_all_attempts_and_the_resumed_cells(tmp_path):
    """Seeds 0 and 1 took 3 s (one attempt) and 5 s (two): the row's time is 4 ± √2, and the
    report names the cell that took two attempts."""
    path = tmp_path / "compare.yaml"
    path.write_text(CONFIG.format(out=tmp_path / "out").replace("grid: {lr: [0.1, 0.2]}", "grid: {seed: [0, 1]}"))
    plan = load_plan(path)
    compare_run.run_compare(plan, command=lambda d: [sys.executable, "-c", TIMED_CELL, str(d)])
    md = (plan.output_dir / "report.md").read_text()
    assert "| row | seeds | eval loss | steps | time (s) |" in md
    assert "| dpo | 2 | 1.000 ± 0.000 | 1 | 4.000 ± 1.414 |" in md, md  # mean 4, sample std √2; a loss is no count
    assert "Cells that took more than one attempt (stopped or failed, then resumed; their time counts every attempt): " \
           "seed=1 (2 attempts)." in md
    assert ("Time: a cell's wall-clock seconds from the launch of its process (start-up included), summed over its "
            "attempts when it was resumed.") in md


def test_a_cell_ended_by_a_signal_from_outside_says_so(tmp_path, capsys, monkeypatch):
    """A cell's process killed from outside the comparison (the out-of-memory killer sends
    SIGKILL) is reported as killed by that signal, not as a bare negative exit code, and is run
    again by the next run of the comparison."""
    from alignlab import cli

    assert compare_run.ending(3) == "exit 3" and compare_run.ending(-15) == "killed by SIGTERM"
    assert compare_run.ending(-200) == "killed by signal 200"
    killed = "import os, signal, sys; os.kill(os.getpid(), signal.SIGKILL)"
    path = tmp_path / "compare.yaml"
    path.write_text(CONFIG.format(out=tmp_path / "out"))
    monkeypatch.setattr(compare_run, "cell_command", lambda d: [sys.executable, "-c", killed, str(d)])
    assert cli.main(["compare", str(path)]) == 1
    printed = capsys.readouterr()
    assert "FAILED lr=0.1 (killed by SIGKILL)" in printed.out, printed.out
    assert "a rerun of the comparison runs it again" in printed.err
    assert len(compare_run.check_earlier(load_plan(path))) == 2
