"""`bench/claims.py --smallest`: the whole pipeline of the seed papers' claims, at tiny sizes, writes
a report with one table row per claim, a verdict from the allowed set in each, and numbers for
every measured effect."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import bench_module

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def claims_module():
    return bench_module("claims")


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of the summary table's rows (the first table of the report), header excluded."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| claim | paper | measured"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return rows


def test_smallest_run_writes_one_row_per_claim(tmp_path):
    claims = claims_module()
    out = tmp_path / "claims.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "claims.py"), "--smallest", "--work",
                           str(tmp_path / "work"), "--out", str(out)], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()
    rows = table_rows(text)
    titles = [c.title for c in claims.all_claims(tmp_path / "work", [0], claims.SMALLEST)]
    assert len(titles) == 11 + 2 * len(claims.SMALLEST.ches_keep)  # the CHES claims: two filters at each share
    assert [r[0] for r in rows] == titles
    for claim, paper, measured, verdict in rows:
        assert paper, claim
        found = re.fullmatch(r"\*\*(.+?)\*\*: .+", verdict)
        assert found and found.group(1) in claims.VERDICTS, (claim, verdict)
        effects = measured.split("; ")
        assert effects, claim
        for effect in effects:  # "name = +0.123 ± 0.045 (...)" or "name = +0.123 (1 seed)"
            value = re.search(r" = (\S+)", effect)
            assert value, (claim, effect)
            assert math.isfinite(float(value.group(1))), (claim, effect)
    # one seed: no spread, so no claim can be decided either way
    assert {r[3].split("**")[1] for r in rows} == {"inconclusive"}
    for heading in ("## Verdict rules", "## Time", "Total wall time", "Machine:"):
        assert heading in text
    assert text.count("```\nalignlab ") == len(titles)  # each claim shows its commands
