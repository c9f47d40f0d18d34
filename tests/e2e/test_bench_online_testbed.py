"""`bench/online_testbed.py` at its smallest: one run, GRPO trained on the arithmetic task's proxy
reward (4 prompts, 2 samples each, 2 prompts a step: 2 steps), seed 0, one thread, 8 held-out
prompts; the proxy run is the one that takes the script's own paths (the proxy evaluation and the
training reward). Its tables are the run's record, the record is its demo's report, the training
reward is its metrics log's, and ``--resume`` reprints the same tables from the record without
running anything again."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
KEYS = ("sampled", "greedy", "win_rate", "kl", "length")
TABLE = ("sampled", "greedy", "win_rate", "kl")
FLAGS = {"grpo-proxy": "--prompts 4 --k 2 --batch-size 4 --epochs 1 --eval-every 0 --eval-prompts 8 --reward proxy"}
RUNS = {"grpo-proxy": "grpo"}  # label: method


def bench(tmp_path: Path, *more: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / "online_testbed.py"), "--task", "arithmetic",
         "--runs", *(f"{label}:{method}" for label, method in RUNS.items()), "--seeds", "0", "--env", "OMP_NUM_THREADS=1",
         *(f"--args={label}={flags}" for label, flags in FLAGS.items()), "--out", str(tmp_path / "runs"), *more],
        env=env, cwd=REPO / "bench", capture_output=True, text=True, timeout=600)


def cells(out: str, first: str) -> list[str]:
    """The cells of the markdown row that starts with ``first``."""
    line = next(x for x in out.splitlines() if x.startswith(f"| {first} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


def test_smallest_run_tables_are_the_runs_records(tmp_path):
    done = bench(tmp_path, "--json", str(tmp_path / "all.json"))
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    folders = {label: tmp_path / "runs" / f"arithmetic-{label}-s0" for label in RUNS}
    records = {label: json.loads((folder / "run.json").read_text()) for label, folder in folders.items()}
    kept = json.loads((tmp_path / "all.json").read_text())
    assert kept == {"task": "arithmetic", "runs": list(records.values())}

    for label, r in records.items():
        folder = folders[label]
        assert (r["task"], r["label"], r["method"], r["seed"]) == ("arithmetic", label, RUNS[label], 0)
        assert r["flags"] == shlex.split(FLAGS[label]) and r["env"] == {"OMP_NUM_THREADS": "1"}
        assert not (folder / "cache").exists()  # the run's cache is removed once it is done
        report = json.loads((folder / "out" / "metrics.json").read_text())
        for key in ("before", "after", "settings", "seconds", "machine", "history"):
            assert r[key] == report[key], key
        s = r["settings"]
        assert (s["method"], s["num_prompts"], s["eval_prompts"], s["epochs"]) == (RUNS[label], 4, 8, 1.0)
        assert s["reward"] == "proxy"
        if r["machine"]["device"] == "cpu":
            assert r["machine"]["threads"] == 1  # --env reached the demo's process
        assert r["wall_s"] > 0 and r["cpu_s"] > 0
        line = next(x for x in out.splitlines() if x.startswith(f"arithmetic {label} "))
        shown = re.findall(r"(\w+) (-?\d+\.\d{3})->(-?\d+\.\d{3})", line)
        assert [k for k, _, _ in shown] == list(KEYS)
        for k, before, after in shown:
            assert float(before) == pytest.approx(r["before"][f"eval/gold/{k}"], abs=5e-4)
            assert float(after) == pytest.approx(r["after"][f"eval/gold/{k}"], abs=5e-4)
        assert f"wall {r['wall_s']:.0f}s (demo train {r['seconds']['train']:.0f}s, CPU {r['cpu_s']:.0f}s)" in line
    assert cells(out, "SFT model") == ["0", *(f"{records['grpo-proxy']['before'][f'eval/gold/{k}']:.3f}" for k in TABLE), "", ""]
    for label, r in records.items():  # one seed: each number as it is
        assert cells(out, label) == ["0", *(f"{r['after'][f'eval/gold/{k}']:.3f}" for k in TABLE),
                                         f"{r['wall_s']:.0f}", f"{r['cpu_s']:.0f}"]

    # the proxy run: its proxy before and after, its gold, and its training reward from its own log
    r = records["grpo-proxy"]
    steps = [row for row in map(json.loads, (folders["grpo-proxy"] / "out" / "metrics.jsonl").read_text().splitlines())
             if "loss" in row]
    assert len(steps) == math.ceil(1 * 4 / (4 // 2))  # 4 prompts, 2 a step (batch 4 of k 2)
    assert r["train_reward"] == {"first": steps[0]["reward"], "last": steps[-1]["reward"]}  # a tenth of 2: 1 step
    p, b, a = r["proxy"], r["before"], r["after"]
    assert set(p) == {f"{side}/proxy/{k}" for side in ("before", "after") for k in ("sampled", "greedy", "kl")}
    assert all(0.0 <= p[f"{side}/proxy/{k}"] <= 1.0 for side in ("before", "after") for k in ("sampled", "greedy"))
    # the proxy scored the answers the gold evaluation scored (the same held-out prompts and seed):
    # their KL to the SFT model is the gold evaluation's
    assert p["before/proxy/kl"] == b["eval/gold/kl"] == 0.0
    assert p["after/proxy/kl"] == pytest.approx(a["eval/gold/kl"], abs=1e-6)
    proxy_row = [line for line in out.splitlines() if line.startswith("| grpo-proxy | 0 | ") and "→" in line]
    assert proxy_row == [
        f"| grpo-proxy | 0 | {p['before/proxy/sampled']:.3f} → {p['after/proxy/sampled']:.3f}"
        f" | {b['eval/gold/sampled']:.3f} → {a['eval/gold/sampled']:.3f}"
        f" | {p['before/proxy/greedy']:.3f} → {p['after/proxy/greedy']:.3f}"
        f" | {b['eval/gold/greedy']:.3f} → {a['eval/gold/greedy']:.3f}"
        f" | {steps[0]['reward']:.3f} → {steps[-1]['reward']:.3f} |"]
    assert f"machine: {records['grpo-proxy']['machine']}" in out

    # --resume: the finished runs are read back, not run again, and the tables are the same
    stamps = {label: (folder / "run.json").stat().st_mtime_ns for label, folder in folders.items()}
    again = bench(tmp_path, "--resume")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout == out
    assert {label: (folder / "run.json").stat().st_mtime_ns for label, folder in folders.items()} == stamps
