"""Reading what runs left on disk into one shape the report renders: cells with their final
metrics, learning curves, answers and diagnostics.

A comparison (``alignlab compare``'s output folder) is read from its plan, ``compare.json``, and each
cell's folder: ``result.json`` (finished), ``failed.json`` (failed: return code and log) or neither
(running, while its process runs; else not run, or interrupted). A single training run (``alignlab train``'s output folder) is one cell:
``run.yaml``, ``summary.json`` when it finished and ``metrics.jsonl``, read even while it runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

OK, FAILED, NOT_RUN, RUNNING = "ok", "failed", "not run", "running"


@dataclass
class CellResult:
    """One cell (one seed of one row): what it measured, or why it has nothing."""

    id: str
    kind: str  # train, base, decode (comparison cells) or run (a training run)
    group: str  # its row in the report
    seed: int | None
    status: str = NOT_RUN
    metrics: dict[str, float] = field(default_factory=dict)  # final: eval/..., train/..., steps, seconds
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl records, in step order
    answers: list[dict[str, Any]] | None = None  # one per held-out prompt: prompt (index), gold, ...
    diagnostics: dict[str, Any] = field(default_factory=dict)
    log: str | None = None  # relative to the report's folder
    returncode: int | None = None
    steps: int | None = None
    attempts: int | None = None  # the processes it took (more than one: resumed after a stop or a failure)


@dataclass
class Collected:
    """What a report shows: a comparison's cells, or a training run as one cell."""

    kind: str  # "comparison" or "run"
    root: Path  # the folder the report is written to
    title: str
    cells: list[CellResult]
    task: str | None = None
    config: dict[str, Any] = field(default_factory=dict)  # a run's run.yaml, flat

    @property
    def groups(self) -> list[str]:
        """The rows, in the order of their first cell."""
        return list(dict.fromkeys(c.group for c in self.cells))

    def of(self, group: str) -> list[CellResult]:
        return [c for c in self.cells if c.group == group]


CELL_HINT = "; delete the cell's folder to run it again"


def read_json(path: Path, hint: str = "") -> dict[str, Any]:
    """A JSON object from ``path``; a file that is not one is a one-line error naming it (and ``hint``)."""
    from alignlab.errors import UserError

    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: cannot read it as JSON ({e}){hint}") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(value).__name__}{hint}")
    return value


def read_yaml_config(path: Path) -> dict[str, Any]:
    """A saved run config (run.yaml); a file that is not a YAML mapping is a one-line error naming it."""
    from alignlab.errors import UserError

    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, OSError, ValueError) as e:
        raise UserError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a mapping of config keys, got {type(value).__name__}")
    return value


def field_of(path: Path, record: dict[str, Any], key: str, hint: str = "") -> dict[str, Any]:
    """``record[key]``, a JSON object (``{}`` when absent) of a file read from ``path``; any other
    value is a one-line error naming the file and the field (and ``hint``)."""
    from alignlab.errors import UserError

    value = record.get(key, {})
    if not isinstance(value, dict):
        raise UserError(f"{path}, field '{key}': expected a JSON object, got {type(value).__name__}{hint}")
    return value


def _plan_cells(path: Path, plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The cells of a comparison's plan (``compare.json``): objects with an id, a kind and a group."""
    from alignlab.errors import UserError

    cells = plan.get("cells")
    if not isinstance(cells, list):
        got = "nothing" if cells is None else type(cells).__name__
        raise UserError(f"{path}, field 'cells': expected a list of cells, got {got}")
    for number, entry in enumerate(cells, 1):
        if not isinstance(entry, dict):
            raise UserError(f"{path}, cell {number}: expected a JSON object, got {type(entry).__name__}")
        for key in ("id", "kind", "group"):
            if not isinstance(entry.get(key), str):
                raise UserError(f"{path}, cell {number}: no '{key}'" if key not in entry else
                                f"{path}, cell {number}, field '{key}': expected a string, got {entry[key]!r}")
    return cells


def round_folders(run_dir: Path, below: str = "train") -> list[Path]:
    """``round-N/below`` of a rounds' folder, in the order of N; a folder whose name is not
    ``round-`` and a number (one kept aside by hand) is none of the rounds."""
    numbers = {p.relative_to(run_dir).parts[0][6:]: p for p in run_dir.glob(f"round-*/{below}")}
    return [p for _, p in sorted((int(n), p) for n, p in numbers.items() if re.fullmatch("[1-9][0-9]*", n))]


def rounds_finished_untrained(run_dir: Path, config: dict[str, Any]) -> bool:
    """Whether every round of a rounds' folder finished (``round-N/round.json``) and none trained
    (each round's samples made no training data)."""
    done = round_folders(run_dir, "round.json")
    return bool(done) and len(done) == config.get("rounds") and not round_folders(run_dir, "train/summary.json")


def rounds_steps(run_dir: Path) -> int | None:
    """The optimizer steps of a rounds' folder: the sum over its rounds that trained
    (``round-N/train/summary.json``); None for a folder of no rounds."""
    summaries = round_folders(run_dir, "train/summary.json")
    if not summaries:
        return None
    steps = [read_json(path).get("steps") for path in summaries]
    return sum(int(n) for n in steps if isinstance(n, (int, float)) and not isinstance(n, bool))


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, JSON object) of each line of a JSON-lines file (see ``read_jsonl``)."""
    from alignlab.errors import UserError

    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):
                continue
            raise UserError(f"{path}, line {number}: not a JSON object (a damaged file? only its last line may be "
                            "cut short)") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
        yield number, record


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file. Its last line may be cut short (a process killed, or
    still writing it) and is then skipped; any other line that is no JSON object is a one-line
    error naming the file and the line."""
    return [record for _, record in _records(path)]


def read_answers(path: Path) -> list[dict[str, Any]]:
    """A cell's answers.jsonl (``read_jsonl``): each row's ``prompt`` a whole number (the held-out
    prompt's index) and its ``gold`` a number; any other row is a one-line error naming the file,
    the line and the field."""
    from alignlab.errors import UserError

    rows = []
    for number, record in _records(path):
        for key, ok, what in (("prompt", isinstance(record.get("prompt"), int), "a whole number (the prompt's index)"),
                              ("gold", _number(record.get("gold")), "a number")):
            if key not in record:
                raise UserError(f"{path}, line {number}: no '{key}'{CELL_HINT}")
            if not ok or isinstance(record[key], bool):
                raise UserError(f"{path}, line {number}, field '{key}': expected {what}, got {record[key]!r}"
                                f"{CELL_HINT}")
        rows.append(record)
    return rows


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """A metrics.jsonl's records (``read_jsonl``) with their numbers (a metric that is none, such
    as text, is left out: there is nothing to plot); a record's ``step``, when it has one, must be
    a number."""
    from alignlab.errors import UserError

    out = []
    for number, record in _records(path):
        if "step" in record and not _number(record["step"]):
            raise UserError(f"{path}, line {number}, field 'step': expected a number, got {record['step']!r}")
        out.append({k: v for k, v in record.items() if v is None or _number(v)})
    return out


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """A training run's metrics.jsonl records; for rounds (``round-N/train/``), every round's in
    turn, each round's steps after the previous rounds'."""
    if (run_dir / "metrics.jsonl").exists():
        return read_metrics(run_dir / "metrics.jsonl")
    rounds = round_folders(run_dir)
    history, offset = [], 0
    for folder in rounds:
        rows = read_metrics(folder / "metrics.jsonl")
        history += [{**row, "step": row.get("step", 0) + offset} for row in rows]
        offset += max((row.get("step", 0) for row in rows), default=0)
    return history


def _relative(path: str | Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def cell_running(folder: Path) -> bool:
    """Whether a cell is running now: its last attempt (``attempts.json``) says ``running`` and the
    process whose pid its ``.lock`` holds is alive (one killed outright leaves ``running`` behind)."""
    import os

    try:
        attempts = json.loads((folder / "attempts.json").read_text())
        pid = int((folder / ".lock").read_text().strip())
    except (OSError, ValueError):
        return False
    if not (isinstance(attempts, list) and attempts and isinstance(attempts[-1], dict)
            and attempts[-1].get("end") == "running") or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, another user's
        return True
    return True


def collect_comparison(out: Path) -> Collected:
    """The cells of the comparison in ``out`` (see the module docstring)."""
    from alignlab.errors import UserError

    plan = read_json(out / "compare.json")
    cells = []
    for entry in _plan_cells(out / "compare.json", plan):
        folder = out / "cells" / entry["id"]
        cell = CellResult(entry["id"], entry["kind"], entry["group"], entry.get("seed"))
        if (folder / "result.json").exists():
            result = read_json(folder / "result.json", CELL_HINT)
            cell.status = OK
            metrics = field_of(folder / "result.json", result, "metrics", CELL_HINT)
            cell.metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            if "seconds" in result:  # the wall time of all its attempts
                cell.metrics["seconds"] = result["seconds"]
            cell.attempts = result.get("attempts")
            cell.steps = result.get("steps")
            if entry["kind"] == "train" and (folder / "run" / "rounds.yaml").exists():
                cell.steps = rounds_steps(folder / "run") or 0  # every round's, not the last one's
            if entry["kind"] == "train" and cell.steps is not None:
                cell.metrics["steps"] = cell.steps
            cell.diagnostics = field_of(folder / "result.json", result, "diagnostics", CELL_HINT)
            if result.get("answers"):
                if not isinstance(result["answers"], str):
                    raise UserError(f"{folder / 'result.json'}, field 'answers': expected a file name, got "
                                    f"{type(result['answers']).__name__}{CELL_HINT}")
                cell.answers = read_answers(folder / result["answers"])
        elif (folder / "failed.json").exists():
            failed = read_json(folder / "failed.json", CELL_HINT)
            cell.status, cell.returncode = FAILED, failed.get("returncode")
        elif cell_running(folder):
            cell.status = RUNNING
        if (folder / "log.txt").exists():
            cell.log = _relative(folder / "log.txt", out)
        if entry["kind"] == "train":
            cell.history = read_history(folder / "run")
        cells.append(cell)
    title = f"Comparison: {Path(plan.get('config') or out).name}" + (f" on the {plan['task']} task" if plan.get("task")
                                                                     else "")
    return Collected("comparison", out, title, cells, plan.get("task"), {"config": plan.get("config")})


def collect_run(run_dir: Path) -> Collected:
    """A training run (finished or not; rounds too) as a comparison of one cell."""
    from alignlab.config import flat_config

    saved = next((run_dir / name for name in ("run.yaml", "rounds.yaml") if (run_dir / name).exists()), None)
    config = flat_config(read_yaml_config(saved)) if saved else {}
    method = str(config.get("method", "run"))
    cell = CellResult(run_dir.name, "run", method, config.get("seed"), history=read_history(run_dir))
    rounds = round_folders(run_dir, "train/summary.json")
    summary_file = run_dir / "summary.json" if (run_dir / "summary.json").exists() or not rounds else rounds[-1]
    if summary_file.exists():
        summary = read_json(summary_file)
        cell.status, cell.steps = OK, summary.get("steps")
        if summary_file != run_dir / "summary.json":  # rounds: every round's steps, not the last one's
            cell.steps = rounds_steps(run_dir)
        cell.metrics = {**field_of(summary_file, summary, "eval_metrics"),
                        **{f"train/{k}": v for k, v in field_of(summary_file, summary, "train_metrics").items()
                           if k not in ("step", "epoch")}}
        cell.metrics = {k: v for k, v in cell.metrics.items() if isinstance(v, (int, float))}
    elif saved is not None and saved.name == "rounds.yaml" and rounds_finished_untrained(run_dir, config):
        cell.status, cell.steps = OK, 0
    elif cell.history:
        cell.status = "running or interrupted"
    title = f"Training run: {run_dir.name} ({method})"
    return Collected("run", run_dir, title, [cell], config.get("task"), config)
