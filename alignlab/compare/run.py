"""Running a comparison: check what an earlier run left, make the shared data once, run the cells
as processes (``jobs`` at a time), then write the report.

    OUT/compare.json          the plan: every cell (id, kind, row, seed, grid values), in report order
    OUT/data/                 the synthetic feedback every cell trains on (with spec.json, how it was made)
    OUT/cells/ID/cell.json    the cell's settings and threads; ID is its grid values, e.g. method=dpo,seed=0
    OUT/cells/ID/log.txt      its output, every attempt appended
    OUT/cells/ID/attempts.json  each attempt's start, wall time and end (``compare/attempts.py``)
    OUT/cells/ID/result.json  written last by a cell that finished (``compare/cell.py``)
    OUT/cells/ID/failed.json  the return code and log of a cell that failed
    OUT/report.html, OUT/report.md, OUT/report/*.png   the report (``alignlab.report``)

Rerunning the same command skips every cell with a result.json, resumes the others (a training
run continues from its newest checkpoint) and reruns the failed ones. A finished cell whose
settings the config now changes is a one-line error: its result would no longer be the config's.
An unfinished cell whose settings changed starts afresh; one resumed keeps the threads it was first
given, so it computes what an uninterrupted run would. The cells run in the config's folder. One
comparison at a time runs in an output_dir (``OUT/.lock``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import alignlab
from alignlab.compare.attempts import LAUNCHED, hold_lock, lock_holder
from alignlab.compare.cell import LOCK, RESULT, write_json
from alignlab.compare.config import Cell, Plan, available_cores
from alignlab.errors import ConfigError, Interrupted, UserError

PLAN = "compare.json"
FAILED = "failed.json"


@dataclass
class Outcome:
    """What a run of the comparison did."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # finished earlier
    failed: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> returncode, log
    report: dict[str, Path] = field(default_factory=dict)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cell_record(plan: Plan, cell: Cell, threads: int | None = None) -> dict[str, Any]:
    """What ``cell.json`` holds (as it reads back: JSON turns tuples into lists); ``threads``: the
    intra-op threads it runs with."""
    record = {"id": cell.id, "kind": cell.kind, "group": cell.group, "seed": cell.seed, "values": cell.values,
              "settings": cell.settings, "data_dir": str(plan.data_dir), "threads": threads}
    return json.loads(json.dumps(record))


def settings_now(plan: Plan, cell: Cell, saved: dict[str, Any]) -> dict[str, Any]:
    """The cell's settings as the config gives them now, to compare with those of its ``saved``
    cell.json; a cell saved before its data files' contents were recorded is compared without them,
    and a data file no longer there by the contents it had."""
    now = cell_record(plan, cell)["settings"]
    before = saved.get("settings", {}).get("data_contents")
    if not isinstance(before, dict):
        now.pop("data_contents", None)
        return now
    contents = now.setdefault("data_contents", {})
    for key, digest in before.items():  # a data file gone since (moved, deleted) cannot be compared: kept
        contents.setdefault(key, digest)
    return now


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys whose values differ, one level into ``train`` (a training config)."""
    keys = sorted(set(old) | set(new))
    out = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        else:
            out.append(key)
    return out


def check_earlier(plan: Plan) -> list[Cell]:
    """The cells left to run. A finished cell whose settings differ from the config's is an error;
    an unfinished one is cleared (it starts afresh). Nothing else is touched."""
    todo = []
    for cell in plan.cells:
        folder = plan.cell_dir(cell)
        saved = folder / "cell.json"
        if not saved.exists():
            todo.append(cell)
            continue
        old = json.loads(saved.read_text())
        differ = _differences(old.get("settings", {}), settings_now(plan, cell, old))
        if differ and (folder / RESULT).exists():
            differ = [f"the contents of {d.split('.', 1)[1]} (edited since)" if d.startswith("data_contents.")
                      else d for d in differ]
            raise ConfigError(f"output_dir: cell {cell.id} in {plan.output_dir} finished with other settings "
                              f"(differs in {', '.join(differ)}); use another output_dir, or delete {folder} to "
                              "run it again")
        if not (folder / RESULT).exists():
            todo.append(cell)
    return todo


def prepare_data(plan: Plan, todo: list[Cell]) -> None:
    """The task's SFT model when the cells start from it (checked, or built once here rather than
    in every cell), and the synthetic feedback, made once for every cell from the base model (kept
    while what made it stays the same)."""
    shapes = sorted({c.settings["feedback"] for c in todo if c.settings.get("feedback")})
    if not todo or plan.task is None or (plan.model is not None and not shapes):
        return
    from alignlab.testbed.demo import feedback_file
    from alignlab.testbed.feedback import FeedbackSpec, synthesize
    from alignlab.testbed.shipped import task_model

    model = plan.model or str(task_model(plan.task, "sft", log=_log, progress=True))
    if not shapes:
        return
    spec_file = plan.data_dir / "spec.json"
    recorded = {"feedback": plan.feedback, "model": model}
    if spec_file.exists() and json.loads(spec_file.read_text()) == recorded:
        _log(f"synthetic feedback: reusing {plan.data_dir}")
    else:
        shutil.rmtree(plan.data_dir, ignore_errors=True)
        spec = FeedbackSpec(**plan.feedback)
        _log(f"synthetic feedback: sampling {spec.k} answers to each of {spec.num_prompts} {plan.task} prompts from "
             f"{model}, scored by the {spec.reward} reward, into {plan.data_dir}")
        synthesize(model, spec, plan.data_dir, progress=True)
        write_json(spec_file, recorded)
    for shape in shapes:  # made here, once, not by two cells at the same time
        feedback_file(plan.data_dir, shape)


def cell_command(cell_dir: Path) -> list[str]:
    """The process that runs one cell."""
    return [sys.executable, "-m", "alignlab.compare.cell", str(cell_dir)]


def cell_threads(plan: Plan, cell: Cell, slots: int) -> int:
    """The intra-op threads of ``cell``: those it was first run with, recorded in its cell.json (a
    resumed cell computes the same bits as if it had not stopped, and finds what it cached), else
    its share of the cores among ``slots`` cells running at once."""
    saved = plan.cell_dir(cell) / "cell.json"
    if saved.exists():
        old = json.loads(saved.read_text())
        if old.get("threads") and old.get("settings") == settings_now(plan, cell, old):
            return int(old["threads"])
    return max(1, available_cores() // slots)


def cell_env() -> dict[str, str]:
    """The environment of a cell's process: this one's, with this package importable and the
    paths that name folders made absolute (the cell runs in the config's folder)."""
    package_root = str(Path(alignlab.__file__).resolve().parents[1])
    paths = [package_root] + [str(Path(p).absolute()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    if env.get("ALIGNLAB_CACHE"):
        env["ALIGNLAB_CACHE"] = str(Path(env["ALIGNLAB_CACHE"]).expanduser().absolute())
    return env


# How running cells are stopped, step by step: SIGTERM (a training run ends its step and writes a
# checkpoint), then SIGINT (after SIGTERM, a training run stops at once), then SIGKILL; each waits
# this many seconds for them to end, or for the next Ctrl-C.
STOPS = ((signal.SIGTERM, 60.0), (signal.SIGINT, 5.0), (None, 0.0))


class CtrlC:
    """Ctrl-C presses (and SIGTERM: ``kill``, ``timeout``, a batch scheduler, taken as a press)
    counted by a handler of SIGINT and SIGTERM while the cells run, instead of raised as
    ``KeyboardInterrupt`` wherever the harness happens to be: raised inside ``Popen.poll``, that
    exception can leave the process object's internal lock held, after which ``wait`` blocks
    forever and the harness cannot stop its cells. Off the main thread (where no handler can be
    set) presses arrive as ``KeyboardInterrupt`` as usual."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.presses = 0
        self._previous: dict[int, Any] = {}

    def _press(self, signum, frame) -> None:
        self.presses += 1

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._press) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def _stop(running: dict[str, tuple[subprocess.Popen, Cell, float, Any]], ctrl_c: CtrlC) -> None:
    """Stop the running cells, each step of ``STOPS`` taken when the previous one timed out or
    the user pressed Ctrl-C again."""
    procs = [proc for proc, _, _, _ in running.values()]
    _log(f"stopping {len(procs)} running cells (a training run writes a checkpoint first); Ctrl-C again to stop "
         "them at once")
    handled = 1  # the press that started the stop; any later one, even in the same burst, is "again"
    for sig, seconds in STOPS:
        for proc in procs:
            if proc.poll() is None:
                proc.kill() if sig is None else proc.send_signal(sig)
        deadline = time.monotonic() + seconds
        try:
            while (time.monotonic() < deadline and ctrl_c.presses <= handled
                   and any(proc.poll() is None for proc in procs)):
                time.sleep(0.05)
        except KeyboardInterrupt:  # off the main thread
            ctrl_c.presses += 1
        if ctrl_c.presses > handled:
            handled = ctrl_c.presses
            _log("stopping them at once")
        if all(proc.poll() is not None for proc in procs):
            break
    for proc, _, _, log in running.values():
        proc.wait()
        log.close()


def ending(code: int) -> str:
    """How a cell's process ended, as a person reads it: ``exit 1``, or ``killed by SIGKILL`` for a
    process a signal ended (from outside the comparison: the out-of-memory killer, a kill command)."""
    if code >= 0:
        return f"exit {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def run_cells(plan: Plan, cells: list[Cell], command: Callable[[Path], list[str]] = cell_command,
              poll: float = 0.2) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Run ``cells`` as processes in the config's folder (its relative paths are read from there),
    ``plan.jobs`` at once, each with its threads (``cell_threads``); return the ids that finished
    and the failures (id -> return code, log path). A cell failed when its process exits non-zero
    or leaves no result.json. On an interrupt the running cells are stopped (not marked failed: a
    rerun resumes them) and ``Interrupted`` is raised."""
    slots = max(1, min(plan.jobs, len(cells)))
    env = cell_env()
    pending = list(cells)
    running: dict[str, tuple[subprocess.Popen, Cell, float, Any]] = {}
    done: list[str] = []
    failed: dict[str, dict[str, Any]] = {}
    total = len(cells)
    with CtrlC() as ctrl_c:
        try:
            while (pending or running) and not ctrl_c.presses:
                while pending and len(running) < slots:
                    cell = pending.pop(0)
                    folder = plan.cell_dir(cell)
                    threads = cell_threads(plan, cell, slots)
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / FAILED).unlink(missing_ok=True)
                    write_json(folder / "cell.json", cell_record(plan, cell, threads))
                    log = (folder / "log.txt").open("a")
                    log.write(f"== {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(command(folder))}\n")
                    log.flush()
                    proc = subprocess.Popen(command(folder), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            cwd=plan.config_dir,
                                            env={**env, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                                                 LAUNCHED: repr(time.time())})
                    running[cell.id] = (proc, cell, time.perf_counter(), log)
                    _log(f"started  {cell.id} ({total - len(pending)} of {total})")
                time.sleep(poll)
                for cell_id, (proc, cell, started, log) in list(running.items()):
                    code = proc.poll()
                    if code is None:
                        continue
                    log.close()
                    del running[cell_id]
                    folder = plan.cell_dir(cell)
                    seconds = time.perf_counter() - started
                    if code == 0 and (folder / RESULT).exists():
                        done.append(cell_id)
                        _log(f"finished {cell_id} in {seconds:.0f} s ({len(done) + len(failed)} of {total} done)")
                    else:
                        info = {"returncode": code, "log": str(folder / "log.txt"), "seconds": round(seconds, 1)}
                        write_json(folder / FAILED, info)
                        failed[cell_id] = info
                        _log(f"FAILED   {cell_id} ({ending(code)}; log: {info['log']}) ({len(done) + len(failed)} "
                             f"of {total} done; a rerun of the comparison runs it again)")
        except KeyboardInterrupt:  # off the main thread
            ctrl_c.presses += 1
        if ctrl_c.presses:  # a second press stops the cells at once
            _stop(running, ctrl_c)
            raise Interrupted(f"comparison interrupted with {len(running)} cells running; run the same command "
                              "again to resume it") from None
    return done, failed


def write_plan(plan: Plan) -> None:
    """``OUT/compare.json``: the cells in report order, for the report (and `alignlab report OUT`)."""
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    write_json(plan.output_dir / PLAN, {
        "config": str(Path(plan.path).absolute()), "task": plan.task, "jobs": plan.jobs, "feedback": plan.feedback,
        "cells": [{"id": c.id, "kind": c.kind, "group": c.group, "seed": c.seed, "values": c.values}
                  for c in plan.cells],
    })


def run_compare(plan: Plan, command: Callable[[Path], list[str]] | None = None) -> Outcome:
    """Run every cell of ``plan`` that has not finished, then write the report. ``command(CELL_DIR)``:
    the process of one cell (default ``cell_command``). One comparison at a time writes to an
    output_dir: another one started on it meanwhile is refused."""
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    lock = hold_lock(plan.output_dir / LOCK)
    if lock is None:
        raise UserError(f"output_dir: {plan.output_dir} is in use by another alignlab compare (pid "
                        f"{lock_holder(plan.output_dir / LOCK)}); wait for it to end, or give this one another "
                        "output_dir")
    try:
        return _run(plan, command or cell_command)
    finally:
        lock.close()


def check_not_running(plan: Plan, todo: list[Cell]) -> None:
    """A one-line error when a cell left to run is still running in a process of its own (its
    ``CELL_DIR/.lock`` held: left by a comparison that was killed): its folder is neither cleared
    nor run a second time."""
    for cell in todo:
        folder = plan.cell_dir(cell)
        if not folder.is_dir():
            continue
        lock = hold_lock(folder / LOCK)
        if lock is None:
            raise UserError(f"output_dir: cell {cell.id} is still running in another process (pid "
                            f"{lock_holder(folder / LOCK)}), perhaps left by a comparison that was killed; wait for "
                            "it or stop it, then run the comparison again")
        lock.close()


def _run(plan: Plan, command: Callable[[Path], list[str]]) -> Outcome:
    from alignlab.report import write_report

    todo = check_earlier(plan)
    check_not_running(plan, todo)
    outcome = Outcome(skipped=[c.id for c in plan.cells if c not in todo])
    write_plan(plan)
    if outcome.skipped:
        _log(f"{len(outcome.skipped)} cells finished earlier and are kept; {len(todo)} to run")
    if todo:
        for cell in todo:  # an unfinished cell of other settings starts afresh
            folder = plan.cell_dir(cell)
            saved = folder / "cell.json"
            old = json.loads(saved.read_text()) if saved.exists() else None
            if old is not None and old.get("settings") != settings_now(plan, cell, old):
                _log(f"{cell.id}: its settings changed since it was started; starting it afresh")
                shutil.rmtree(folder)
        prepare_data(plan, todo)
        outcome.ran, outcome.failed = run_cells(plan, todo, command)
    outcome.report = write_report(plan.output_dir)
    return outcome
