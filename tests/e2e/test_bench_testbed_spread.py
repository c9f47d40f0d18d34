"""`bench/testbed_spread.py` at its smallest: two of its settings (one thread each, the second with
torch's kernels without vector instructions and MKL in its compatible mode), one seed, a demo of 8
prompts and 1 epoch measured on 8 held-out prompts. Each setting's environment reaches its demo,
and the printed numbers, distances and gains are the results the script kept."""

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
KEYS = ("sampled", "greedy", "win_rate", "kl", "length")
SETTINGS = {"native-1t": {"OMP_NUM_THREADS": "1"},
            "other-bits-1t": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1"}}


def test_smallest_run_reports_the_settings_results(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    settings = [f"--setting={name}:" + ",".join(f"{k}={v}" for k, v in values.items())
                for name, values in SETTINGS.items()]
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "testbed_spread.py"), "--seeds", "0", *settings,
         "--extra=--prompts 8 --epochs 1 --eval-prompts 8 --eval-every 0", "--json", str(tmp_path / "spread.json")],
        env=env, cwd=REPO / "bench", capture_output=True, text=True, timeout=600)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    kept = json.loads((tmp_path / "spread.json").read_text())
    assert kept["task"] == "arithmetic"
    results = {name: by_seed["0"] for name, by_seed in kept["results"].items()}
    assert list(results) == list(SETTINGS) and all(list(by_seed) == ["0"] for by_seed in kept["results"].values())

    for name, r in results.items():
        assert r["before"]["eval/gold/kl"] == 0.0  # the SFT model against itself
        machine = r["machine"]
        if machine["device"] == "cpu":  # the setting's variables reached the demo's process
            assert machine["threads"] == 1
            if "ATEN_CPU_CAPABILITY" in SETTINGS[name]:
                assert machine["cpu_capability"] == "DEFAULT" and machine["mkl_cbwr"] == "COMPATIBLE"
            else:
                assert "mkl_cbwr" not in machine
        # the setting's line: before->after of every number, as kept
        line = next(x for x in out.splitlines() if x.startswith(f"{name} ") and " seed 0 " in x)
        pairs = re.findall(r"(\w+) (-?\d+\.\d{3})->(-?\d+\.\d{3})", line)
        assert [p[0] for p in pairs] == list(KEYS)
        for key, b, a in pairs:
            assert float(b) == pytest.approx(r["before"][f"eval/gold/{key}"], abs=5e-4)
            assert float(a) == pytest.approx(r["after"][f"eval/gold/{key}"], abs=5e-4)

    assert "largest distance from native-1t, over settings and seeds:" in out
    first = results["native-1t"]
    for side in ("before", "after"):
        for key in KEYS:
            gap = re.search(rf"^  {side} +{key} +(\d+\.\d{{4}})$", out, re.M)
            want = max(abs(r[side][f"eval/gold/{key}"] - first[side][f"eval/gold/{key}"]) for r in results.values())
            assert gap and float(gap.group(1)) == pytest.approx(want, abs=5e-5), (side, key)
    for name, r in results.items():
        m = re.search(rf"^{name} +sampled-gold gain, mean over seeds ([+-]\d+\.\d{{3}}); "
                      rf"spread of the after values over seeds (\d+\.\d{{3}})$", out, re.M)
        gain = r["after"]["eval/gold/sampled"] - r["before"]["eval/gold/sampled"]
        assert m and float(m.group(1)) == pytest.approx(gain, abs=5e-4) and float(m.group(2)) == 0.0  # one seed
