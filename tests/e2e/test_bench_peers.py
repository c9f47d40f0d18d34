"""`bench/dpo_vs_trl.py` and `bench/sft_vs_trl.py` at their smallest (the tiny model, 16 examples,
2 steps of 8): both frameworks train on the same batches in the same order, and their losses agree
at every step, the second after one update of each framework's optimizer. The scripts time
alignlab's run from inside (they wrap its saves and passes), so this also catches a change that
breaks them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("script", ["dpo_vs_trl", "sft_vs_trl"])
def test_smallest_run_gives_trl_the_same_batches_and_losses(tmp_path, script):
    pytest.importorskip("trl")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / f"{script}.py"), "--model", "tiny", "--pairs", "16", "--batch-size", "8",
         "--threads", "1", "--work", str(tmp_path)],
        env=env, cwd=REPO / "bench", capture_output=True, text=True, timeout=600)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"{name}.result.json").read_text()) for name in ("alignlab", "trl"))
    assert a["examples"] == b["examples"] == 16
    assert a["tokens"] == b["tokens"] > 0  # the same examples, tokenized alike
    assert b["same_order"] is True and sorted(a["order"]) == list(range(16))
    losses_a, losses_b = a["history"]["loss"], b["history"]["loss"]
    assert len(losses_a) == len(losses_b) == 2
    # fp32 on both sides: the same batches give the same loss to rounding, before and after a step
    gaps = [abs(x - y) for x, y in zip(losses_a, losses_b, strict=True)]
    assert max(gaps) < 1e-5, (losses_a, losses_b)
    if script == "dpo_vs_trl":
        assert losses_a[0] == pytest.approx(0.693147, abs=1e-5)  # policy = reference at step 1: ln 2
    assert losses_a[1] != pytest.approx(losses_a[0], abs=1e-3)  # the step moved the weights
    reported = re.search(r"loss gap per step, largest (\S+) at step (\d)", out)
    assert reported and float(reported.group(1)) == pytest.approx(max(gaps), rel=0.01)
    assert int(reported.group(2)) == 1 + gaps.index(max(gaps))
    assert re.search(r"alignlab/trl: speed \(examples/s and tokens/s, timed span\) \d+\.\d+×", out)
