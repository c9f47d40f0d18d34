"""Decoding-time methods on testbed tasks against compute: best-of-n against n (gold reward, the
scorer's own reward, KL against its bound), and QAlign and reward-guided search beside it.

For each task (``--tasks``) and each scorer (``--scorers``) runs ``alignlab decode --method
best-of-n`` for each n (one process each, one after another) on the task's held-out prompts, from
the task's shipped SFT model, and prints per run the held-out gold reward of the answers, the mean
score the scorer gave the picked answers, the win rate against plain samples, best-of-n's KL to the
model (the estimate with its bootstrap interval over prompts, and the bound log n − (n−1)/n) and
the model forward tokens spent. ``--qalign-steps`` adds QAlign chains of those lengths and
``--guided-weights`` reward-guided search (ARGS, sampled at temperature 1) at those weights, for
each scorer.

Scorers: ``gold`` and ``proxy`` are the task's rewards (with the flawed proxy the proxy rises with n
while gold falls: the over-optimization curve); ``rm`` is a Bradley-Terry reward model trained in
the run on the task's synthetic feedback (``alignlab feedback``: SFT samples paired best against
worst by gold, 4,096 prompts, 4 answers each) from the task's pretrained model
(``alignlab train --method reward_model``, 2 epochs at 1e-3; sentiment pools the states' mean),
an imperfect scorer as real reward models are; ``NAME=SPEC`` is any other scorer spec.
``--qalign-beta`` gives QAlign's β, one value for every scorer and ``KIND=β`` for one (a reward
model's scores span several units where gold's span one).

``--limit N`` answers only each task's first N held-out prompts (a quick check of the script).

``--plot`` writes one figure, a row per task: gold (and the scorer's reward) against forward tokens
for every method, and best-of-n's KL against n beside its bound. ``--json`` keeps the results;
``--replot FILE ...`` draws the figure from kept results without running anything.

    python bench/best_of_n_curve.py --tasks arithmetic sentiment --scorers gold proxy rm \
        --n 1 2 4 8 16 --qalign-steps 4 15 --qalign-beta 0.25 rm=1 --guided-weights 1 4 \
        --plot decoding.png --json decoding.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

RM_PROMPTS = 4096


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "alignlab.cli", *args]


def call(cmd: list[str]) -> None:
    """Run an alignlab command quietly; on failure show the end of what it printed."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def train_rm(task: str, work: Path, seed: int) -> str:
    """A Bradley-Terry reward model for ``task`` (see the module docstring); its directory as a scorer spec."""
    from alignlab.testbed.shipped import task_model

    out = work / f"{task}-rm"
    if not (out / "model" / "reward_model.json").exists():
        feedback = work / f"{task}-feedback"
        call(cli("feedback", "--task", task, "--prompts", str(RM_PROMPTS), "--k", "4", "--seed", str(seed),
                 "--out", str(feedback)))
        extra = ["--pool", "mean"] if task == "sentiment" else []
        call(cli("train", "--method", "reward_model", "--model", str(task_model(task, "pretrained")),
                 "--data", str(feedback / "pairs.jsonl"), "--eval-fraction", "0.2", "--lr", "1e-3", "--epochs", "2",
                 "--batch-size", "16", "--seed", str(seed), "--output-dir", str(out), *extra))
    accuracy = json.loads((out / "summary.json").read_text())["eval_metrics"]["eval/rewards/accuracies"]
    print(f"{task}: reward model {out / 'model'}, held-out pair accuracy {accuracy:.3f}", flush=True)
    return f"rm:{out / 'model'}"


def scorer_spec(task: str, kind: str, work: Path, seed: int) -> tuple[str, str]:
    """(label, scorer spec) for a ``--scorers`` entry."""
    if kind in ("gold", "proxy"):
        return kind, f"task:{task}:{kind}"
    if kind == "rm":
        return kind, train_rm(task, work, seed)
    label, sep, spec = kind.partition("=")
    if not sep or not label or not spec:
        raise SystemExit(f"--scorers: '{kind}' is not gold, proxy, rm or NAME=SPEC")
    return label, spec


def run(task: str, label: str, spec: str, n: int, work: Path, seed: int, method: str = "best-of-n",
        extra: tuple[str, ...] = (), limit: int | None = None) -> dict:
    from alignlab.tasks import get_task
    from alignlab.testbed.shipped import task_model

    tag = "-".join([method, label, str(n), *extra]).replace("--", "")
    out = work / f"{task}-{tag}.jsonl"
    cmd = cli("decode", "--method", method, "--model", str(task_model(task, "sft")), "--scorer", spec,
              *(("--n", str(n)) if method == "best-of-n" else ()), "--task", task, "--output", str(out), "--seed", str(seed),
              "--max-new-tokens", str(get_task(task).max_new_tokens),
              *(("--limit", str(limit)) if limit is not None else ()), *extra)
    call(cmd)
    summary = json.loads(Path(f"{out}.summary.json").read_text())
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    picked = [s["score"] for r in rows for s in r["samples"] if s.get("score") is not None]
    summary["scorer_reward"] = sum(picked) / len(picked) if picked else float("nan")
    summary["scorer_kind"] = label
    summary["label"] = method if not extra else f"{method} {' '.join(extra)}"
    return summary


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in results))
    fig, axes = plt.subplots(len(tasks), 2, figsize=(13, 4.8 * len(tasks)), squeeze=False)
    for (ax_r, ax_kl), task in zip(axes, tasks, strict=True):
        mine_task = [r for r in results if r["task"] == task]
        ax_s = ax_r.twinx()  # the scorers' own rewards: their scales differ from gold's
        for kind in dict.fromkeys(r["scorer_kind"] for r in mine_task):
            bon = sorted((r for r in mine_task if r["scorer_kind"] == kind and r["method"] == "best-of-n"),
                         key=lambda r: r["n"])
            x = [r["forward_tokens"] for r in bon]
            line = ax_r.plot(x, [r["gold"] for r in bon], marker="o", label=f"best-of-n: gold, picked by {kind}")[0]
            if kind != "gold":
                ax_s.plot(x, [r["scorer_reward"] for r in bon], marker="s", linestyle="--", alpha=0.45,
                          color=line.get_color(), label=f"best-of-n: the {kind}'s score (right axis)")
            for method, mark in (("qalign", "^"), ("reward-guided", "D")):
                pts = sorted((r for r in mine_task if r["scorer_kind"] == kind and r["method"] == method),
                             key=lambda r: r["forward_tokens"])
                if pts:
                    ax_r.plot([r["forward_tokens"] for r in pts], [r["gold"] for r in pts], marker=mark,
                              linestyle=":", color=line.get_color(), label=f"{method}: gold, by {kind}")
            ax_kl.errorbar([r["n"] for r in bon], [r["kl"] for r in bon],
                           yerr=[[r["kl"] - r["kl_low"] for r in bon], [r["kl_high"] - r["kl"] for r in bon]],
                           marker="o", capsize=3, label=f"estimate, {kind}")
        if bon := [r for r in mine_task if r["method"] == "best-of-n"]:
            plain = min(bon, key=lambda r: r["forward_tokens"])
            ax_r.axhline(plain["gold_plain"], color="grey", linewidth=0.8, label="plain sampling: gold")
            ns = sorted({r["n"] for r in bon})
            ax_kl.plot(ns, [next(r["kl_bound"] for r in bon if r["n"] == n) for n in ns], color="black",
                       linestyle=":", label="log n − (n−1)/n")
        ax_r.set_xscale("log")
        ax_r.set_xlabel("model forward tokens")
        ax_r.set_ylabel("gold reward of the answers")
        ax_s.set_ylabel("the picking scorer's reward (dashed)")
        ax_r.set_title(f"{task}: reward against compute")
        ax_r.grid(alpha=0.3)
        handles = [h for ax in (ax_r, ax_s) for h in ax.get_legend_handles_labels()[0]]
        ax_r.legend(handles=handles, fontsize=6, loc="best")
        ax_kl.set_xscale("log", base=2)
        ax_kl.set_xlabel("n")
        ax_kl.set_ylabel("KL(best-of-n ‖ model), nats")
        ax_kl.set_title(f"{task}: best-of-n's KL")
        ax_kl.grid(alpha=0.3)
        ax_kl.legend(fontsize=7)
    fig.suptitle("decoding-time methods on the testbed (held-out prompts, from the SFT models)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def qalign_betas(values: list[str]) -> dict[str, float]:
    """``--qalign-beta``'s entries: a plain number for every scorer (key ``""``), ``KIND=β`` for one."""
    betas: dict[str, float] = {"": 1.0}
    for value in values:
        kind, _, beta = value.rpartition("=")
        try:
            betas[kind] = float(beta)
        except ValueError:
            raise SystemExit(f"--qalign-beta: '{value}' is not a number or KIND=NUMBER") from None
    return betas


def run_task(task: str, args, work: Path) -> list[dict]:
    results = []
    betas = qalign_betas(args.qalign_beta)
    print(f"{'task':<11} {'scorer':<8} {'n':>3} {'gold':>6} {'scorer':>7} {'win':>6} {'KL':>6} {'KL interval':>15} "
          f"{'bound':>6} {'fwd tokens':>10}")
    for kind in args.scorers:
        label, spec = scorer_spec(task, kind, work, args.seed)
        for n in args.n:
            r = run(task, label, spec, n, work, args.seed, limit=args.limit)
            results.append(r)
            print(f"{task:<11} {label:<8} {n:>3} {r['gold']:>6.3f} {r['scorer_reward']:>7.3f} {r['win_rate']:>6.3f} "
                  f"{r['kl']:>6.3f} [{r['kl_low']:.3f}, {r['kl_high']:.3f}] {r['kl_bound']:>6.3f} "
                  f"{r['forward_tokens']:>10}", flush=True)
        beta = betas.get(label, betas[""])
        for steps in args.qalign_steps:
            r = run(task, label, spec, 1, work, args.seed, "qalign", ("--steps", str(steps), "--beta", str(beta)),
                    limit=args.limit)
            results.append(r)
            print(f"{task:<11} {label:<8} qalign {steps} steps β {beta:g}: gold {r['gold']:.3f}, scorer "
                  f"{r['scorer_reward']:.3f}, win {r['win_rate']:.3f}, acceptance {r['acceptance_rate']:.3f}, "
                  f"fwd tokens {r['forward_tokens']}", flush=True)
        for weight in args.guided_weights:
            r = run(task, label, spec, 1, work, args.seed, "reward-guided", ("--guide-weight", str(weight)),
                    limit=args.limit)
            results.append(r)
            print(f"{task:<11} {label:<8} reward-guided weight {weight:g}: gold {r['gold']:.3f}, scorer "
                  f"{r['scorer_reward']:.3f}, win {r['win_rate']:.3f}, fwd tokens {r['forward_tokens']}", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["arithmetic"])
    parser.add_argument("--scorers", nargs="+", default=["gold", "proxy"],
                        help="what picks: gold, proxy, rm (trained in the run) or NAME=SPEC")
    parser.add_argument("--n", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="answer only each task's first N held-out prompts "
                                                                 "(default: all of them)")
    parser.add_argument("--work", default=None, help="folder for the answers and reward models (default: a "
                                                     "temporary one); a reward model already there is reused")
    parser.add_argument("--qalign-steps", type=int, nargs="*", default=[], help="QAlign chain lengths to run")
    parser.add_argument("--qalign-beta", nargs="+", default=["1"], help="β for every scorer, or KIND=β for one")
    parser.add_argument("--guided-weights", type=float, nargs="*", default=[], help="reward-guided search weights")
    parser.add_argument("--plot", default=None, help="write the curves to this PNG")
    parser.add_argument("--json", default=None, help="write every run's summary to this file")
    parser.add_argument("--replot", nargs="+", default=None, help="draw --plot from these --json files; run nothing")
    args = parser.parse_args()
    if args.replot:
        results = [r for f in args.replot for r in json.loads(Path(f).read_text())]
    else:
        work = Path(args.work or tempfile.mkdtemp(prefix="decoding-"))
        work.mkdir(parents=True, exist_ok=True)
        results = [r for task in args.tasks for r in run_task(task, args, work)]
        over = [r for r in results if r["method"] == "best-of-n" and r["kl_high"] > r["kl_bound"]]
        print("every KL estimate's interval lies under the bound" if not over else
              f"KL interval above the bound for: {[(r['task'], r['scorer_kind'], r['n']) for r in over]}")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    if args.plot:
        plot(results, Path(args.plot))
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
