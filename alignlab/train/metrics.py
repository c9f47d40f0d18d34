"""Metrics as JSON lines beside the checkpoints (rank 0 only), and the progress bar."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl``. On resume, lines after the resumed
    step are dropped first, so the file reads as one uninterrupted run."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None = None):
        self.path = path
        self.enabled = enabled
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            path.write_text("")
        elif path.exists():
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
            with self.path.open("a") as f:
                f.write(json.dumps(clean) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a metrics.jsonl file, in order."""
    p = Path(path)
    return [json.loads(line) for line in p.read_text().splitlines() if line] if p.exists() else []


def short(metrics: dict[str, float], keys=("loss", "rewards/accuracies", "rewards/margins", "lr")) -> dict[str, str]:
    return {k.split("/")[-1]: f"{metrics[k]:.4g}" for k in keys if k in metrics}
