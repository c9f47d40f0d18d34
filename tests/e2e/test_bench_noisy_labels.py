"""`bench/noisy_labels.py` at its smallest: DPO and rDPO, two seeds, 16 training prompts, one epoch,
8 held-out prompts. Each method trains on the same pairs with exactly round(noise × pairs) labels
flipped, rDPO is told the flip rate, and the printed table is the runs' own reports."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
METHODS = ("dpo", "rdpo")
SEEDS = (0, 1)
NOISE = 0.3


def test_smallest_run_flips_the_labels_it_says_and_prints_the_runs_numbers(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "noisy_labels.py"), "--seeds", *map(str, SEEDS), "--methods", *METHODS,
         "--noise", str(NOISE), "--epochs", "1", "--prompts", "16", "--eval-prompts", "8",
         "--out", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")],
        env=env, cwd=REPO / "bench", capture_output=True, text=True, timeout=600)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert "arithmetic, 30% of pair labels flipped, 16 prompts, lr default, 1 epochs, seeds [0, 1]" in out
    assert f"runs: {tmp_path / 'runs'}" in out

    reports: dict[tuple[str, int], dict] = {}
    for seed in SEEDS:
        pairs = None
        for k, method in enumerate(METHODS):
            folder = tmp_path / "runs" / f"m{k}-{method}-s{seed}"
            report = reports[method, seed] = json.loads((folder / "metrics.json").read_text())
            s = report["settings"]
            assert (s["method"], s["seed"], s["num_prompts"], s["eval_prompts"], s["epochs"], s["label_noise"]) == \
                   (method, seed, 16, 8, 1.0, NOISE)
            assert s["method_params"] == ({"epsilon": NOISE} if method == "rdpo" else {})  # rDPO is told ε
            meta = json.loads((folder / "feedback" / "metadata.json").read_text())
            rows = [json.loads(line) for line in (folder / "feedback" / "pairs.jsonl").read_text().splitlines()]
            assert len(rows) == meta["rows"]["pairs"] > 0
            # exactly round(noise × pairs) flipped, and those are the pairs whose chosen answer scored lower
            assert meta["flipped_pairs"] == len(meta["flipped_rows"]) == round(NOISE * len(rows)) > 0
            assert all(r["score_chosen"] != r["score_rejected"] for r in rows)
            assert {i for i, r in enumerate(rows) if r["score_chosen"] < r["score_rejected"]} == set(meta["flipped_rows"])
            if pairs is None:
                pairs = rows
            assert rows == pairs  # every method trains on the seed's same pairs, flips included
            # the SFT model, measured alike by every run of the seed (the table shows the first method's)
            assert report["before"] == reports[METHODS[0], seed]["before"]

    def block(key: str) -> dict[str, list[float]]:
        """The printed numbers of each row under gold/KEY."""
        lines = out[out.index(f"gold/{key}\n"):].splitlines()[1:1 + 1 + len(METHODS) + 1]
        got = {}
        for line in lines:
            label = next((x for x in ("SFT model", *METHODS) if line.strip().startswith(x + " ")), None)
            if label:
                got[label] = [float(x) for x in re.findall(r"[+-]?\d+\.\d+", line)]
        got["spread"] = [float(x) for x in re.findall(r"spread of the first method over seeds: (\S+)\)", lines[-1])]
        return got

    def near(a: float, b: float) -> bool:  # printed with 3 decimals
        return abs(a - b) <= 5e-4 + 1e-9

    for key in ("sampled", "greedy"):
        got = block(key)
        before = [reports[METHODS[0], s]["before"][f"eval/gold/{key}"] for s in SEEDS]
        after = {m: [reports[m, s]["after"][f"eval/gold/{key}"] for s in SEEDS] for m in METHODS}
        base = after[METHODS[0]]
        want = {"SFT model": [*before, statistics.mean(before)], METHODS[0]: [*base, statistics.mean(base)],
                "spread": [max(base) - min(base)]}
        for m in METHODS[1:]:  # values, mean, difference of the means, per-seed differences
            paired = [a - b for a, b in zip(after[m], base, strict=True)]
            want[m] = [*after[m], statistics.mean(after[m]), statistics.mean(after[m]) - statistics.mean(base), *paired]
            m_text = next(line for line in out[out.index(f"gold/{key}\n"):].splitlines() if line.strip().startswith(m + " "))
            higher = re.search(r"higher on (\d+) of (\d+)\)", m_text)
            assert higher and (int(higher.group(1)), int(higher.group(2))) == (sum(d > 0 for d in paired), len(SEEDS))
        assert got.keys() == want.keys()
        for label, values in want.items():
            assert len(got[label]) == len(values) and all(map(near, got[label], values)), (key, label, got, want)
