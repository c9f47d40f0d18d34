"""The names of a comparison's cells: their folders (``OUT/cells/ID``) and their rows in the report."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from typing import Any

from alignlab.errors import ConfigError


def slug(text: str) -> str:
    """``text`` as a folder name: characters other than letters, digits and ``._=+,-`` become ``_``;
    a long one is cut and given a hash of the whole, so two long names stay apart."""
    out = re.sub(r"[^A-Za-z0-9._=+,-]+", "_", text).strip("_.") or "_"
    if len(out) > 100:
        out = f"{out[:90]}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return out


def value_text(value: Any) -> str:
    """A grid value as a cell id and a report label show it: 2e-05, 0.1, dpo, true."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _full_name(cell) -> str:
    """A cell's name before ``slug``: its grid values, or its row and seed."""
    if cell.kind == "train":
        return ",".join(f"{k}={value_text(v)}" for k, v in cell.values.items())
    return f"{cell.group},seed={cell.seed}"


def distinct_ids(cells: list) -> list:
    """``cells`` with the ids that would name one folder (distinct values that differ only in the
    characters ``slug`` replaces, or in case, which some file systems ignore) told apart by a hash
    of their full names."""
    names = [c.id.lower() for c in cells]
    out = [replace(c, id=f"{c.id}-{hashlib.sha256(_full_name(c).encode()).hexdigest()[:8]}")
           if names.count(name) > 1 else c for c, name in zip(cells, names, strict=True)]
    ids = [c.id.lower() for c in out]
    twice = next((c.id for c, i in zip(out, ids, strict=True) if ids.count(i) > 1), None)
    if twice is not None:  # the same full names: given twice in a way the checks above do not see
        raise ConfigError(f"grid: two cells would share the folder '{twice}'; give each value once")
    return out


def group_label(values: dict[str, Any], method: str) -> str:
    """A train cell's row: its grid values but the seed (the method's name bare), or the method."""
    parts = [value_text(v) if k == "method" else f"{k}={value_text(v)}" for k, v in values.items() if k != "seed"]
    return ", ".join(parts) or method
