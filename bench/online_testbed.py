"""Online methods against offline DPO on the testbed, over seeds: the acceptance runs of the online
methods, from the shipped SFT models.

Each run is one ``alignlab demo`` in a process of its own (``testbed_spread.run``: a report folder
and a cache of its own), one after another. For each task the script prints, per run label, the
mean, the standard deviation (n − 1) and the range (min–max) over the seeds of the held-out gold
reward (sampled at temperature 1 and greedy), the win rate against the SFT model, the KL to the SFT
model (nats, estimated from the trained model's samples), and the run's wall time and CPU time
(user + system, of the whole child process), beside the SFT model's own numbers (measured by every
run with its seed). It also prints each run's numbers and the machine's 1-minute load average
before and after it: on a shared machine the wall time grows with the load. A run trained on the
task's proxy reward (``--reward proxy``) also gets the held-out proxy reward of its samples, from
the SFT model and from the trained one (the same samples the gold reward scored: the same seed),
and its mean training reward over its first and last 10% of steps, so the gap between the proxy
the method climbed and the gold it was meant to raise is on the table.

A run is ``LABEL`` or ``LABEL:METHOD`` (the label names the run in the table; the method defaults
to the label), and ``--args LABEL="demo flags"`` gives a run its own demo flags (``--param``,
``--lr``, ``--prompts``, ``--reward proxy``...). Any method name works: a method added later
(``ppo``, say) joins the table with the same command. Finished runs are kept under ``--out``
(``TASK-LABEL-sSEED/``: the demo's report with the trained model, and ``run.json``, this script's
record of the run); ``--resume`` reuses the finished ones instead of running them again.

The README's online-methods tables came from these commands, run from ``bench/`` with the
repository on ``PYTHONPATH`` (arithmetic with torch's default 2 threads; sentiment and chainsum
with one thread, ``--env OMP_NUM_THREADS=1``, while two of these commands shared the 2 cores):

    python online_testbed.py --task arithmetic --runs grpo dpo --seeds 0 1 2 \\
        --args grpo="--prompts 8192 --epochs 1 --k 64 --batch-size 256 --lr 2e-4 --eval-every 512" \\
        --args dpo="--prompts 8192 --eval-every 256"
    python online_testbed.py --task arithmetic --runs grpo-g8:grpo dpo --seeds 0 1 2 \\
        --args grpo-g8="--prompts 4096 --epochs 1 --k 8 --batch-size 32 --lr 2e-4 --eval-every 256" \\
        --args dpo="--prompts 4096 --eval-every 128"
    python online_testbed.py --task chainsum --runs grpo grpo-proxy:grpo --seeds 0 1 2 --proxy-seeds 0 \\
        --env OMP_NUM_THREADS=1 \\
        --args grpo="--prompts 2048 --epochs 1 --k 8 --batch-size 32 --lr 5e-5 --eval-every 128" \\
        --args grpo-proxy="--prompts 2048 --epochs 1 --k 8 --batch-size 32 --lr 5e-5 --eval-every 128 --reward proxy"
    python online_testbed.py --task sentiment --runs rloo dpo --seeds 0 1 2 --env OMP_NUM_THREADS=1 \\
        --args rloo="--prompts 512 --epochs 1 --k 8 --batch-size 32 --lr 5e-5 --eval-every 32" \\
        --args dpo="--prompts 512 --eval-every 32"
    python online_testbed.py --task sentiment --runs ppo --seeds 0 1 2 --env OMP_NUM_THREADS=1 \\
        --args ppo="--prompts 512 --epochs 1 --k 8 --batch-size 32 --lr 2e-4 --eval-every 32"
    python online_testbed.py --task arithmetic --runs online-dpo dpo --seeds 0 1 2 --env OMP_NUM_THREADS=1 \\
        --args online-dpo="--prompts 8192 --epochs 1 --batch-size 16 --lr 2e-4 --eval-every 128" \\
        --args dpo="--prompts 4096 --eval-every 128"

The online DPO runs draw as many samples as DPO's: 2 answers (its ``--k``) to each of 8192 prompts
against DPO's 4 (the demo's default ``--k``) to each of 4096, 16,384 each. Online DPO's first 4096
prompts are DPO's (arithmetic has 2114 distinct training problems, so both see every one of them).

Rounds of an offline method on the policy's own samples (``--rounds``: the demo's prompts split
over the rounds; the README's iterative-DPO and RAFT table):

    python online_testbed.py --task arithmetic --runs dpo dpo-3rounds-e1:dpo dpo-3rounds:dpo raft:sft \\
        --seeds 0 1 2 --env OMP_NUM_THREADS=1 --args dpo="--prompts 4096 --eval-every 128" \\
        --args dpo-3rounds-e1="--prompts 4096 --rounds 3 --epochs 1 --eval-every 128" \\
        --args dpo-3rounds="--prompts 4096 --rounds 3 --eval-every 128" \\
        --args raft="--prompts 4096 --rounds 3 --eval-every 128"

An online run and DPO given the same ``--prompts`` and seed train on the same prompts: both take
the task's first ``--prompts`` training prompts for that seed (DPO samples its pairs from the SFT
model on them, the online method samples while it trains). ``--proxy-seeds 0``: the run trained on
the proxy uses seed 0 only. A method added later joins with its own ``--args``, e.g. ``--runs
rloo ppo dpo --args ppo="..."``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

from testbed_spread import KEYS, run

NAMES = {"eval/gold/sampled": "gold (sampled)", "eval/gold/greedy": "gold (greedy)", "eval/gold/win_rate": "win rate",
         "eval/gold/kl": "KL to SFT", "eval/gold/length": "length"}
TABLE_KEYS = ("eval/gold/sampled", "eval/gold/greedy", "eval/gold/win_rate", "eval/gold/kl")


def load1() -> float:
    """The machine's 1-minute load average."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def child_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def parse_run(text: str) -> tuple[str, str]:
    label, _, method = text.partition(":")
    return label, method or label


def proxy_eval(task: str, seed: int, sft_dir: str, model_dir: Path, num_prompts: int = 0) -> dict[str, float]:
    """Held-out proxy reward of the SFT model's and the trained model's answers (sampled with the
    run's seed on the held-out prompts of its gold evaluation, the first ``num_prompts`` (0: all):
    the same answers), under ``before/`` and ``after/``; with their KL to the SFT model, which is the
    gold evaluation's when the answers are the same."""
    from alignlab.eval.sampled import SampledEvaluation
    from alignlab.models import load_model, load_tokenizer
    from alignlab.rewards import load_scorer
    from alignlab.tasks import get_task

    t = get_task(task)
    prompts = t.eval_prompts()[:num_prompts] if num_prompts else t.eval_prompts()
    evaluation = SampledEvaluation(prompts, load_scorer(f"task:{task}:proxy"), load_tokenizer(sft_dir),
                                   t.max_new_tokens, prefix="proxy", seed=seed, prompts_name="held-out prompts")
    sft = load_model(sft_dir)
    keys = ("proxy/sampled", "proxy/greedy", "proxy/kl")
    out = {f"before/{k}": v for k, v in evaluation(sft, sft).items() if k in keys}
    trained = load_model(str(model_dir))
    out.update({f"after/{k}": v for k, v in evaluation(trained, sft).items() if k in keys})
    return out


def train_reward(metrics_jsonl: Path) -> dict[str, float]:
    """Mean training reward (on the run's own samples) over its first and last 10% of steps."""
    rows = [r for r in map(json.loads, metrics_jsonl.read_text().splitlines()) if "reward" in r]
    tenth = max(len(rows) // 10, 1)
    return {"first": statistics.fmean(r["reward"] for r in rows[:tenth]),
            "last": statistics.fmean(r["reward"] for r in rows[-tenth:])}


def one_run(task: str, label: str, method: str, seed: int, flags: list[str], env: dict[str, str], out: Path,
            resume: bool) -> dict:
    """Run (or, with ``resume``, reuse) one demo; return this script's record of it."""
    work = out / f"{task}-{label}-s{seed}"
    record_path = work / "run.json"
    if resume and record_path.exists():
        return json.loads(record_path.read_text())
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    load_before, t0, cpu0 = load1(), time.perf_counter(), child_cpu()
    run(task, seed, ["--method", method, *flags], env, work)
    wall, cpu, load_after = time.perf_counter() - t0, child_cpu() - cpu0, load1()
    shutil.rmtree(work / "cache", ignore_errors=True)
    report = json.loads((work / "out" / "metrics.json").read_text())
    record = {"task": task, "label": label, "method": method, "seed": seed, "flags": flags, "env": env,
              "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "load1_before": load_before, "load1_after": load_after,
              "before": report["before"], "after": report["after"], "settings": report["settings"],
              "seconds": report["seconds"], "machine": report["machine"], "history": report["history"]}
    if report["settings"]["reward"] == "proxy":
        record["proxy"] = proxy_eval(task, seed, report["sft_model"], work / "out" / "model",
                                     report["settings"]["eval_prompts"])
    if (work / "out" / "metrics.jsonl").exists() and report["feedback"].get("online"):
        record["train_reward"] = train_reward(work / "out" / "metrics.jsonl")
    record_path.write_text(json.dumps(record, indent=1))
    return record


def spread(values: list[float], digits: int = 3) -> str:
    """``mean ± std (min–max)`` of ``values``; one value alone as it is."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    std = statistics.stdev(values)
    return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def tables(task: str, records: list[dict]) -> str:
    """The task's table (markdown): SFT model, then each label, over its seeds; then the proxy rows."""
    labels = list(dict.fromkeys(r["label"] for r in records))
    seeds = sorted({r["seed"] for r in records})
    head = ["run", "seeds", *(NAMES[k] for k in TABLE_KEYS), "wall (s)", "CPU (s)"]
    lines = [f"{task}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first_by_seed = {r["seed"]: r for r in reversed(records)}  # the SFT model's numbers, one run per seed
    sft = [first_by_seed[s]["before"] for s in seeds]
    lines.append("| SFT model | " + " ".join(map(str, seeds)) + " | "
                 + " | ".join(spread([b[k] for b in sft]) for k in TABLE_KEYS) + " | | |")
    for label in labels:
        rs = [r for r in records if r["label"] == label]
        lines.append(f"| {label} | " + " ".join(str(r["seed"]) for r in rs) + " | "
                     + " | ".join(spread([r["after"][k] for r in rs]) for k in TABLE_KEYS)
                     + f" | {spread([r['wall_s'] for r in rs], 0)} | {spread([r['cpu_s'] for r in rs], 0)} |")
    proxied = [r for r in records if "proxy" in r]
    if proxied:
        head = ["run", "seed", "proxy (sampled)", "gold (sampled)", "proxy (greedy)", "gold (greedy)",
                "train reward, first → last 10%"]
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in proxied:
            p, b, a = r["proxy"], r["before"], r["after"]
            tr = r.get("train_reward")
            lines.append(f"| {r['label']} | {r['seed']} | {p['before/proxy/sampled']:.3f} → {p['after/proxy/sampled']:.3f}"
                         f" | {b['eval/gold/sampled']:.3f} → {a['eval/gold/sampled']:.3f}"
                         f" | {p['before/proxy/greedy']:.3f} → {p['after/proxy/greedy']:.3f}"
                         f" | {b['eval/gold/greedy']:.3f} → {a['eval/gold/greedy']:.3f}"
                         + (f" | {tr['first']:.3f} → {tr['last']:.3f} |" if tr else " | |"))
    return "\n".join(lines)


def describe(r: dict) -> str:
    return (f"{r['task']} {r['label']:<12} seed {r['seed']}  " + "  ".join(
        f"{k.split('/')[-1]} {r['before'][k]:.3f}->{r['after'][k]:.3f}" for k in KEYS)
        + f"  wall {r['wall_s']:.0f}s (demo train {r['seconds']['train']:.0f}s, CPU {r['cpu_s']:.0f}s)"
        + f"  load1 {r['load1_before']:.2f}->{r['load1_after']:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="arithmetic")
    parser.add_argument("--runs", nargs="+", default=["grpo", "dpo"], metavar="LABEL[:METHOD]",
                        help="runs to compare (the method defaults to the label)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--proxy-seeds", type=int, nargs="+", default=None,
                        help="seeds of the runs whose flags hold --reward proxy (default: --seeds)")
    parser.add_argument("--args", action="append", default=[], metavar='LABEL="demo flags"',
                        help="a run's own demo flags (repeatable)")
    parser.add_argument("--env", action="append", default=[], metavar="VAR=VALUE",
                        help="an environment variable of every run, e.g. OMP_NUM_THREADS=1 (repeatable)")
    parser.add_argument("--out", default="runs/online-testbed", help="folder of the runs' reports")
    parser.add_argument("--resume", action="store_true", help="reuse the runs already finished under --out")
    parser.add_argument("--json", default=None, help="also write every run's record to this file")
    args = parser.parse_args(argv)
    runs = [parse_run(r) for r in args.runs]
    flags = {label: shlex.split(text) for label, _, text in (a.partition("=") for a in args.args)}
    unknown = set(flags) - {label for label, _ in runs}
    if unknown:
        parser.error(f"--args for runs not in --runs: {', '.join(sorted(unknown))}")
    env = dict(item.split("=", 1) for item in args.env)
    out = Path(args.out)
    records = []
    for label, method in runs:
        own = flags.get(label, [])
        proxy = "--reward=proxy" in own or any(a == "--reward" and b == "proxy" for a, b in zip(own, own[1:], strict=False))
        for seed in (args.proxy_seeds if proxy and args.proxy_seeds is not None else args.seeds):
            records.append(one_run(args.task, label, method, seed, own, env, out, args.resume))
            print(describe(records[-1]), flush=True)
    print()
    print(tables(args.task, records))
    machine = records[0]["machine"]
    print(f"\nmachine: {machine}")
    if args.json:
        Path(args.json).write_text(json.dumps({"task": args.task, "runs": records}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
