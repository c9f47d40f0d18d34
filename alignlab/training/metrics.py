"""Metrics as JSON lines beside the checkpoints (rank 0 only), and the progress bar."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from alignlab.training.sinks import Sinks


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl``. On resume, lines after the resumed
    step are dropped first, so the file reads as one uninterrupted run. Each record also goes to
    ``sinks`` (TensorBoard, W&B, trackio: ``sinks.py``), which ``close`` ends."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None = None, sinks: Sinks | None = None):
        self.path = path
        self.enabled = enabled
        self.sinks = sinks or Sinks()
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            path.write_text("")
        elif path.exists():
            kept = [line for line in path.read_text().splitlines() if _step(line) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
            with self.path.open("a") as f:
                f.write(json.dumps(clean) + "\n")
            self.sinks.write(record)

    def close(self, ok: bool = True) -> None:
        """End the sinks (``ok``: whether the run ended well)."""
        self.sinks.close(ok)

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, kind, value, tb) -> None:
        self.close(ok=kind is None)


def _record(line: str) -> dict[str, Any] | None:
    """One line's record; None for a blank line or one cut short by a killed process."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _step(line: str) -> float:
    record = _record(line)
    return math.inf if record is None else record.get("step", 0)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every complete record of a metrics.jsonl file, in order."""
    p = Path(path)
    records = [_record(line) for line in p.read_text().splitlines()] if p.exists() else []
    return [r for r in records if r is not None]


def short(metrics: dict[str, float], keys=("loss", "rewards/accuracies", "rewards/margins", "lr")) -> dict[str, str]:
    return {k.split("/")[-1]: f"{metrics[k]:.4g}" for k in keys if k in metrics}
