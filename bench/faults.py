"""Kill a training run at random points, resume it, and check it ends exactly where an
uninterrupted run ends.

    python bench/faults.py --runs 20
    python bench/faults.py --runs 4 --seed 1 --work /tmp/faults

Every trial starts the same run (a tiny Llama, DPO, fp32 on the CPU, a checkpoint after every
step, two kept) as ``alignlab train`` in a child process and kills it with SIGKILL, alternately:
- in the middle of writing a checkpoint: the k-th checkpoint tensor file of the run (k drawn at
  random) is cut to half its size and the process killed before it can go on;
- at a random moment: after a random number of logged steps, plus a random fraction of a step.
After the kill every checkpoint directory that looks complete must pass its checksums. The run is
then resumed with ``--resume`` (from the newest complete checkpoint, which the resumed run must
name) until it finishes, and its final weights must equal the uninterrupted run's bit for bit.
Prints one line per trial and then "N/N resumed identical".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# A child that runs `alignlab` and, when FAULTS_IN_WRITE=k is set, acts inside the k-th checkpoint
# tensor file it writes: FAULTS_ACTION=kill cuts the file to half its size and dies of SIGKILL;
# FAULTS_ACTION=SIGINT or SIGTERM sends itself that signal once the file is written.
RUNNER = textwrap.dedent("""
    import os, signal, sys
    at, action = int(os.environ.get("FAULTS_IN_WRITE", "0")), os.environ.get("FAULTS_ACTION", "kill")
    if at:
        import alignlab.training.checkpoint as ckpt
        real, calls = ckpt.save_file, [0]
        def faulty(tensors, path, *args, **kwargs):
            calls[0] += 1
            real(tensors, path, *args, **kwargs)
            if calls[0] != at:
                return
            if action != "kill":
                os.kill(os.getpid(), getattr(signal, action))
                return
            with open(path, "rb") as f:
                data = f.read()
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        ckpt.save_file = faulty
    from alignlab.cli import main
    sys.exit(main(sys.argv[1:]))
""")
FILES_PER_CHECKPOINT = 3  # trainable, optimizer and rng tensors


@dataclass
class Setup:
    work: Path
    model: Path
    data: Path
    steps: int
    runner: Path


def prepare(work: Path, steps: int = 8, pairs: int = 32) -> Setup:
    """A tiny model, pairs to train on and the child runner, under ``work``."""
    sys.path.insert(0, str(REPO))
    from alignlab.models import save_tiny_model

    work.mkdir(parents=True, exist_ok=True)
    model = work / "model"
    if not (model / "config.json").exists():
        save_tiny_model(model)
    data = work / "pairs.jsonl"
    rng = random.Random(0)
    with data.open("w") as f:
        for i in range(pairs):
            thing = rng.choice(["lamp", "desk", "kettle", "bike"])
            f.write(json.dumps({"prompt": f"Review the {thing} #{i}.", "chosen": f"The {thing} is fine and sturdy.",
                                "rejected": f"The {thing} broke."}) + "\n")
    runner = work / "runner.py"
    runner.write_text(RUNNER)
    return Setup(work, model, data, steps, runner)


def train_args(s: Setup, out: Path, *extra: str) -> list[str]:
    return ["train", "--method", "dpo", "--model", str(s.model), "--data", str(s.data), "--output-dir", str(out),
            "--max-steps", str(s.steps), "--batch-size", "4", "--lr", "1e-3", "--save-every", "1",
            "--keep-checkpoints", "2", "--dtype", "fp32", "--progress", "false", "--seed", "0",
            "--cache-dir", str(s.work / "cache"), *extra]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAULTS_")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(extra or {})}


def start(s: Setup, out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(out.parent / f"{out.name}.log", "ab") as log:  # the child keeps its own copy of the handle
        return subprocess.Popen([sys.executable, str(s.runner), *train_args(s, out, *extra)], env=child_env(env),
                                stdout=log, stderr=subprocess.STDOUT, cwd=s.work)


def run(s: Setup, out: Path, *extra: str) -> tuple[int, str]:
    """Run to the end; return the exit status and the run's log so far."""
    proc = start(s, out, *extra)
    rc = proc.wait()
    return rc, (out.parent / f"{out.name}.log").read_text(errors="replace")


def final_weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "model" / "model.safetensors")


def identical(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def logged_steps(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"loss"' in line)


def check_checkpoints(out: Path) -> tuple[int | None, list[str]]:
    """The newest step whose checkpoint verifies, and a problem for each complete-looking
    checkpoint that does not (there must be none: partial writes stay under a temporary name)."""
    from alignlab.training import checkpoint as ckpt

    problems = []
    newest = None
    for c in ckpt.list_checkpoints(out / "checkpoints"):
        why = ckpt.verify(c)
        if why is not None:
            problems.append(f"{c.name}: {why}")
        elif newest is None:
            newest = int(c.name[len(ckpt.PREFIX):])
    return newest, problems


def kill_in_write(s: Setup, out: Path, k: int) -> tuple[bool, str]:
    """Start the run and kill it inside its k-th checkpoint tensor file; (killed there, a line)."""
    proc = start(s, out, env={"FAULTS_IN_WRITE": str(k)})
    rc = proc.wait()
    return rc == -signal.SIGKILL, f"killed inside checkpoint tensor file {k} (rc {rc})"


def kill_at_random(s: Setup, out: Path, rng: random.Random, step_s: float) -> str:
    target = rng.randrange(0, s.steps)
    delay = rng.uniform(0.0, step_s)
    proc = start(s, out)
    while proc.poll() is None and logged_steps(out) < target:
        time.sleep(0.01)
    time.sleep(delay)
    if proc.poll() is not None:
        return f"finished before the kill (rc {proc.returncode})"
    seen = logged_steps(out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return f"killed after {seen} logged steps (+{delay:.2f} s)"


def trial(s: Setup, out: Path, mode: str, rng: random.Random, step_s: float, reference: dict) -> tuple[bool, str]:
    """One kill and resume; (identical to the reference, a line describing it)."""
    if mode == "write":
        # the files of checkpoints 1 .. steps-1 and of the final one: any of them
        killed, how = kill_in_write(s, out, rng.randint(1, FILES_PER_CHECKPOINT * s.steps))
        if not killed:
            return False, f"{how}: the run was not killed where it should have been"
    else:
        how = kill_at_random(s, out, rng, step_s)
    newest, problems = check_checkpoints(out)
    if problems:
        return False, f"{how}; damaged checkpoints taken for complete: {problems}"
    rc, log = run(s, out, "--resume", "true")
    if rc != 0:
        return False, f"{how}; the resumed run failed (rc {rc}): {log.strip().splitlines()[-1:]}"
    said = re.findall(r"resumed from \S*step-(\d+)", log)
    expected = f"step {newest}" if newest is not None else "step 0"
    if newest is not None and (not said or int(said[-1]) != newest):
        return False, f"{how}; newest complete checkpoint was {expected} but the run said {said[-1:]}"
    same = identical(final_weights(out), reference)
    return same, f"{how}; resumed from {expected}; final weights {'identical' if same else 'DIFFER'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="kill-and-resume trials")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps of the run")
    parser.add_argument("--work", default=None, help="folder for the model, data and runs (default: a temporary one)")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="faults-"))
    s = prepare(work, steps=args.steps)
    t0 = time.perf_counter()
    done = work / "uninterrupted" / "summary.json"
    if done.exists():  # a work folder used before
        if json.loads(done.read_text()).get("steps") != args.steps:
            print(f"{work} holds a run of another length; use another --work folder")
            return 1
        print(f"reusing the uninterrupted run in {work / 'uninterrupted'}")
    else:
        rc, log = run(s, work / "uninterrupted")
        if rc != 0:
            print(f"the uninterrupted run failed (rc {rc}); log: {work / 'uninterrupted.log'}")
            return 1
    wall = time.perf_counter() - t0
    reference = final_weights(work / "uninterrupted")
    step_s = 0.1 if wall < 1.0 else max(wall / args.steps / 4, 0.05)  # steps are a small part of the wall time
    print(f"uninterrupted run: {args.steps} steps in {wall:.1f} s (work folder {work})")
    rng = random.Random(args.seed)
    good = 0
    for i in range(args.runs):
        mode = "write" if i % 2 == 0 else "random"
        ok, line = trial(s, work / f"trial-{i:03d}", mode, rng, step_s, reference)
        good += ok
        print(f"trial {i + 1}/{args.runs}: {line}", flush=True)
    print(f"{good}/{args.runs} resumed identical")
    return 0 if good == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
