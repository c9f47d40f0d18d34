"""Reading back what the metric sinks wrote: TensorBoard event files and W&B offline runs."""

from __future__ import annotations

import json
import math
import struct
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from alignlab.training.metrics import read_metrics


def jsonl_scalars(out: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as the sinks should show it: each number's (step, value) in order, a null
    (not finite) as NaN."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for record in read_metrics(out / "metrics.jsonl"):
        for key, value in record.items():
            if key != "step" and (value is None or isinstance(value, (int, float))):
                series[key].append((record["step"], math.nan if value is None else float(value)))
    return dict(series)


def jsonl_by_step(out: Path) -> dict[int, dict[str, float]]:
    """metrics.jsonl's numbers merged per step (a step's training and evaluation records)."""
    rows: dict[int, dict[str, float]] = defaultdict(dict)
    for key, points in jsonl_scalars(out).items():
        for step, value in points:
            rows[step][key] = value
    return dict(rows)


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a TensorBoard folder as TensorBoard shows it (events purged by a restart
    dropped), read with TensorBoard's own EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def same_float32(a: float, b: float) -> bool:
    """``a`` (float64, from metrics.jsonl) stored as TensorBoard stores it (float32) is ``b``."""
    a32 = struct.unpack("<f", struct.pack("<f", a))[0]
    return (math.isnan(a32) and math.isnan(b)) or a32 == b


def _wandb_records(path: Path):
    """The protobuf records of a ``.wandb`` file (W&B's transaction log: a 7-byte header, then
    LevelDB-log chunks in 32 KiB blocks: crc32, length, type; a record may span chunks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _items(items) -> dict[str, Any]:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def _number(value: Any) -> Any:
    return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(value, value)


def wandb_run(path: Path) -> dict[str, Any]:
    """An offline W&B run's file: its name, project, group and config, its history (one row per
    step, W&B's own keys left out) and its final summary."""
    run: dict[str, Any] = {"history": [], "summary": {}}
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.update(id=r.run_id, name=r.display_name, project=r.project, group=r.run_group,
                       started=r.start_time.ToNanoseconds(),
                       config={item.key: json.loads(item.value_json) for item in r.config.update})
        elif kind == "history":
            row = {k: _number(v) for k, v in _items(record.history.item).items() if not k.startswith("_")}
            run["history"].append((record.history.step.num, row))
        elif kind == "summary":
            run["summary"].update({k: _number(v) for k, v in _items(record.summary.update).items()
                                   if not k.startswith("_")})
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
    return run


def wandb_runs(folder: Path, wait_s: float = 60.0) -> list[dict[str, Any]]:
    """Every offline W&B run under ``folder`` (W&B's ``wandb/`` folder is inside it), oldest first.
    W&B's service process writes a run's file after ``finish()`` returns (it is complete when the
    process exits): each is read again until it holds its exit record, for up to ``wait_s``."""
    runs = []
    for path in folder.glob("wandb/offline-run-*/run-*.wandb"):
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                if "exit_code" in wandb_run(path):
                    break
            except Exception:  # a record still being written
                pass
            time.sleep(0.1)
        runs.append(wandb_run(path))
    return sorted(runs, key=lambda r: r["started"])


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal dicts of numbers, NaN equal to NaN."""
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)
