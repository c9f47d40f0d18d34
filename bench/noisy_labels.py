"""Noisy preference labels on the testbed: plain DPO against the noise-robust losses.

The arithmetic task's synthetic pairs get a fraction of their labels flipped (exactly that many,
recorded in feedback/metadata.json); each method trains on the same pairs with the same settings,
for several seeds, and the held-out gold reward after training is compared.

    python bench/noisy_labels.py                       # rdpo and lcpo against dpo, 30% flipped, seeds 0-2
    python bench/noisy_labels.py --noise 0.2 --seeds 0 1 2 3 --methods dpo rdpo lcpo cdpo
    python bench/noisy_labels.py --beta 1.0 --methods dpo rdpo "lcpo:estimate_noise=false,noise_init=0.3"
    python bench/noisy_labels.py --seeds 0 --methods dpo rdpo --epochs 1 --prompts 16 --eval-prompts 8  # a quick check

``--prompts`` and ``--eval-prompts`` are the demo's (training prompts sampled for the pairs, held-out
prompts answered at each evaluation); their defaults are the demo's, 512 and all of the task's.

rDPO and cDPO are given the true flip rate (their premise: a known ε); LCPO estimates it unless
told otherwise (``NAME:key=value,...`` sets a method's hyperparameters). Prints one row per
method with the per-seed values, the mean, and the difference from the first method's mean.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

from alignlab.testbed.demo import DemoSettings, run_demo


def parse_method(spec: str, noise: float, beta: float | None) -> tuple[str, dict]:
    """``"lcpo:noise_init=0.3,estimate_noise=false"`` -> ("lcpo", {...}). rDPO and cDPO are told the
    flip rate unless their ``epsilon`` is given."""
    name, _, rest = spec.partition(":")
    params: dict = {"epsilon": noise} if name in ("rdpo", "cdpo") else {}
    if beta is not None:
        params["beta"] = beta
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        params[key] = yaml.safe_load(value)
    return name, params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="arithmetic")
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["dpo", "rdpo", "lcpo"])
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--prompts", type=int, default=DemoSettings.num_prompts,
                        help="training prompts to sample answers to (default %(default)s, the demo's)")
    parser.add_argument("--eval-prompts", type=int, default=DemoSettings.eval_prompts,
                        help="held-out prompts to answer at each evaluation (default 0: all of the task's)")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--beta", type=float, default=None, help="β of every method (default: each method's own)")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", default=None, help="where the runs go (default: a temporary folder)")
    args = parser.parse_args(argv)

    out = Path(args.out or tempfile.mkdtemp(prefix="noisy-labels-"))
    results: dict[str, dict[str, list[float]]] = {}
    before: dict[str, list[float]] = {"sampled": [], "greedy": []}
    for k, method in enumerate(args.methods):
        results[method] = {"sampled": [], "greedy": []}
        name, params = parse_method(method, args.noise, args.beta)
        for seed in args.seeds:
            settings = DemoSettings(task=args.task, method=name, seed=seed, label_noise=args.noise,
                                    num_prompts=args.prompts, eval_prompts=args.eval_prompts, epochs=args.epochs,
                                    lr=args.lr, method_params=params)
            report = run_demo(settings, out / f"m{k}-{name}-s{seed}", args.cache_dir, progress=False)
            for key in ("sampled", "greedy"):
                results[method][key].append(report["after"][f"eval/gold/{key}"])
                if method == args.methods[0]:
                    before[key].append(report["before"][f"eval/gold/{key}"])
            print(f"{method} seed {seed}: gold sampled {results[method]['sampled'][-1]:.3f}, "
                  f"greedy {results[method]['greedy'][-1]:.3f}", file=sys.stderr, flush=True)

    base = args.methods[0]
    beta = f", beta {args.beta}" if args.beta is not None else ""
    print(f"\n{args.task}, {args.noise:.0%} of pair labels flipped, {args.prompts} prompts, lr {args.lr or 'default'}, "
          f"{args.epochs:g} epochs{beta}, seeds {args.seeds}: held-out gold reward\n")
    for key in ("sampled", "greedy"):
        print(f"gold/{key}")
        print(f"  {'SFT model':<12} {' '.join(f'{v:.3f}' for v in before[key])}  mean {statistics.mean(before[key]):.3f}")
        for method, values in results.items():
            mean = statistics.mean(values[key])
            diff = mean - statistics.mean(results[base][key])
            paired = [a - b for a, b in zip(values[key], results[base][key], strict=True)]
            wins = sum(d > 0 for d in paired)
            ratio = "" if method == base else (f"  {diff:+.3f} vs {base} (per seed {' '.join(f'{d:+.3f}' for d in paired)};"
                                               f" higher on {wins} of {len(paired)})")
            print(f"  {method:<12} {' '.join(f'{v:.3f}' for v in values[key])}  mean {mean:.3f}{ratio}")
        print(f"  (spread of the first method over seeds: {max(results[base][key]) - min(results[base][key]):.3f})")
    print(f"\nruns: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
