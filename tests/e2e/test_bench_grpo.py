"""`bench/grpo_vs_trl.py` at its smallest: both frameworks train GRPO on the same prompts in one
invocation and the report says so. The script reaches into alignlab's run (it wraps the step
source, the generator, the reward and the saves to time them), so a change to those seams breaks
it; this run catches that, and checks the report's own accounting."""

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


def test_smallest_chainsum_run_reports_both_frameworks(tmp_path):
    pytest.importorskip("trl")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "grpo_vs_trl.py"), "--model", "chainsum", "--steps", "2", "--batch", "8",
         "--num-generations", "4", "--threads", "1", "--work", str(tmp_path)],
        env=env, cwd=REPO / "bench", capture_output=True, text=True, timeout=600)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert "2 steps of 8 completions (2 chainsum prompts × G 4), up to 48 new tokens" in out
    assert "reward task:chainsum:gold" in out
    assert "both answered the same 2 prompts at each of the 2 steps" in out  # TRL got alignlab's order
    a, b = (json.loads((tmp_path / f"{name}-chainsum.result.json").read_text()) for name in ("alignlab", "trl"))
    for r in (a, b):
        assert r["steps"] == 2
        assert 0 < r["generation_s"] < r["loop_s"] and 0 <= r["reward_s"] < r["loop_s"] - r["generation_s"]
        assert len(next(v for k, v in r["history"].items() if k == "reward")) == 2
        assert all(0 <= x <= 1 for x in r["history"]["reward"])  # chainsum's gold is 0 or 1 per answer
        assert 0 < r["completion_tokens"] <= 8 * 2 * 48
    # the same prompts, tokenized alike, once per sample on both sides
    assert a["prompt_tokens"] == b["prompt_tokens"] > 0
    assert a["decoding"] == "alignlab's written-out decode pass"

    def row(label: str) -> list[str]:
        line = next(x.strip() for x in out.splitlines() if x.strip().startswith(label + "  "))
        return line[len(label):].split()

    assert row("steps") == ["2", "2"]
    assert row("steps logged") == ["2", "2"]
    ratio = re.search(r"alignlab/trl: steps/s (\d+\.\d+)×", out)
    assert ratio and float(ratio.group(1)) == pytest.approx(b["loop_s"] / a["loop_s"], abs=0.006)
    needed = re.search(r"3× TRL's steps/s would be (\d+)% of the matmul peak at the nominal FLOPs; "
                       r"alignlab left out (\d+)% of the completions", out)
    params = int(re.search(r"\(([\d,]+) in matmuls\)", out).group(1).replace(",", ""))
    nominal = 8 * params * (b["prompt_tokens"] + b["completion_tokens"]) / b["loop_s"]  # 8·P per token
    assert needed and int(needed.group(1)) == round(100 * 3 * nominal / a["matmul_flops"])
    assert 0 <= int(needed.group(2)) <= 100
