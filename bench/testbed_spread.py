"""How far the demo's numbers move with the machine's arithmetic, from the shipped models.

The testbed's models are shipped, so every machine starts from the same weights; what can still
differ is the arithmetic of sampling and training: the instruction set of torch's kernels
(``ATEN_CPU_CAPABILITY``), MKL's (``MKL_ENABLE_INSTRUCTIONS``) and the number of threads. Each
setting below runs ``alignlab demo`` in a process of its own, with a cache of its own, and the
script prints every setting's before/after numbers and, per number, the largest distance from the
first setting. The README's tolerance for its demo table comes from this spread.

    python bench/testbed_spread.py                           # arithmetic, seed 0, the settings below
    python bench/testbed_spread.py --task sentiment --seeds 0 1 2 --extra "--prompts 256 --epochs 8"

On an AVX-512 machine, add ``--setting avx2:ATEN_CPU_CAPABILITY=avx2,MKL_ENABLE_INSTRUCTIONS=AVX2``
to compute as an AVX2 machine does (an AVX2 machine cannot compute as an AVX-512 one).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

KEYS = ("eval/gold/sampled", "eval/gold/greedy", "eval/gold/win_rate", "eval/gold/kl", "eval/gold/length")

SETTINGS = [
    "native-2t:OMP_NUM_THREADS=2",
    "native-1t:OMP_NUM_THREADS=1",
    # torch's kernels without vector instructions, MKL in its compatible (SSE-level) mode: both change
    # the bits of the results (MKL_ENABLE_INSTRUCTIONS does not, on AMD CPUs)
    "other-bits-2t:ATEN_CPU_CAPABILITY=default,MKL_CBWR=COMPATIBLE,OMP_NUM_THREADS=2",
    "other-bits-1t:ATEN_CPU_CAPABILITY=default,MKL_CBWR=COMPATIBLE,OMP_NUM_THREADS=1",
]


def parse_setting(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.partition(":")
    env = dict(item.split("=", 1) for item in filter(None, rest.split(",")))
    return name, env


def run(task: str, seed: int, extra: list[str], env: dict[str, str], work: Path) -> dict:
    out = work / "out"
    cmd = [sys.executable, "-m", "alignlab.cli", "demo", "--task", task, "--seed", str(seed), "--out", str(out),
           "--cache-dir", str(work / "cache"), "--no-progress", *extra]
    subprocess.run(cmd, env={**os.environ, **env}, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    report = json.loads((out / "metrics.json").read_text())
    return {"before": report["before"], "after": report["after"], "machine": report["machine"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="arithmetic")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--setting", action="append", default=None, metavar="NAME:VAR=VALUE,...",
                        help="a setting to run (repeatable; default: the SETTINGS list)")
    parser.add_argument("--extra", default="", help="more demo flags, e.g. \"--prompts 256 --epochs 8\"")
    parser.add_argument("--json", default=None, help="also write every result to this file")
    args = parser.parse_args(argv)
    settings = [parse_setting(s) for s in (args.setting or SETTINGS)]
    results: dict[str, dict[int, dict]] = {}
    for name, env in settings:
        results[name] = {}
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                results[name][seed] = run(args.task, seed, shlex.split(args.extra), env, Path(tmp))
            r = results[name][seed]
            print(f"{name:<12} seed {seed}  " + "  ".join(
                f"{k.split('/')[-1]} {r['before'][k]:.3f}->{r['after'][k]:.3f}" for k in KEYS), flush=True)
    first = settings[0][0]
    print(f"\nlargest distance from {first}, over settings and seeds:")
    for side in ("before", "after"):
        for k in KEYS:
            gap = max(abs(results[n][s][side][k] - results[first][s][side][k]) for n in results for s in args.seeds)
            print(f"  {side:<6} {k.split('/')[-1]:<9} {gap:.4f}")
    for name in results:
        gains = [results[name][s]["after"]["eval/gold/sampled"] - results[name][s]["before"]["eval/gold/sampled"]
                 for s in args.seeds]
        afters = [results[name][s]["after"]["eval/gold/sampled"] for s in args.seeds]
        print(f"{name:<12} sampled-gold gain, mean over seeds {sum(gains) / len(gains):+.3f}; "
              f"spread of the after values over seeds {max(afters) - min(afters):.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"task": args.task, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
