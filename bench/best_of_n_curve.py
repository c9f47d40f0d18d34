"""Decoding-time methods on a testbed task against compute: best-of-n against n (gold reward, the
scorer's own reward, KL against its bound), and QAlign and reward-guided search beside it.

Runs ``alignlab decode --method best-of-n`` for each scorer and each n (one process each, one after
another) on the task's held-out prompts, from the task's shipped SFT model, and prints per run the
held-out gold reward of the answers, the mean score the scorer gave the picked answers, the win
rate against plain samples, best-of-n's KL to the model (the estimate with its bootstrap interval
over prompts, and the bound log n − (n−1)/n) and the model forward tokens spent. With the task's
flawed proxy as the scorer the proxy rises with n while gold falls: the over-optimization curve.
``--qalign-steps`` adds QAlign chains of those lengths (``--qalign-beta``) and ``--guided-weights``
reward-guided search (ARGS, sampled at temperature 1) at those weights, for each scorer.
``--plot`` writes gold (and the scorer's reward) against forward tokens for every method, and
best-of-n's KL against n beside its bound, as a PNG.

    python bench/best_of_n_curve.py --task arithmetic --scorers gold proxy --n 1 2 4 8 16 \
        --qalign-steps 4 16 --qalign-beta 0.25 --guided-weights 1 4 --plot decoding.png
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def run(task: str, scorer: str, n: int, work: Path, seed: int, method: str = "best-of-n",
        extra: tuple[str, ...] = ()) -> dict:
    from alignlab.tasks import get_task
    from alignlab.testbed.shipped import task_model

    tag = "-".join([method, scorer, str(n), *extra]).replace("--", "")
    out = work / f"{task}-{tag}.jsonl"
    cmd = [sys.executable, "-m", "alignlab.cli", "decode", "--method", method, "--model", str(task_model(task, "sft")),
           "--scorer", f"task:{task}:{scorer}", "--n", str(n), "--task", task, "--output", str(out), "--seed", str(seed),
           "--max-new-tokens", str(get_task(task).max_new_tokens), *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads(Path(f"{out}.summary.json").read_text())
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    picked = [s["score"] for r in rows for s in r["samples"] if s.get("score") is not None]
    summary["scorer_reward"] = sum(picked) / len(picked) if picked else float("nan")
    summary["scorer_kind"] = scorer
    summary["label"] = method if not extra else f"{method} {' '.join(extra)}"
    return summary


def plot(results: list[dict], path: Path, task: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_kl) = plt.subplots(1, 2, figsize=(11, 4.2))
    for kind in sorted({r["scorer_kind"] for r in results}):
        mine = sorted((r for r in results if r["scorer_kind"] == kind and r["method"] == "best-of-n"),
                      key=lambda r: r["n"])
        x = [r["forward_tokens"] for r in mine]
        ax_r.plot(x, [r["gold"] for r in mine], marker="o", label=f"best-of-n: gold, picked by {kind}")
        if kind != "gold":
            ax_r.plot(x, [r["scorer_reward"] for r in mine], marker="s", linestyle="--",
                      label=f"best-of-n: {kind} (what it picks by)")
        for method, mark in (("qalign", "^"), ("reward-guided", "D")):
            pts = sorted((r for r in results if r["scorer_kind"] == kind and r["method"] == method),
                         key=lambda r: r["forward_tokens"])
            if pts:
                ax_r.plot([r["forward_tokens"] for r in pts], [r["gold"] for r in pts], marker=mark,
                          linestyle=":", label=f"{method}: gold, by {kind}")
        ns = [r["n"] for r in mine]
        ax_kl.errorbar(ns, [r["kl"] for r in mine], yerr=[[r["kl"] - r["kl_low"] for r in mine],
                                                           [r["kl_high"] - r["kl"] for r in mine]],
                       marker="o", capsize=3, label=f"estimate, {kind}")
    bon = [r for r in results if r["method"] == "best-of-n"]
    ns = sorted({r["n"] for r in bon})
    ax_kl.plot(ns, [next(r["kl_bound"] for r in bon if r["n"] == n) for n in ns], color="black",
               linestyle=":", label="log n − (n−1)/n")
    ax_r.set_xscale("log")
    ax_r.set_xlabel("model forward tokens")
    ax_r.set_ylabel("reward of the answers")
    ax_r.grid(alpha=0.3)
    ax_r.legend(fontsize=7)
    ax_kl.set_xscale("log", base=2)
    ax_kl.set_xlabel("n")
    ax_kl.set_ylabel("KL(best-of-n ‖ model), nats")
    ax_kl.grid(alpha=0.3)
    ax_kl.legend(fontsize=8)
    fig.suptitle(f"decoding-time methods on the {task} testbed (held-out prompts)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="arithmetic")
    parser.add_argument("--scorers", nargs="+", default=["gold", "proxy"], help="the task's rewards to pick by")
    parser.add_argument("--n", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=None, help="folder for the answers (default: a temporary one)")
    parser.add_argument("--qalign-steps", type=int, nargs="*", default=[], help="QAlign chain lengths to run")
    parser.add_argument("--qalign-beta", type=float, default=1.0)
    parser.add_argument("--guided-weights", type=float, nargs="*", default=[], help="reward-guided search weights")
    parser.add_argument("--plot", default=None, help="write the curves to this PNG")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bon-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    print(f"{'scorer':<8} {'n':>3} {'gold':>6} {'scorer':>7} {'win':>6} {'KL':>6} {'KL interval':>15} {'bound':>6} "
          f"{'fwd tokens':>10}")
    for scorer in args.scorers:
        for n in args.n:
            r = run(args.task, scorer, n, work, args.seed)
            results.append(r)
            print(f"{scorer:<8} {n:>3} {r['gold']:>6.3f} {r['scorer_reward']:>7.3f} {r['win_rate']:>6.3f} "
                  f"{r['kl']:>6.3f} [{r['kl_low']:.3f}, {r['kl_high']:.3f}] {r['kl_bound']:>6.3f} "
                  f"{r['forward_tokens']:>10}", flush=True)
        for steps in args.qalign_steps:
            r = run(args.task, scorer, 1, work, args.seed, "qalign", ("--steps", str(steps), "--beta",
                                                                      str(args.qalign_beta)))
            results.append(r)
            print(f"{scorer:<8} qalign {steps} steps β {args.qalign_beta:g}: gold {r['gold']:.3f}, win "
                  f"{r['win_rate']:.3f}, acceptance {r['acceptance_rate']:.3f}, fwd tokens {r['forward_tokens']}",
                  flush=True)
        for weight in args.guided_weights:
            r = run(args.task, scorer, 1, work, args.seed, "reward-guided", ("--guide-weight", str(weight)))
            results.append(r)
            print(f"{scorer:<8} reward-guided weight {weight:g}: gold {r['gold']:.3f}, win {r['win_rate']:.3f}, "
                  f"fwd tokens {r['forward_tokens']}", flush=True)
    over = [r for r in results if r["method"] == "best-of-n" and r["kl_high"] > r["kl_bound"]]
    print("every KL estimate's interval lies under the bound" if not over else
          f"KL interval above the bound for: {[(r['scorer_kind'], r['n']) for r in over]}")
    if args.plot:
        plot(results, Path(args.plot), args.task)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
