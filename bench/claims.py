"""The seed papers' claims in miniature: each claim measured on the testbed over several seeds, next
to what the paper says, with a verdict reached by the rules below.

    python bench/claims.py                                  # seeds 0 1 2, writes docs/claims.md
    python bench/claims.py --seeds 0 1 2 3 --work /tmp/claims --out claims.md
    python bench/claims.py --smallest --out /tmp/claims.md  # 1 seed, tiny sizes: about a minute

The script composes alignlab's own commands (``alignlab demo``, ``eval ranking``, ``eval
displacement``, ``convert ches-filter``, ``train``, ``decode --method best-of-n``, ``eval length``,
``feedback``, ``eval overopt``),
grouped in chains: a chain is a list of commands that depend on one another (the sentiment DPO
demo, then its ranking, its displacement, the CHES filters at each share kept and the DPO runs
on the filtered subsets). Each chain runs in a Python process of its own, one intra-op thread, calling
``alignlab.cli.main`` for each command (one interpreter start per chain, not per command), and
``--jobs`` chains (default 2) run side by side. Work is shared between claims: the sentiment
demo's DPO model serves the gold, ranking and displacement claims; one set of best-of-n runs
serves the KL, win-rate and over-optimisation claims. Every chain writes its commands' output to
``WORK/logs/CHAIN.log`` and their times to ``WORK/logs/CHAIN.times.json``.

Each claim is a function that reads the results and returns the claim as the paper states it, the
paper, the measured effects (mean ± standard deviation over seeds and the per-seed values), a
verdict with a one-line reason, and the details written to the report.

Verdict rules, applied mechanically to each effect (a number per seed, oriented so that the claim
predicts a positive value), with m the mean over seeds and s their standard deviation (n − 1):

- A sign claim ("X is larger than Y", "X falls"), with t the size the claim states (0 where it
  states none; "far below" is taken as 0.1):
  *reproduced* when every seed's effect exceeds t and m − t > 2s;
  *not reproduced* when m − t < −2s (the effect has the opposite sign, or falls short of the
  claimed size, by more than twice the seed spread);
  *inconclusive* otherwise (the seeds disagree in sign, or the mean is within the spread).
- A value claim ("X is near V"), with the tolerance τ stated beside it:
  *reproduced* when every seed's value lies within τ of V;
  *not reproduced* when |m − V| > τ + 2s;
  *inconclusive* otherwise.
- With one seed there is no spread: every effect is *inconclusive*.
- A claim with several effects is *reproduced* when all of them are, *not reproduced* when any of
  them is not, and *inconclusive* otherwise.

Which task and which number decides a claim is fixed in the claim's function, before any run,
and the report shows the other tasks' numbers beside it where they say something.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VERDICTS = ("reproduced", "not reproduced", "inconclusive")
NOISE = 0.3  # the share of flipped labels in the noisy-label claims


# -- sizes ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sizes:
    """How big each piece of work is. ``DEFAULT`` is the real run; ``SMALLEST`` checks the whole
    pipeline in about a minute, with numbers too small to decide anything."""

    demo: tuple[str, ...] = ()            # extra flags of every `alignlab demo`
    train_epochs: float = 3.0             # DPO on the CHES-filtered and random halves (the demo's epochs)
    ranking: tuple[str, ...] = ()         # extra flags of `eval ranking --task`
    decode: tuple[str, ...] = ()          # extra flags of every `alignlab decode`
    n_arithmetic: tuple[int, ...] = (1, 2, 4, 8, 16)
    n_sentiment: tuple[int, ...] = (4, 16)
    length: tuple[str, ...] = ()          # extra flags of `eval length`
    ches_keep: tuple[float, ...] = (0.05, 0.25, 0.5)  # shares of the pairs the CHES filters keep
    overopt_prompts: int = 512            # proxy-labelled feedback prompts of the over-optimisation run
    overopt_save_every: int = 16          # its checkpoints (optimizer steps)
    overopt: tuple[str, ...] = ()         # extra flags of `eval overopt`


DEFAULT = Sizes()
SMALLEST = Sizes(demo=("--prompts", "32", "--epochs", "1", "--eval-prompts", "16"), train_epochs=1.0,
                 ranking=("--task-k", "2"), decode=("--limit", "16"), n_arithmetic=(1, 4), n_sentiment=(4,),
                 length=("--limit", "16", "-n", "1", "--bootstrap", "100"), ches_keep=(0.25, 0.5),
                 overopt_prompts=32, overopt_save_every=1, overopt=("--limit", "16", "-n", "1", "--bootstrap", "100"))


# -- where each result lives ---------------------------------------------------------------------

def percent(share: float) -> str:
    """A share as the percent in file names and claim keys: 0.05 -> "5"."""
    return f"{share * 100:g}"


def ches_key(kind: str, keep: float) -> str:
    return f"{kind}-{percent(keep)}"


class Paths:
    """The files of one seed's work, shared by the chains that write them and the claims that read them."""

    def __init__(self, work: Path, seed: int):
        self.seed = seed
        d = work / f"seed-{seed}"
        self.dir = d
        self.sentiment_demo = d / "sentiment-dpo"
        self.sentiment_ranking = d / "sentiment-ranking.json"
        self.sentiment_displacement = d / "sentiment-displacement.json"
        self.arithmetic_demo = d / "arithmetic-dpo"
        self.arithmetic_ranking = d / "arithmetic-ranking.json"
        self.arithmetic_displacement = d / "arithmetic-displacement.json"
        self.constraints_demo = d / "constraints-dpo-proxy"
        self.constraints_length = d / "constraints-length.json"
        self.bon = d / "best-of-n"

    def kept(self, kind: str, keep: float) -> Path:
        """The share ``keep`` of the sentiment demo's pairs that a filter kept: ``ches``, ``lnches``
        (the lowest scores) or ``random`` (the control, as many pairs)."""
        return self.dir / f"pairs-{kind}-keep{percent(keep)}.jsonl"

    def kept_run(self, kind: str, keep: float) -> Path:
        return self.dir / f"dpo-{kind}-keep{percent(keep)}"

    def kept_displacement(self, kind: str, keep: float) -> Path:
        return self.dir / f"dpo-{kind}-keep{percent(keep)}-displacement.json"

    @property
    def overopt_run(self) -> Path:
        """DPO on arithmetic pairs labelled by the flawed proxy, every checkpoint kept."""
        return self.dir / "arithmetic-dpo-proxy"

    @property
    def overopt(self) -> Path:
        return self.dir / "arithmetic-dpo-proxy-overopt.json"

    def noisy_demo(self, method: str) -> Path:
        return self.dir / f"arithmetic-noise{int(NOISE * 100)}-{method}"

    def decode(self, task: str, scorer: str, n: int) -> Path:
        return self.bon / f"{task}-{scorer}-n{n}.jsonl"

    def plain(self, task: str) -> Path:
        """Plain samples (best-of-1) drawn with another seed: answers B of the win-rate comparison."""
        return self.bon / f"{task}-plain.jsonl"

    def win_rate(self, task: str, scorer: str, n: int) -> Path:
        return self.bon / f"{task}-{scorer}-n{n}-vs-plain.json"


# -- chains of commands ----------------------------------------------------------------------------

@dataclass
class Step:
    """One command: ``argv`` for ``alignlab`` (or ``claims:random-half``), the file whose existence
    means it is done (``--resume`` skips it), and the claims it serves (for their time)."""

    argv: list[str]
    done: str
    claims: list[str]


@dataclass
class Chain:
    name: str
    steps: list[Step]
    cost: float  # estimated seconds, to start the longest chains first


def sft(task: str) -> str:
    from alignlab.testbed.shipped import task_model

    return str(task_model(task, "sft"))


def demo_argv(task: str, seed: int, out: Path, sizes: Sizes, *extra: str) -> list[str]:
    return ["demo", "--task", task, "--seed", str(seed), "--eval-every", "0", *sizes.demo, *extra,
            "--out", str(out), "--overwrite", "--no-progress"]


def demo_steps(task: str, seed: int, sizes: Sizes, demo: Path, ranking: Path, displacement: Path,
               demo_claims: list[str]) -> list[Step]:
    """A task's DPO demo, then its ranking accuracy on held-out pairs and the log-prob change of its
    own training pairs from the SFT model to the trained one."""
    return [
        Step(demo_argv(task, seed, demo, sizes), str(demo / "metrics.json"), demo_claims),
        Step(["eval", "ranking", "--task", task, "--task-seed", str(seed), *sizes.ranking,
              "--model", str(demo / "model"), "--reference", sft(task), "--out", str(ranking), "--no-progress"],
             str(ranking), ["ranking"]),
        Step(["eval", "displacement", "--data", str(demo / "feedback" / "pairs.jsonl"),
              "--models", sft(task), str(demo / "model"), "--out", str(displacement), "--no-progress"],
             str(displacement), ["displacement"]),
    ]


def chains(work: Path, seeds: list[int], sizes: Sizes) -> list[Chain]:
    from noisy_labels import parse_method

    from alignlab.tasks import get_task
    from alignlab.testbed.demo import TASK_LR

    out: list[Chain] = []
    for seed in seeds:
        p = Paths(work, seed)
        p.bon.mkdir(parents=True, exist_ok=True)
        s = str(seed)

        # sentiment: the DPO demo, its ranking and displacement, CHES / LN-CHES / random halves
        every_ches = [ches_key(k, f) for k in ("ches", "lnches") for f in sizes.ches_keep]
        steps = demo_steps("sentiment", seed, sizes, p.sentiment_demo, p.sentiment_ranking, p.sentiment_displacement,
                           ["gold", "ranking", "displacement", *every_ches])
        pairs = str(p.sentiment_demo / "feedback" / "pairs.jsonl")
        for keep in sizes.ches_keep:
            both = [ches_key(k, keep) for k in ("ches", "lnches")]
            for kind, flags in (("ches", []), ("lnches", ["--length-normalized"])):
                steps.append(Step(["convert", "ches-filter", pairs, str(p.kept(kind, keep)), "--model",
                                   sft("sentiment"), "--keep-fraction", f"{keep:g}", *flags, "--no-progress"],
                                  str(p.kept(kind, keep)), [ches_key(kind, keep)]))
            steps.append(Step(["claims:random-half", pairs, str(p.kept("random", keep)), str(p.kept("ches", keep)), s],
                              str(p.kept("random", keep)), both))
            for kind in ("ches", "lnches", "random"):
                claims = [ches_key(kind, keep)] if kind != "random" else both
                run = p.kept_run(kind, keep)
                steps.append(Step(["train", "--method", "dpo", "--model", sft("sentiment"), "--data",
                                   str(p.kept(kind, keep)), "--lr", str(TASK_LR["sentiment"]), "--epochs",
                                   f"{sizes.train_epochs:g}", "--batch-size", "16", "--scheduler", "linear",
                                   "--warmup-ratio", "0.1", "--max-length", "256", "--seed", s, "--eval-every", "0",
                                   "--keep-checkpoints", "1", "--output-dir", str(run), "--overwrite", "true",
                                   "--progress", "false"], str(run / "summary.json"), claims))
                steps.append(Step(["eval", "displacement", "--run", str(run), "--out",
                                   str(p.kept_displacement(kind, keep)), "--no-progress"],
                                  str(p.kept_displacement(kind, keep)), claims))
        out.append(Chain(f"sentiment-s{seed}", steps, 120 + 100 * sum(sizes.ches_keep) / 0.5))

        # over-optimisation over training: DPO on arithmetic pairs ranked by the flawed proxy, every
        # checkpoint kept, then proxy and gold against √KL at each (`eval overopt`)
        feedback = p.overopt_run.with_name(p.overopt_run.name + "-feedback")
        run = p.overopt_run
        steps = [
            Step(["feedback", "--task", "arithmetic", "--reward", "proxy", "--prompts", str(sizes.overopt_prompts),
                  "--seed", s, "--out", str(feedback)], str(feedback / "metadata.json"), ["overopt_training"]),
            Step(["train", "--method", "dpo", "--model", sft("arithmetic"), "--data", str(feedback / "pairs.jsonl"),
                  "--lr", str(TASK_LR["arithmetic"]), "--epochs", f"{sizes.train_epochs:g}", "--batch-size", "16",
                  "--scheduler", "linear", "--warmup-ratio", "0.1", "--max-length", "256", "--seed", s,
                  "--eval-every", "0", "--save-every", str(sizes.overopt_save_every), "--keep-checkpoints", "0",
                  "--output-dir", str(run), "--overwrite", "true", "--progress", "false"],
                 str(run / "summary.json"), ["overopt_training"]),
            Step(["eval", "overopt", "--run", str(run), "--task", "arithmetic", "--seed", s, *sizes.overopt,
                  "--out", str(p.overopt)], str(p.overopt), ["overopt_training"]),
        ]
        out.append(Chain(f"overopt-s{seed}", steps, 45))

        # arithmetic: the clean DPO demo (gold; ranking and displacement beside sentiment's) and the
        # noisy-label demos of bench/noisy_labels.py (rDPO told the flip rate)
        steps = demo_steps("arithmetic", seed, sizes, p.arithmetic_demo, p.arithmetic_ranking,
                           p.arithmetic_displacement, ["gold"])
        for method in ("dpo", "rdpo", "lcpo"):
            name, params = parse_method(method, NOISE, None)
            flags = [x for k, v in params.items() for x in ("--param", f"{k}={v}")]
            steps.append(Step(demo_argv("arithmetic", seed, p.noisy_demo(method), sizes, "--method", name,
                                        "--label-noise", str(NOISE), *flags),
                              str(p.noisy_demo(method) / "metrics.json"), ["rdpo", "lcpo"]))
        out.append(Chain(f"arithmetic-s{seed}", steps, 80))

        # best-of-n from the SFT models: arithmetic by gold and by its flawed proxy; sentiment by gold
        # and by its proxy, and plain samples (another seed) to measure the win rate under the proxy
        def decode(task: str, scorer: str, n: int, output: Path, seed_: int) -> list[str]:
            return ["decode", "--method", "best-of-n", "--model", sft(task), "--scorer", f"task:{task}:{scorer}",
                    "--n", str(n), "--task", task, "--seed", str(seed_),
                    "--max-new-tokens", str(get_task(task).max_new_tokens), *sizes.decode, "--overwrite", "--output", str(output)]

        steps = []
        for scorer in ("proxy", "gold"):
            for n in sizes.n_arithmetic:
                if n == 1 and scorer == "gold":
                    continue  # best-of-1 is plain sampling whatever the scorer: the proxy's run serves both
                output = p.decode("arithmetic", scorer, n)
                claims = ["overoptimization"] if scorer == "proxy" else ["winrate_gold"]
                claims += ["kl"] if n > 1 else []
                steps.append(Step(decode("arithmetic", scorer, n, output, seed), f"{output}.summary.json", claims))
        out.append(Chain(f"best-of-n-arithmetic-s{seed}", steps, 60))

        plain = p.plain("sentiment")
        steps = [Step(decode("sentiment", "gold", 1, plain, seed + 1000), f"{plain}.summary.json",
                      ["winrate_gold", "winrate_proxy"])]
        for scorer in ("gold", "proxy"):
            for n in sizes.n_sentiment:
                output = p.decode("sentiment", scorer, n)
                claims = ["kl", f"winrate_{scorer}"] + (["overoptimization"] if scorer == "proxy" else [])
                steps.append(Step(decode("sentiment", scorer, n, output, seed), f"{output}.summary.json", claims))
        for scorer in ("gold", "proxy"):
            for n in sizes.n_sentiment:
                result = p.win_rate("sentiment", scorer, n)
                steps.append(Step(["eval", "length", "--answers", str(p.decode("sentiment", scorer, n)),
                                   "--against", str(plain), "--scorer", f"task:sentiment:{scorer}", "--bootstrap",
                                   "0", "--out", str(result)], str(result), [f"winrate_{scorer}"]))
        out.append(Chain(f"best-of-n-sentiment-s{seed}", steps, 110))

        # length: DPO on constraints feedback labelled by the proxy that likes length, against the SFT model
        steps = [
            Step(demo_argv("constraints", seed, p.constraints_demo, sizes, "--reward", "proxy"),
                 str(p.constraints_demo / "metrics.json"), ["length"]),
            Step(["eval", "length", "--task", "constraints", "--model", str(p.constraints_demo / "model"),
                  "--against-model", sft("constraints"), "--scorer", "task:constraints:proxy", "--unit", "words",
                  "--seed", s, *sizes.length, "--out", str(p.constraints_length)], str(p.constraints_length),
                 ["length"]),
        ]
        out.append(Chain(f"length-s{seed}", steps, 120))
    return sorted(out, key=lambda c: -c.cost)


def random_half(pairs: str, out: str, like: str, seed: str) -> None:
    """The control of the CHES filter: as many of ``pairs``' rows as ``like`` holds, drawn with
    ``random.Random(seed)``, in their order."""
    rows = Path(pairs).read_text().splitlines()
    k = len(Path(like).read_text().splitlines())
    keep = sorted(random.Random(int(seed)).sample(range(len(rows)), k))
    Path(out).write_text("".join(rows[i] + "\n" for i in keep))


def run_chain(spec_file: Path) -> int:
    """Run one chain's steps in this process (``--chain``), writing their times as they finish;
    stop at the first that fails."""
    from alignlab.cli import main as alignlab

    spec = json.loads(spec_file.read_text())
    times = []
    for step in spec["steps"]:
        if spec["resume"] and Path(step["done"]).exists():
            print(f"\n=== skipped (done): {shlex.join(step['argv'])}", flush=True)
            times.append({"argv": step["argv"], "claims": step["claims"], "seconds": 0.0, "cpu": 0.0, "skipped": True})
            continue
        print(f"\n=== {shlex.join(step['argv'])}", flush=True)
        t, cpu = time.perf_counter(), time.process_time()
        try:
            if step["argv"][0] == "claims:random-half":
                random_half(*step["argv"][1:])
                code = 0
            else:
                code = alignlab(step["argv"])
        except Exception:  # noqa: BLE001 - shown in the chain's log, which the parent prints
            traceback.print_exc()
            code = 1
        if code:
            print(f"=== failed ({code})", flush=True)
            return code
        seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
        print(f"=== {seconds:.1f} s ({cpu:.1f} s of CPU)", flush=True)
        times.append({"argv": step["argv"], "claims": step["claims"], "seconds": seconds, "cpu": cpu,
                      "skipped": False})
        Path(spec["times"]).write_text(json.dumps(times, indent=1))
    Path(spec["times"]).write_text(json.dumps(times, indent=1))
    return 0


def run_chains(todo: list[Chain], work: Path, jobs: int, resume: bool, cache: Path) -> dict[str, dict]:
    """Run the chains, ``jobs`` at a time, each in a process of its own with one thread; return
    each chain's wall time and its steps' times. Raises SystemExit naming the failed chains."""
    import alignlab

    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    package_root = str(Path(alignlab.__file__).resolve().parents[1])  # the chains run the alignlab this one imports
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1",
           "ALIGNLAB_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}

    def one(chain: Chain) -> dict:
        spec = logs / f"{chain.name}.spec.json"
        times = logs / f"{chain.name}.times.json"
        spec.write_text(json.dumps({"steps": [s.__dict__ for s in chain.steps], "resume": resume,
                                    "times": str(times)}, indent=1))
        t = time.perf_counter()
        with open(logs / f"{chain.name}.log", "w") as log:
            code = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--chain", str(spec)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO).returncode
        wall = time.perf_counter() - t
        print(f"  {chain.name:<28} {wall:7.1f} s{'' if code == 0 else f'  FAILED ({code})'}", flush=True)
        return {"name": chain.name, "code": code, "wall": wall,
                "steps": json.loads(times.read_text()) if times.exists() else []}

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = {r["name"]: r for r in pool.map(one, todo)}
    failed = [name for name, r in results.items() if r["code"]]
    if failed:
        tails = "\n".join(f"--- {name} ({logs / f'{name}.log'}):\n"
                          + "\n".join((logs / f"{name}.log").read_text().splitlines()[-25:]) for name in failed)
        raise SystemExit(f"chains failed: {', '.join(failed)}\n{tails}")
    return results


# -- verdicts -------------------------------------------------------------------------------------

@dataclass
class Effect:
    """A number per seed that the claim predicts to be positive (``target`` None; larger than
    ``threshold`` where the claim states a size), or to be near ``target`` within ``tolerance``."""

    name: str
    values: list[float]
    threshold: float = 0.0
    target: float | None = None
    tolerance: float = 0.0

    @property
    def mean(self) -> float:
        return statistics.mean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else float("nan")

    def summary(self) -> str:
        """``name = mean ± std (v1 / v2 / v3)``, or ``name = value (1 seed)``."""
        if len(self.values) == 1:
            return f"{self.name} = {self.values[0]:+.3f} (1 seed)"
        return (f"{self.name} = {self.mean:+.3f} ± {self.std:.3f} "
                f"({' / '.join(f'{v:+.3f}' for v in self.values)})")

    def judge(self) -> tuple[str, str]:
        """(verdict, one-line reason) by the rules of the module docstring."""
        if len(self.values) < 2:
            return "inconclusive", f"{self.name}: one seed, no spread to compare with"
        m, s = self.mean, self.std
        if self.target is None:
            t = self.threshold
            excess = f"mean − {t:g} = {m - t:+.3f}" if t else f"mean {m:+.3f}"
            if all(v > t for v in self.values) and m - t > 2 * s:
                return "reproduced", f"{self.name} > {t:g} on every seed; {excess} > 2·std {2 * s:.3f}"
            if m - t < -2 * s:
                what = "has the opposite sign" if m < 0 or not t else f"falls short of the claimed {t:g}"
                return "not reproduced", f"{self.name}: {excess} {what} by more than 2·std {2 * s:.3f}"
            if any(v > t for v in self.values) and any(v <= t for v in self.values):
                return "inconclusive", f"{self.name} > {t:g} on {sum(v > t for v in self.values)} of " \
                                       f"{len(self.values)} seeds"
            return "inconclusive", f"{self.name}: {excess}, within 2·std {2 * s:.3f}"
        d = m - self.target
        if all(abs(v - self.target) <= self.tolerance for v in self.values):
            return "reproduced", f"{self.name} within ±{self.tolerance:g} of {self.target:.3f} on every seed"
        if abs(d) > self.tolerance + 2 * s:
            return "not reproduced", (f"{self.name}: mean {m:.3f} is {d:+.3f} from {self.target:.3f}, beyond "
                                      f"±{self.tolerance:g} + 2·std {2 * s:.3f}")
        return "inconclusive", f"{self.name}: mean {m:.3f}, {d:+.3f} from {self.target:.3f}, within the spread"


def combine(effects: list[Effect]) -> tuple[str, str]:
    if all(len(e.values) < 2 for e in effects):
        return "inconclusive", "one seed: no spread to compare with"
    judged = [e.judge() for e in effects]
    verdicts = [v for v, _ in judged]
    if all(v == "reproduced" for v in verdicts):
        return "reproduced", "; ".join(r for _, r in judged)
    if "not reproduced" in verdicts:
        return "not reproduced", "; ".join(r for v, r in judged if v == "not reproduced")
    return "inconclusive", "; ".join(r for v, r in judged if v == "inconclusive")


@dataclass
class Claim:
    key: str
    title: str
    claim: str          # as the paper states it
    paper: str          # the paper in full
    cite: str           # its short name, for the table
    setup: str          # how it is measured here
    effects: list[Effect]
    details: list[str] = field(default_factory=list)  # markdown lines: per-seed tables, context
    verdict: str = ""
    reason: str = ""

    def __post_init__(self) -> None:
        self.verdict, self.reason = combine(self.effects)


# -- reading results --------------------------------------------------------------------------------

def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def fmt(values: list[float], digits: int = 3) -> str:
    """``mean ± std`` (or the one value) of per-seed numbers."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(r) + " |" for r in body], ""]


def per_seed(label: str, values: list[float], digits: int = 3, sign: bool = False) -> list[str]:
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    return [label, *[f.format(v) for v in values], fmt(values, digits)]


# -- the claims -------------------------------------------------------------------------------------

def claim_gold(ps: list[Paths], seeds: list[int]) -> Claim:
    effects, body = [], []
    for task, attr in (("sentiment", "sentiment_demo"), ("arithmetic", "arithmetic_demo")):
        reports = [load(getattr(p, attr) / "metrics.json") for p in ps]
        before = [r["before"]["eval/gold/sampled"] for r in reports]
        after = [r["after"]["eval/gold/sampled"] for r in reports]
        gain = [a - b for a, b in zip(after, before, strict=True)]
        effects.append(Effect(f"{task}: gold after − before", gain))
        body += [per_seed(f"{task}: SFT model", before), per_seed(f"{task}: after DPO", after),
                 per_seed(f"{task}: SFT model, greedy", [r["before"]["eval/gold/greedy"] for r in reports]),
                 per_seed(f"{task}: after DPO, greedy", [r["after"]["eval/gold/greedy"] for r in reports]),
                 per_seed(f"{task}: KL to SFT (nats)", [r["after"]["eval/gold/kl"] for r in reports])]
    return Claim(
        "gold", "DPO raises the reward over the SFT model",
        "DPO optimises the KL-constrained reward-maximisation objective of RLHF directly from preference pairs, "
        "without a reward model or reinforcement learning; in controlled sentiment generation its policy reaches "
        "a higher reward than the SFT model it starts from.",
        "Rafailov et al. 2023, *Direct Preference Optimization: Your Language Model is Secretly a Reward Model*",
        "Rafailov et al. 2023 (DPO)",
        "`alignlab demo` on sentiment and on arithmetic (DPO, β 0.1, the task's learning rate, pairs of the SFT "
        "model's samples ranked by gold); the gold reward of sampled answers to the held-out prompts before and "
        "after. Effect: after − before, per task.",
        effects, table(["gold reward (sampled unless greedy)", *[f"seed {s}" for s in seeds], "mean ± std"], body) + [
            "The claim is about sampled answers, and they improve on both tasks. The sentiment gains come with "
            "tens of nats of KL at the demo's learning rate, and there the greedy answer's gold falls (the SFT "
            "model's most likely continuation was already positive; README, the demo's section)."])


def claim_ranking(ps: list[Paths], seeds: list[int]) -> Claim:
    beta = "0.1"  # the β DPO trained with
    reports = {t: [load(getattr(p, f"{t}_ranking")) for p in ps] for t in ("sentiment", "arithmetic")}
    gap = [r["alignment_gap"][beta]["summed"] for r in reports["sentiment"]]
    body = []
    for task, rs in reports.items():
        body += [per_seed(f"{task}: pairs", [r["pairs"] for r in rs], 0),
                 per_seed(f"{task}: R, SFT model", [r["reference_ranking_accuracy"]["summed"] for r in rs]),
                 per_seed(f"{task}: R, after DPO", [r["ranking_accuracy"]["summed"] for r in rs]),
                 per_seed(f"{task}: R* at β 0.1", [r["idealized_ranking_accuracy"][beta]["summed"] for r in rs]),
                 per_seed(f"{task}: gap R* − R", [r["alignment_gap"][beta]["summed"] for r in rs]),
                 per_seed(f"{task}: implicit-reward accuracy", [r["implicit_reward_accuracy"] for r in rs])]
    details = table(["summed log-probs", *[f"seed {s}" for s in seeds], "mean ± std"], body) + [
        "Decided on sentiment. Arithmetic is shown beside it: there the SFT model already ranks nearly all of its "
        "own best-against-worst samples right (a correct sum is its most likely answer), so R* − R has no room "
        "to be large."]
    return Claim(
        "ranking", "Ranking accuracy after DPO stays far below the idealized one",
        "Preference-tuned models rarely reach high ranking accuracy (most below 60%), and there is a large "
        "alignment gap between their ranking accuracy and the idealized ranking accuracy R* that a perfect "
        "optimum of the DPO/RLHF objective would reach from the same reference.",
        "Chen et al. 2024, *Preference Learning Algorithms Do Not Learn Preference Rankings*",
        "Chen et al. 2024",
        "`alignlab eval ranking --task T --model DPO --reference SFT --task-seed S` on the task's held-out pairs "
        "(the SFT model's 4 answers per held-out prompt, best against worst by gold), with the demo's DPO model. "
        "Effect: the alignment gap R*(β 0.1) − R on sentiment, summed log-probs; \"far below\" taken as a gap "
        "above 0.1.",
        [Effect("sentiment: R* − R at β 0.1", gap, threshold=0.1)], details)


def displacement_rows(ps: list[Paths], attr: str) -> list[dict]:
    return [load(getattr(p, attr))["models"][-1] for p in ps]


def claim_displacement(ps: list[Paths], seeds: list[int]) -> Claim:
    sent = displacement_rows(ps, "sentiment_displacement")
    arith = displacement_rows(ps, "arithmetic_displacement")
    body = []
    for task, rs in (("sentiment", sent), ("arithmetic", arith)):
        body += [per_seed(f"{task}: Δℓ(chosen)", [r["chosen_change"] for r in rs], sign=True),
                 per_seed(f"{task}: Δℓ(rejected)", [r["rejected_change"] for r in rs], sign=True),
                 per_seed(f"{task}: share of pairs whose chosen fell", [r["chosen_fell"] for r in rs])]
    details = table(["training pairs, SFT → DPO", *[f"seed {s}" for s in seeds], "mean ± std"], body) + [
        "Decided on sentiment, where the demo's learning rate moves the model far (tens of nats of KL); on "
        "arithmetic, at its gentler rate, DPO raises the chosen answers' log-prob, shown beside it."]
    return Claim(
        "displacement", "Likelihood displacement: the chosen log-prob falls during DPO",
        "During DPO the probability of the preferred responses often decreases (likelihood displacement), "
        "even as the margin over the rejected ones grows.",
        "Razin et al. 2024, *Unintentional Unalignment: Likelihood Displacement in Direct Preference Optimization*",
        "Razin et al. 2024",
        "`alignlab eval displacement --data PAIRS --models SFT DPO` on the demo's own training pairs. Effect: "
        "the fall of the chosen log-prob, −Δℓ(chosen), on sentiment.",
        [Effect("sentiment: −Δℓ(chosen)", [-r["chosen_change"] for r in sent])], details)


def claim_ches(ps: list[Paths], seeds: list[int], kind: str, keep: float) -> Claim:
    runs = {k: [load(p.kept_displacement(k, keep))["models"][-1] for p in ps] for k in (kind, "random")}
    full = displacement_rows(ps, "sentiment_displacement")
    diff = [a["chosen_change"] - b["chosen_change"] for a, b in zip(runs[kind], runs["random"], strict=True)]
    name = "CHES" if kind == "ches" else "LN-CHES"
    share = f"{percent(keep)}%"
    kept = [len(p.kept(kind, keep).read_text().splitlines()) for p in ps]
    body = [per_seed("all pairs (the demo)", [r["chosen_change"] for r in full], sign=True),
            per_seed(f"lowest {share} by {name}", [r["chosen_change"] for r in runs[kind]], sign=True),
            per_seed(f"random {share}", [r["chosen_change"] for r in runs["random"]], sign=True),
            per_seed(f"share fell, lowest {share} by {name}", [r["chosen_fell"] for r in runs[kind]]),
            per_seed(f"share fell, random {share}", [r["chosen_fell"] for r in runs["random"]]),
            per_seed("pairs kept", [float(k) for k in kept], 0)]
    flag = " --length-normalized" if kind == "lnches" else ""
    paper_note = (" This filter ranks by the plain score; the paper's own ranks by the length-normalised one."
                  if kind == "ches" else
                  " This is the paper's own filter (it keeps the samples of lowest length-normalised CHES).")
    return Claim(
        ches_key(kind, keep), f"Filtering by {name}, keeping the lowest {share}, reduces likelihood displacement",
        "Likelihood displacement is driven by preferences whose preferred and dispreferred responses have "
        "similar hidden representations (high CHES score); filtering out the pairs with the highest "
        "(length-normalised) CHES mitigates it.",
        "Razin et al. 2024, *Unintentional Unalignment: Likelihood Displacement in Direct Preference Optimization*",
        "Razin et al. 2024",
        f"The sentiment demo's training pairs: `alignlab convert ches-filter PAIRS KEPT --model SFT "
        f"--keep-fraction {keep:g}{flag}` keeps the {share} with the lowest {name} under the SFT model; the control "
        "is a random subset of the same size (`random.Random(seed)`). The filter runs at several shares (each its "
        "own claim); the paper's SORRY-Bench run kept the lowest 5% (ALGORITHMS.md §8.2). DPO trains on each "
        "subset with the demo's settings (`alignlab train` with its learning rate, epochs, batch size and "
        "schedule: a smaller subset gets fewer steps, the same for the filtered and the random one), and "
        "`alignlab eval displacement --run RUN` measures Δℓ(chosen) from the SFT model on the pairs trained on. "
        f"Effect: Δℓ(chosen) of the filtered subset − that of the random one (positive: less displacement)."
        + paper_note,
        [Effect(f"Δℓ(chosen): lowest {share} by {name} − random {share}", diff)],
        table(["Δℓ(chosen), pairs trained on", *[f"seed {s}" for s in seeds], "mean ± std"], body))


def claim_noise(ps: list[Paths], seeds: list[int], method: str) -> Claim:
    reports = {m: [load(p.noisy_demo(m) / "metrics.json") for p in ps] for m in ("dpo", "rdpo", "lcpo")}
    gold = {m: [r["after"]["eval/gold/sampled"] for r in rs] for m, rs in reports.items()}
    label = "rDPO" if method == "rdpo" else "LCPO"
    clean = [load(p.arithmetic_demo / "metrics.json") for p in ps]
    diff = [a - b for a, b in zip(gold[method], gold["dpo"], strict=True)]
    body = [per_seed("SFT model", [r["before"]["eval/gold/sampled"] for r in clean]),
            per_seed("DPO, clean labels", [r["after"]["eval/gold/sampled"] for r in clean]),
            per_seed(f"DPO, {NOISE:.0%} flipped", gold["dpo"]),
            per_seed(f"{label}, {NOISE:.0%} flipped", gold[method]),
            per_seed("difference", diff, sign=True),
            per_seed(f"KL to SFT (nats), DPO, {NOISE:.0%} flipped", [r["after"]["eval/gold/kl"] for r in reports["dpo"]]),
            per_seed(f"KL to SFT (nats), {label}, {NOISE:.0%} flipped",
                     [r["after"]["eval/gold/kl"] for r in reports[method]])]
    same = sum(d == 0 for d in diff)
    if method == "rdpo":
        title = "rDPO beats DPO under 30% flipped labels"
        claim = ("With preference labels flipped at a known rate ε, DPO's policy degrades; rDPO's loss, an "
                 "unbiased estimate of the clean DPO loss, is robust to the noise and gives a better policy.")
        paper = "Chowdhury et al. 2024, *Provably Robust DPO: Aligning Language Models with Noisy Feedback*"
        how = "rDPO is told the true flip rate (ε = 0.3)."
        cite = "Chowdhury et al. 2024 (rDPO)"
    else:
        title = "LCPO beats DPO under 30% flipped labels"
        claim = ("Treating whether each label is right as a latent variable and fitting the noise rate by EM "
                 "makes preference optimisation robust to noisy labels, above the plain loss it wraps.")
        paper = ("*Latent Collective Preference Optimization* (LCPO; alignlab's loss is a reconstruction, "
                 "ALGORITHMS.md §1.12)")
        how = "LCPO estimates ε itself (its defaults)."
        cite = "LCPO (reconstructed)"
    return Claim(
        method, title, claim, paper, cite,
        f"`alignlab demo --task arithmetic --label-noise {NOISE} --method M` (the runs of "
        f"`bench/noisy_labels.py`): the same pairs, exactly {NOISE:.0%} of their labels flipped, each method "
        f"with the demo's settings (lr 2e-5, β 0.1). {how} Effect: held-out sampled gold of "
        f"{label} − DPO, paired by seed.",
        [Effect(f"gold: {method} − dpo", diff)],
        table(["held-out gold (sampled)", *[f"seed {s}" for s in seeds], "mean ± std"], body) + [
            f"The two models differ (their KL to the SFT model differs), yet their held-out gold is the same on "
            f"{same} of {len(diff)} seeds: the evaluation draws every model's answers from the seed's sampling "
            "stream (coupled samples), so models this close mostly draw the same answers. At this learning "
            "rate and these small margins the robust losses mostly rescale DPO's gradient, which Adam undoes "
            "(README, \"Noisy labels, measured\")."])


def bon_summaries(ps: list[Paths], task: str, scorer: str, ns: tuple[int, ...]) -> dict[int, list[dict]]:
    """Per n, the seeds' decode summaries, with the mean score the scorer gave the picked answers."""
    out = {}
    for n in ns:
        found = []
        for p in ps:
            path = p.decode(task, "proxy" if n == 1 and task == "arithmetic" else scorer, n)
            summary = load(Path(f"{path}.summary.json"))
            scores = [s for r in rows(path) for s in r["scores"]]
            summary["scorer_reward"] = statistics.mean(scores)
            found.append(summary)
        out[n] = found
    return out


def claim_kl(ps: list[Paths], seeds: list[int], sizes: Sizes) -> Claim:
    runs = [(t, sc, n) for t, ns in (("arithmetic", sizes.n_arithmetic), ("sentiment", sizes.n_sentiment))
            for sc in ("gold", "proxy") for n in ns if n > 1]
    got = {(t, sc, n): bon_summaries(ps, t, sc, (n,))[n] for t, sc, n in runs}
    slack = [min(got[r][i]["kl_bound"] - got[r][i]["kl_high"] for r in runs) for i in range(len(ps))]
    body = [[t, sc, str(n), fmt([s["kl"] for s in got[(t, sc, n)]]),
             f"{max(s['kl_high'] for s in got[(t, sc, n)]):.3f}", f"{got[(t, sc, n)][0]['kl_bound']:.3f}"]
            for t, sc, n in runs]
    closest = max(runs, key=lambda r: statistics.mean(s["kl"] / s["kl_bound"] for s in got[r]))
    kl_close = statistics.mean(s["kl"] for s in got[closest])
    details = table(["task", "scorer", "n", "KL estimate", "largest upper end of its 95% interval", "log n − (n−1)/n"],
                    body) + [
        "The estimate plugs each prompt's n candidates' rewards into the exact KL of best-of-n for a reward "
        "with ties, Σ_c q_c log(q_c/p_c); with few candidates per prompt it is biased low, which the interval "
        "does not cover, so \"under the bound\" is a weak check. Ties are what keep it far under: gold has two "
        "values on arithmetic and, in practice, three (−1, 0, +1) on sentiment. The closest to the bound is "
        f"{closest[0]} picked by its {closest[1]} at n = {closest[2]}: {kl_close:.3f} against "
        f"{got[closest][0]['kl_bound']:.3f}, a reward that seldom ties."]
    return Claim(
        "kl", "Best-of-n's KL is within log n − (n−1)/n",
        "A commonly used analytical expression says that the KL divergence between the best-of-n policy and the "
        "base policy equals log n − (n−1)/n; it is in fact an upper bound on the actual KL divergence.",
        "Beirami et al. 2024, *Theoretical guarantees on the best-of-n alignment policy* (the expression is used "
        "e.g. by Gao et al. 2023)", "Beirami et al. 2024",
        "`alignlab decode --method best-of-n --model SFT --scorer task:T:gold|proxy --n N --task T --seed S` on "
        f"the held-out prompts, n in {list(sizes.n_arithmetic)} on arithmetic and {list(sizes.n_sentiment)} on "
        "sentiment, both scorers. Effect: the bound minus the upper end of the KL estimate's 95% bootstrap "
        "interval, the smallest over every task, scorer and n ≥ 2 of the seed.",
        [Effect("smallest (bound − KL upper end)", slack)], details)


def tied(p: Paths, n: int, scorer: str) -> tuple[int, int]:
    """(pairs, tied pairs): best-of-n picked by ``scorer`` on sentiment against the plain samples of
    the same prompts, both scored by ``scorer``."""
    from alignlab.tasks import get_task

    score = getattr(get_task("sentiment"), scorer)
    plain = {r["prompt"]: r["completions"][0] for r in rows(p.plain("sentiment"))}
    pairs = [(r["prompt"], r["completions"][0], plain[r["prompt"]]) for r in rows(p.decode("sentiment", scorer, n))]
    return len(pairs), sum(abs(score(x, a) - score(x, b)) < 1e-9 for x, a, b in pairs)


def tie_note(ps: list[Paths], sizes: Sizes, scorer: str) -> str:
    counts = {n: [tied(p, n, scorer) for p in ps] for n in sizes.n_sentiment}
    return "; ".join(f"n = {n}: {sum(t for _, t in c) / sum(k for k, _ in c):.1%} of {sum(k for k, _ in c)} pairs"
                     for n, c in counts.items())


def claim_win_rate(ps: list[Paths], seeds: list[int], sizes: Sizes, scorer: str) -> Claim:
    tol = 0.03
    effects, body = [], []
    pairs = load(ps[0].win_rate("sentiment", scorer, sizes.n_sentiment[0]))["pairs"]["pairs"]
    noise = "; ".join(f"n = {n}: ±{math.sqrt(n / (n + 1) / (n + 1) / pairs):.3f}" for n in sizes.n_sentiment)
    for n in sizes.n_sentiment:
        values = [load(p.win_rate("sentiment", scorer, n))["pairs"]["win_rate"] for p in ps]
        effects.append(Effect(f"sentiment, n {n}: win rate", values, target=n / (n + 1), tolerance=tol))
        body.append(per_seed(f"sentiment, n = {n} (claimed {n / (n + 1):.3f})", values))
    setup = (f"Best-of-n on sentiment picked by the task's {scorer} (`alignlab decode --method best-of-n --scorer "
             f"task:sentiment:{scorer} --n N --task sentiment --seed S`), against plain samples of the same prompts "
             "drawn with another seed (`decode --n 1 --seed S+1000`), compared under the same reward by `alignlab "
             f"eval length --answers BON --against PLAIN --scorer task:sentiment:{scorer}` (its raw win rate; a tie "
             f"counts ½), n in {list(sizes.n_sentiment)}. Value claim: n/(n+1) within ±{tol}.")
    precision = (f"One seed's win rate over {pairs} pairs has a sampling standard error of about {noise} (at the "
                 f"claimed rate, ties aside), against the tolerance ±{tol}: a seed can miss the tolerance by chance.")
    if scorer == "gold":
        arith = bon_summaries(ps, "arithmetic", "gold", tuple(n for n in sizes.n_arithmetic if n > 1))
        body += [per_seed(f"arithmetic, n = {n} (claimed {n / (n + 1):.3f})", [s["win_rate"] for s in arith[n]])
                 for n in arith]
        scores = [v for p in ps for r in rows(p.plain("sentiment")) for v in r["scores"]]
        share = {v: sum(abs(x - v) < 1e-9 for x in scores) / len(scores) for v in (-1.0, 0.0, 1.0)}
        details = table(["gold win rate against one plain sample", *[f"seed {s}" for s in seeds], "mean ± std"], body)
        details.append(
            f"Decided on sentiment; the arithmetic rows are the win rates `alignlab decode` reports against its own "
            f"plain samples. Ties: of {len(scores)} plain sentiment samples, {share[0.0]:.1%} score exactly 0, "
            f"{share[1.0]:.1%} exactly +1 and {share[-1.0]:.1%} exactly −1 (gold = (p − n)/(p + n) over lexicon "
            "words, 0 without any). The best of n ties the plain sample under gold in "
            f"{tie_note(ps, sizes, 'gold')} (over all seeds), and a tie counts ½: the win rate falls below "
            "n/(n+1), as the paper's bound allows. Arithmetic's gold is binary (right or wrong), where ties are "
            "the rule.")
        details += ["", precision]
        title = "Best-of-n wins n/(n+1) of the time against one sample (gold scorer)"
    else:
        details = table(["proxy win rate against one plain sample", *[f"seed {s}" for s in seeds], "mean ± std"],
                        body) + [
            "n/(n+1) needs a reward without ties, and that the same reward picks and judges. The sentiment proxy "
            "(gold + 0.02 per word, capped at 25 words) ties only when gold and the word count (up to 25) both "
            f"agree: the best of n ties the plain sample under it in {tie_note(ps, sizes, 'proxy')} (over all "
            "seeds).", "", precision]
        title = "Best-of-n wins n/(n+1) of the time against one sample (a reward with fewer ties)"
    return Claim(
        f"winrate_{scorer}", title,
        "The win rate of the best-of-n policy against the base policy, judged by the reward that picks, is at "
        "most n/(n+1), and equals n/(n+1) when the reward has no ties (ALGORITHMS.md §7.1: \"win rate of BoN "
        "against one base sample is N/(N+1)\").",
        "Beirami et al. 2024, *Theoretical guarantees on the best-of-n alignment policy*, §5", "Beirami et al. 2024",
        setup, effects, details)


def claim_overoptimization(ps: list[Paths], seeds: list[int], sizes: Sizes) -> Claim:
    ns = sizes.n_arithmetic
    got = bon_summaries(ps, "arithmetic", "proxy", ns)
    first, last = ns[0], ns[-1]
    proxy_rise = [b["scorer_reward"] - a["scorer_reward"] for a, b in zip(got[first], got[last], strict=True)]
    gold_fall = [max(got[n][i]["gold"] for n in ns) - got[last][i]["gold"] for i in range(len(ps))]
    body = [[str(n), fmt([math.sqrt(max(s["kl"], 0.0)) for s in got[n]]), fmt([s["scorer_reward"] for s in got[n]]),
             fmt([s["gold"] for s in got[n]])] for n in ns]
    details = table(["n", "√KL (nats^½)", "proxy reward of the picked answers", "gold reward"], body)
    sent = bon_summaries(ps, "sentiment", "proxy", sizes.n_sentiment)
    details += [
        "Arithmetic's proxy pays partial credit for the leading digits plus a bonus per character trailing the "
        "answer: picking by it favours wrong, wordy answers. Gold is highest at n = "
        + ", ".join(str(max(ns, key=lambda n, i=i: got[n][i]["gold"])) for i in range(len(ps)))
        + " (per seed): the proxy's flaw is large enough that gold falls from the first step, where Gao et al. "
        "saw it rise before falling.",
        "",
        "Sentiment, picked by its proxy (gold + 0.02 per word): "
        + "; ".join(f"n = {n}: √KL {fmt([math.sqrt(max(s['kl'], 0.0)) for s in sent[n]])}, proxy "
                    f"{fmt([s['scorer_reward'] for s in sent[n]])}, gold {fmt([s['gold'] for s in sent[n]])}"
                    for n in sizes.n_sentiment)
        + " (plain sampling's gold: " + fmt([s["gold_plain"] for s in sent[sizes.n_sentiment[0]]])
        + "): its length bonus rarely overturns gold's order at these n, so gold still rises there."]
    return Claim(
        "overoptimization", "Over-optimisation under best-of-n: the proxy rises while gold falls, against √KL",
        "Optimising a proxy reward model (best-of-n or RL) raises the proxy reward steadily as the policy moves "
        "away from the initial one (measured by √KL), while the gold reward rises, peaks and then falls.",
        "Gao, Schulman & Hilton 2023, *Scaling Laws for Reward Model Overoptimization*", "Gao et al. 2023",
        "Best-of-n on arithmetic picked by the task's flawed proxy "
        f"(`alignlab decode --method best-of-n --scorer task:arithmetic:proxy --n N`), n in {list(ns)}; the "
        "summary's gold and KL, the proxy's mean over the picked answers. Effects: proxy at the largest n − at "
        "n = 1; gold at its peak over n − gold at the largest n.",
        [Effect(f"proxy: n {last} − n {first}", proxy_rise), Effect(f"gold: peak − n {last}", gold_fall)],
        details)


def claim_overopt_training(ps: list[Paths], seeds: list[int], sizes: Sizes) -> Claim:
    reports = [load(p.overopt) for p in ps]
    by_seed = [r["rows"] for r in reports]
    common = sorted(set.intersection(*({row["step"] for row in rows if row["step"] is not None} for rows in by_seed)))

    def line(label: str, picked: list[dict]) -> list[str]:
        return [label, fmt([r["kl"] for r in picked]), fmt([r["sqrt_kl"] for r in picked]),
                fmt([r["proxy"] for r in picked]), fmt([r["gold"] for r in picked])]

    body = [line(str(step), [next(r for r in rows if r["step"] == step) for rows in by_seed]) for step in common]
    lasts = [rows[-1] for rows in by_seed]
    if any(r["step"] not in common for r in lasts):
        body.append(line(f"last ({' / '.join(str(r['step']) for r in lasts)})", lasts))
    details = table(["step", "KL (nats)", "√KL (nats^½)", "proxy reward", "gold reward"], body)
    peaks = ", ".join(str(r["trend"]["gold_peak_step"]) for r in reports)
    details.append(f"Gold is highest at step {peaks} (per seed; step 0 is the SFT model). Each number is the mean "
                   f"over a model's answers ({reports[0]['n']} per held-out prompt, the same seed for every model), "
                   "then mean ± std over seeds.")
    fits = [r["fit"]["gold"] for r in reports if r["fit"].get("gold")]
    if fits:
        details += ["", f"Gao et al.'s RL form fitted to gold, gold(d) − gold(0) = d(α − β log d) with d = √KL "
                        f"(`eval overopt`'s fit, least squares over the checkpoints): α {fmt([f['alpha'] for f in fits])}, "
                        f"β {fmt([f['beta'] for f in fits])} over {len(fits)} seeds"
                        + (": α < 0, gold falls from the start, as under best-of-n (the claim above), where the "
                           "proxy's flaw made gold fall from n = 1." if statistics.mean(f["alpha"] for f in fits) < 0
                           else ": α > 0, gold first rises.")]
    return Claim(
        "overopt_training", "Over-optimisation over training (DPO on proxy-ranked pairs): the proxy rises while "
        "gold falls, against √KL",
        "Optimising a proxy reward model (best-of-n or RL) raises the proxy reward steadily as the policy moves "
        "away from the initial one (measured by √KL), while the gold reward rises, peaks and then falls.",
        "Gao, Schulman & Hilton 2023, *Scaling Laws for Reward Model Overoptimization*", "Gao et al. 2023",
        f"Training instead of best-of-n: `alignlab feedback --task arithmetic --reward proxy --prompts "
        f"{sizes.overopt_prompts} --seed S` (the SFT model's 4 answers per prompt, best against worst by the flawed "
        "proxy), then `alignlab train --method dpo` on those pairs with the arithmetic demo's settings (lr 2e-5, "
        f"β 0.1, {sizes.train_epochs:g} epochs, batch 16) and `--save-every {sizes.overopt_save_every} "
        "--keep-checkpoints 0`, then `alignlab eval overopt --run RUN --task arithmetic --seed S`: at the SFT model "
        "(step 0) and each checkpoint, 4 answers per held-out prompt, their proxy and gold reward and KL to the "
        "SFT model. Effects: proxy at the last checkpoint − at step 0; gold at its peak over the checkpoints − gold "
        "at the last.",
        [Effect("proxy: last − step 0", [r["trend"]["proxy_change"] for r in reports]),
         Effect("gold: peak − last", [r["trend"]["gold_fall_from_peak"] for r in reports])],
        details)


def claim_length(ps: list[Paths], seeds: list[int]) -> Claim:
    reports = [load(p.constraints_length) for p in ps]
    demos = [load(p.constraints_demo / "metrics.json") for p in ps]
    longer = [r["pairs"]["mean_length_a"] - r["pairs"]["mean_length_b"] for r in reports]
    raw = [r["pairs"]["win_rate"] for r in reports]
    lc = [r["pairs"]["lc_win_rate"] for r in reports]
    body = [per_seed("mean length, proxy-DPO (words)", [r["pairs"]["mean_length_a"] for r in reports], 2),
            per_seed("mean length, SFT (words)", [r["pairs"]["mean_length_b"] for r in reports], 2),
            per_seed("win rate under the proxy", raw),
            per_seed("length-controlled win rate", lc),
            per_seed("gold (sampled), SFT", [d["before"]["eval/gold/sampled"] for d in demos]),
            per_seed("gold (sampled), proxy-DPO", [d["after"]["eval/gold/sampled"] for d in demos])]
    return Claim(
        "length", "Length exploitation with the proxy reward that likes length",
        "Optimising a reward that correlates with length makes responses longer, and much of the measured "
        "improvement comes from the added length rather than better content.",
        "Singhal et al. 2023, *A Long Way to Go: Investigating Length Correlations in RLHF*; length-controlled "
        "win rate after Dubois et al. 2024, *Length-Controlled AlpacaEval*", "Singhal et al. 2023; Dubois et al. 2024",
        "`alignlab demo --task constraints --reward proxy` (DPO on pairs ranked by the proxy, which adds 0.1 per "
        "word), then `alignlab eval length --task constraints --model DPO --against-model SFT --scorer "
        "task:constraints:proxy --unit words --seed S`. Effects: mean words of the DPO model − of the SFT model; "
        "raw win rate under the proxy − the length-controlled one.",
        [Effect("words: DPO − SFT", longer), Effect("win rate: raw − length-controlled", [a - b for a, b in zip(raw, lc, strict=True)])],
        table(["constraints", *[f"seed {s}" for s in seeds], "mean ± std"], body))


def all_claims(work: Path, seeds: list[int], sizes: Sizes) -> list[Claim]:
    ps = [Paths(work, s) for s in seeds]
    return [claim_gold(ps, seeds), claim_ranking(ps, seeds), claim_displacement(ps, seeds),
            *[claim_ches(ps, seeds, kind, keep) for kind in ("ches", "lnches") for keep in sizes.ches_keep],
            claim_noise(ps, seeds, "rdpo"),
            claim_noise(ps, seeds, "lcpo"), claim_kl(ps, seeds, sizes), claim_win_rate(ps, seeds, sizes, "gold"),
            claim_win_rate(ps, seeds, sizes, "proxy"), claim_overoptimization(ps, seeds, sizes),
            claim_overopt_training(ps, seeds, sizes), claim_length(ps, seeds)]


# -- the report ------------------------------------------------------------------------------------

def shown(argv: list[str], work: Path) -> str:
    """A step's command as one would type it, with the work folder as $WORK and paths relative to the repo."""
    text = ("alignlab " if not argv[0].startswith("claims:") else "") + shlex.join(argv)
    return text.replace(str(work), "$WORK").replace(str(REPO) + "/", "")


def claim_commands(claim: Claim, steps: list[dict], work: Path, seed: int) -> list[str]:
    """The commands of the first seed that fed ``claim``."""
    mine = [s for s in steps if claim.key in s["claims"] and f"seed-{seed}" in " ".join(s["argv"])]
    return [shown(s["argv"], work) for s in mine]


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def cpu_of(steps: list[dict]) -> float | None:
    """The steps' CPU seconds, or None where a step did not record them."""
    return None if any("cpu" not in s for s in steps) else sum(s["cpu"] for s in steps)


def report(claims: list[Claim], ran: dict[str, dict], info: dict, work: Path, seeds: list[int]) -> str:
    steps = [s for r in ran.values() for s in r["steps"]]
    seconds = {c.key: sum(s["seconds"] for s in steps if c.key in s["claims"]) for c in claims}
    cpu = {c.key: cpu_of([s for s in steps if c.key in s["claims"]]) for c in claims}
    total_cpu, longest = cpu_of(steps), max((cpu_of(r["steps"]) or 0.0 for r in ran.values()), default=0.0)
    idle = ("" if total_cpu is None else
            f" The commands used {total_cpu:.0f} s of CPU in all (the longest chain {longest:.0f} s), not counting "
            "each chain's few seconds of interpreter start: on "
            f"{info['jobs']} idle cores the run would take about {max(total_cpu / info['jobs'], longest) / 60:.0f} "
            "min.")
    lines = [
        "# The seed papers' claims on the testbed",
        "",
        f"Written by `{info['command']}` on {info['date']}, from alignlab commit {info['commit']}. Every "
        "figure is measured on the testbed's shipped tiny models, over seeds "
        f"{', '.join(map(str, seeds))} (mean ± standard deviation over seeds, then the per-seed values).",
        "",
        f"- Machine: {info['machine']}; torch {info['torch']}. {info['jobs']} chains of commands side by side, "
        "each one process with one intra-op thread.",
        f"- Total wall time: {info['total']:.0f} s ({info['total'] / 60:.1f} min). Load average (1 min) "
        f"{info['load_start']:.2f} at the start and {info['load_end']:.2f} at the end{info['busy']}.{idle}",
        f"- Sizes: {info['sizes']}.",
        "",
        "| claim | paper | measured (mean ± std over seeds, per seed) | verdict |",
        "|---|---|---|---|",
    ]
    for c in claims:
        lines.append(f"| {cell(c.title)} | {cell(c.cite)} | "
                     f"{cell('; '.join(e.summary() for e in c.effects))} | **{c.verdict}**: {cell(c.reason)} |")
    lines += ["", "## Verdict rules", "", *verdict_rules(), ""]
    for i, c in enumerate(claims, 1):
        took = f"{seconds[c.key]:.0f} s" + ("" if cpu[c.key] is None else f" ({cpu[c.key]:.0f} s of CPU)")
        lines += [f"## {i}. {c.title}", "",
                  f"**Claim** ({c.paper}): {c.claim}", "",
                  f"**Measured here**: {c.setup}", "",
                  *c.details, "",
                  f"**Verdict: {c.verdict}** ({c.reason}).", "",
                  f"Commands of seed {seeds[0]} (the other seeds change `--seed`/`--task-seed`); over every seed "
                  f"the commands this claim reads took {took}, shared ones included:", "", "```",
                  *claim_commands(c, steps, work, seeds[0]), "```", ""]

    def secs(value: float | None) -> str:
        return "—" if value is None else f"{value:.0f}"

    lines += ["## Time", "", "Each chain's commands run one after another in one process:", ""]
    lines += table(["chain", "wall (s)", "CPU (s)", "commands"],
                   [[name, f"{r['wall']:.0f}", secs(cpu_of(r["steps"])), str(len(r["steps"]))]
                    for name, r in sorted(ran.items())])
    lines += ["Per claim, the time of the commands it reads (a command shared by several claims counts for each):",
              ""]
    lines += table(["claim", "wall (s)", "CPU (s)"], [[c.title, f"{seconds[c.key]:.0f}", secs(cpu[c.key])]
                                                      for c in claims])
    return "\n".join(lines).rstrip() + "\n"


def verdict_rules() -> list[str]:
    doc = __doc__.split("Verdict rules,")[1].split("\n\nWhich task")[0]
    return ["Verdict rules," + doc.rstrip(), "",
            "Which task and which number decides a claim is fixed in the claim's function, before any run; "
            "the other tasks' numbers are shown beside it where they say something."]


# -- the command ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2; --smallest: 0)")
    parser.add_argument("--work", default=None, help="folder for the runs (default: a new temporary folder)")
    parser.add_argument("--out", default="docs/claims.md", help="the markdown report to write")
    parser.add_argument("--smallest", action="store_true", help="1 seed and tiny sizes: checks the pipeline")
    parser.add_argument("--jobs", type=int, default=2, help="chains run side by side (default 2)")
    parser.add_argument("--resume", action="store_true", help="skip the steps whose results --work already holds")
    parser.add_argument("--report-only", action="store_true", help="write the report from --work's results")
    parser.add_argument("--chain", default=None, help=argparse.SUPPRESS)  # internal: run one chain's steps
    args = parser.parse_args(argv)
    if args.chain:
        return run_chain(Path(args.chain))
    sizes = SMALLEST if args.smallest else DEFAULT
    seeds = args.seeds if args.seeds is not None else ([0] if args.smallest else [0, 1, 2])
    if (args.resume or args.report_only) and not args.work:
        parser.error("--resume and --report-only need --work")
    work = Path(args.work or tempfile.mkdtemp(prefix="claims-")).resolve()
    if work.exists() and any(work.iterdir()) and not (args.resume or args.report_only):
        parser.error(f"--work {work} is not empty: choose another folder, or --resume")
    work.mkdir(parents=True, exist_ok=True)
    import torch
    from common import code_version, machine

    todo = chains(work, seeds, sizes)
    if args.report_only:
        run = json.loads((work / "run.json").read_text())
    else:
        print(f"{len(todo)} chains, {sum(len(c.steps) for c in todo)} commands, {args.jobs} at a time; work: {work}",
              flush=True)
        load_start, start = os.getloadavg()[0], time.perf_counter()
        ran = run_chains(todo, work, args.jobs, args.resume, work / "cache")
        run = {"chains": ran, "total": time.perf_counter() - start, "load_start": load_start,
               "load_end": os.getloadavg()[0], "jobs": args.jobs, "resumed": args.resume,
               "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "commit": code_version(REPO),
               "command": "python bench/claims.py " + shlex.join(argv if argv is not None else sys.argv[1:])}
        (work / "run.json").write_text(json.dumps(run, indent=1))
    claims = all_claims(work, seeds, sizes)
    busy = ""
    if max(run["load_start"], run["load_end"]) > 0.5:
        busy = " (other work was running on the machine: the times are upper bounds)"
    if run["resumed"]:
        busy += "; the run was resumed, so steps done before it took no time in it"
    info = {"command": run["command"].strip(), "date": run["date"],
            "commit": run.get("commit") or code_version(REPO), "machine": machine(), "torch": torch.__version__, "jobs": run["jobs"],
            "total": run["total"], "load_start": run["load_start"], "load_end": run["load_end"], "busy": busy,
            "sizes": "smallest (--smallest): " + repr(sizes) if args.smallest else
            "default (each command's defaults: demos of 512 prompts × 4 answers, 3 epochs; 200 held-out "
            "prompts for every evaluation)"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report(claims, run["chains"], info, work, seeds))
    width = max(len(c.title) for c in claims)
    print(f"\n{'claim':<{width}}  verdict")
    for c in claims:
        print(f"{c.title:<{width}}  {c.verdict}: {c.reason}")
    print(f"\ntotal {run['total']:.0f} s; report: {out}; runs: {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
