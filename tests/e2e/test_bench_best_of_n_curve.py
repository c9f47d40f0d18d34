"""`bench/best_of_n_curve.py` at its smallest: the arithmetic task's first 16 held-out prompts, gold
picking, best-of-n at n = 1 and 2 and a QAlign chain of 2 steps, with the figure. The printed rows are the decode runs' summaries and answers, and what best-of-n
at n = 1 does is fixed by construction: it picks the only sample, its KL and the bound are 0, and
its forward tokens are the prompts' and the answers'."""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PROMPTS = 16
NUM = r"(-?\d+\.\d{3})"


def test_smallest_run_reports_the_decode_runs(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    work = tmp_path / "work"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "best_of_n_curve.py"), "--tasks", "arithmetic", "--scorers", "gold",
         "--n", "1", "2", "--qalign-steps", "2", "--limit", str(PROMPTS),
         "--work", str(work), "--json", str(tmp_path / "results.json"), "--plot", str(tmp_path / "curve.png")],
        env=env, cwd=REPO / "bench", capture_output=True, text=True, timeout=600)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert [(r["method"], r.get("n")) for r in results] == [("best-of-n", 1), ("best-of-n", 2), ("qalign", None)]
    answers = {}
    for r in results:
        assert (r["task"], r["prompts"], r["scorer"], r["scorer_kind"]) == \
               ("arithmetic", PROMPTS, "task:arithmetic:gold", "gold")
        [path] = work.glob(f"arithmetic-{r['method']}-gold-*.jsonl") if r["method"] != "best-of-n" else \
            [work / f"arithmetic-best-of-n-gold-{r['n']}.jsonl"]
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(rows) == PROMPTS and all(len(row["samples"]) == 1 for row in rows)  # one answer per prompt
        scores = [row["samples"][0]["score"] for row in rows]
        assert r["scorer_reward"] == pytest.approx(statistics.fmean(scores), abs=1e-12)
        # gold picked, so the scorer's reward of the answers is their gold reward
        assert r["scorer_reward"] == pytest.approx(r["gold"], abs=1e-12)
        answers[r["method"], r.get("n")] = rows

    one, two = results[0], results[1]
    assert one["kl"] == one["kl_low"] == one["kl_high"] == one["kl_bound"] == 0.0  # log 1 − 0/1
    assert two["kl_bound"] == pytest.approx(math.log(2) - 1 / 2, abs=1e-12)
    assert 0.0 <= two["kl_low"] <= two["kl"] <= two["kl_high"]
    from alignlab.models import load_tokenizer
    from alignlab.testbed.shipped import task_model

    tokenizer = load_tokenizer(str(task_model("arithmetic", "sft")))
    fed = sum(len(tokenizer(row["prompt"])["input_ids"]) + row["samples"][0]["num_tokens"]
              for row in answers["best-of-n", 1])
    assert one["forward_tokens"] == fed  # n = 1: each prompt and its only sample, once

    for r in results[:2]:
        m = re.search(rf"^arithmetic +gold +{r['n']} +{NUM} +{NUM} +{NUM} +{NUM} \[{NUM}, {NUM}\] +{NUM} +(\d+)$",
                      out, re.M)
        assert m, out
        keys = ("gold", "scorer_reward", "win_rate", "kl", "kl_low", "kl_high", "kl_bound")
        for key, text in zip(keys, m.groups(), strict=False):
            assert float(text) == pytest.approx(r[key], abs=5e-4), key
        assert int(m.group(8)) == r["forward_tokens"]
    qalign = results[2]
    assert (qalign["steps"], qalign["beta"]) == (2, 1.0)
    m = re.search(rf"^arithmetic +gold +qalign 2 steps β 1: gold {NUM}, scorer {NUM}, win {NUM}, acceptance {NUM}, "
                  r"fwd tokens (\d+)$", out, re.M)
    assert m and [float(x) for x in m.groups()[:4]] == pytest.approx(
        [qalign[k] for k in ("gold", "scorer_reward", "win_rate", "acceptance_rate")], abs=5e-4)
    assert int(m.group(5)) == qalign["forward_tokens"] and 0.0 <= qalign["acceptance_rate"] <= 1.0

    under = all(r["kl_high"] <= r["kl_bound"] for r in results[:2])
    assert ("every KL estimate's interval lies under the bound" in out) == under
    assert ("KL interval above the bound for" in out) != under
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot: {tmp_path / 'curve.png'}" in out
