"""Shared parts of the alignlab-against-TRL benchmarks (``dpo_vs_trl.py``, ``sft_vs_trl.py``).

The parent process builds the data and the model once, measures the machine's dense fp32 matmul
throughput, then runs each framework in a fresh child process (``--child NAME``) so that every
framework's peak resident memory is its own. A child reads a JSON spec, trains, and writes a JSON
result (timings, per-step loss and accuracy, token counts, peak RSS); the parent prints the table.

Data: seeded synthetic text whose lengths follow the spread of public preference sets (prompts
about 50-300 characters, responses about 20-400; the byte-level tokenizer makes one character one
token). Chosen responses are drawn from one word list and rejected ones from another, so both
learners can pick the difference up within a few dozen steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# -- data ------------------------------------------------------------------------------------------

PROMPT_WORDS = (
    "what how why when where which explain describe summarize compare write list give tell the a of to in "
    "for on with about from this that these those river market engine garden letter number history city "
    "recipe planet method system budget travel weather story reason example project question answer "
    "please short long simple detailed friend teacher student office paper water music light"
).split()
CHOSEN_WORDS = (
    "clear helpful careful precise honest kind useful accurate thoughtful gentle concise correct warm "
    "patient thorough steady calm bright sound reliable"
).split()
REJECTED_WORDS = (
    "vague rude sloppy wrong lazy harsh useless random careless noisy muddled false cold hasty shallow "
    "shaky grim dull odd unreliable"
).split()


def _length(rng: random.Random, median: float, sigma: float, low: int, high: int) -> int:
    """A log-normal length clipped to [low, high]: many short texts, a long tail."""
    return int(min(high, max(low, round(rng.lognormvariate(math.log(median), sigma)))))


def _text(rng: random.Random, words: list[str], n: int) -> str:
    out: list[str] = []
    size = 0
    while size < n:
        w = rng.choice(words)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)[:n].rstrip() or words[0]


def make_pairs(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` preference pairs {prompt, chosen, rejected}: prompt 50-300 characters (median 120),
    each response 20-400 (median 140), lengths drawn independently for chosen and rejected."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = _text(rng, PROMPT_WORDS, _length(rng, 120, 0.5, 50, 300)) + "\n"
        chosen = _text(rng, CHOSEN_WORDS, _length(rng, 140, 0.7, 20, 400))
        rejected = _text(rng, REJECTED_WORDS, _length(rng, 140, 0.7, 20, 400))
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def make_sft(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` prompt-completion rows: the prompts and chosen responses of ``make_pairs``."""
    return [{"prompt": r["prompt"], "completion": r["chosen"]} for r in make_pairs(n, seed)]


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# -- models ----------------------------------------------------------------------------------------

# The "30m" model: a Llama with a 32k vocabulary (the byte-level tiny tokenizer uses the first
# ~260 ids; the embedding and LM head are full size, which is what costs).
MODEL_30M = {"hidden_size": 384, "num_layers": 6, "num_heads": 6, "intermediate_size": 1024, "vocab_size": 32000}


def build_model(kind: str, out_dir: Path, seed: int = 0) -> dict[str, int]:
    """Save the ``kind`` model ("tiny" or "30m") with the byte-level tokenizer to ``out_dir``;
    return its parameter counts."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging

    from alignlab.models import TinyModelConfig, build_tiny_tokenizer, save_tiny_model

    logging.disable_progress_bar()
    if kind == "tiny":
        save_tiny_model(out_dir, TinyModelConfig(seed=seed))
    elif kind == "30m":
        tok = build_tiny_tokenizer()
        m = MODEL_30M
        config = LlamaConfig(
            vocab_size=m["vocab_size"], hidden_size=m["hidden_size"], intermediate_size=m["intermediate_size"],
            num_hidden_layers=m["num_layers"], num_attention_heads=m["num_heads"],
            num_key_value_heads=m["num_heads"], max_position_embeddings=2048, tie_word_embeddings=False,
            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
        tok.save_pretrained(out_dir)
    else:
        raise ValueError(f"unknown model '{kind}'")
    model = LlamaForCausalLM.from_pretrained(out_dir)
    return param_counts(model)


def param_counts(model) -> dict[str, int]:
    """Total parameters, the input embedding's, and the rest (the weights that take part in
    matmuls: attention, MLP and the untied LM head), which is what the FLOP estimate counts."""
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    return {"total": total, "embedding": embed, "matmul": total - embed}


# -- machine ---------------------------------------------------------------------------------------

def matmul_flops(threads: int, n: int = 2048, reps: int = 8) -> float:
    """Dense fp32 matmul throughput (FLOP/s) of this machine at ``threads`` threads: the best of
    ``reps`` timed n×n products after two warm-ups."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def code_version(repo: Path) -> str:
    """The commit of the code under test and whether alignlab/ has uncommitted changes."""
    def git(*cmd: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *cmd], capture_output=True, text=True, check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--", "alignlab")
    return commit + (f" with uncommitted changes in {len(changed.splitlines())} alignlab file(s)" if changed else "")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        cpu = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), cpu)
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}"


# -- child processes -------------------------------------------------------------------------------

def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
                "TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
                "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"})
    return env


def run_child(script: str, name: str, spec: dict[str, Any], work: Path, threads: int) -> dict[str, Any]:
    """Run ``script --child name`` on ``spec`` in a fresh Python; return its result dict.
    Its output goes to ``work/name.log``; on failure the log's tail is printed."""
    spec_path, result_path, log_path = work / f"{name}.spec.json", work / f"{name}.result.json", work / f"{name}.log"
    spec_path.write_text(json.dumps({**spec, "threads": threads, "result": str(result_path)}))
    print(f"running {name} ... (log: {log_path})", file=sys.stderr, flush=True)
    t = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run([sys.executable, script, "--child", name, "--spec", str(spec_path)],
                              stdout=log, stderr=subprocess.STDOUT, env=child_env(threads), check=False)
    if proc.returncode != 0 or not result_path.exists():
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{name} failed (exit {proc.returncode}); the end of its log:\n{tail}")
    result = json.loads(result_path.read_text())
    print(f"{name} done in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    return result


def child_setup(spec: dict[str, Any]) -> None:
    """Set the thread count and import, before any timed span, what either framework would
    otherwise import lazily on its first call (transformers loads its model and tokenizer modules
    on first use: seconds that would land in whichever timed span came first)."""
    import torch

    torch.set_num_threads(spec["threads"])
    import datasets  # noqa: F401
    import torch.distributed.tensor  # noqa: F401
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM  # noqa: F401

    AutoConfig.from_pretrained(spec["model"])
    AutoTokenizer.from_pretrained(spec["model"])
    _matmul_at_start.append(matmul_flops(spec["threads"]))


_matmul_at_start: list[float] = []


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> tuple[float, float]:
    """(user, system) CPU seconds of this process so far, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def finish_child(spec: dict[str, Any], result: dict[str, Any], cpu_start: tuple[float, float]) -> None:
    """Write the result with the peak RSS, the CPU time spent since ``cpu_start`` (the start of
    the timed span) and the load average (other work on the machine slows the run down)."""
    import torch

    user, system = cpu_seconds()
    result.update(peak_rss_mb=peak_rss_mb(), torch_threads=torch.get_num_threads(),
                  user_s=user - cpu_start[0], sys_s=system - cpu_start[1], load_avg=os.getloadavg()[0])
    # The machine may be shared: its matmul rate is measured again just before and after the timed
    # span, and the better of the two is the peak this run is compared with.
    result["matmul_flops"] = max(_matmul_at_start + [matmul_flops(spec["threads"])])
    Path(spec["result"]).write_text(json.dumps(result))


class Timer:
    """Accumulates the wall time spent inside wrapped functions, by label."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, owner: Any, attr: str, label: str) -> None:
        """Replace ``owner.attr`` by a timed call of it; missing attributes are left alone (the
        code under test may change; the label then reads 0)."""
        fn = getattr(owner, attr, None)
        self.seconds.setdefault(label, 0.0)
        if fn is None:
            return

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - t

        setattr(owner, attr, timed)


def trl_args(spec: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """TrainingArguments shared by TRL's trainers: the benchmark's settings, TRL's defaults
    otherwise, except fp32 (TRL defaults to bf16) and no gradient checkpointing unless asked
    (TRL defaults to it, alignlab does not; ``--trl-grad-ckpt`` with ``--alignlab-set
    gradient_checkpointing=true`` compares the two with it)."""
    return dict(
        output_dir=out_dir, per_device_train_batch_size=spec["batch_size"], gradient_accumulation_steps=1,
        learning_rate=spec["lr"], max_steps=spec["steps"], lr_scheduler_type="linear", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, seed=spec["seed"], max_length=spec["max_length"],
        bf16=False, fp16=False, gradient_checkpointing=spec.get("trl_grad_ckpt", False),
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
        use_cpu=True, dataloader_num_workers=0,
        train_sampling_strategy="sequential" if spec["same_order"] else "random",
    )


def record_order(inp, order: list[int], positions: dict[str, int]) -> None:
    """Make alignlab's loop inputs ``inp`` append to ``order`` the index (in the training data) of
    every example it collates into a training batch, in training order, and count in
    ``positions`` the positions its batches put through the model (real, and with padding)."""
    source = inp.source  # the offline step source: its examples and the collate it batches them with
    index = {id(e): i for i, e in enumerate(source.examples)}
    collate = source.collate

    def recording(examples):
        order.extend(index[id(e)] for e in examples)
        batch = collate(examples)
        count_positions(positions, batch.attention_mask_BT)
        return batch

    source.collate = recording


def count_positions(positions: dict[str, int], attention_mask) -> None:
    """Add a batch's real positions and its positions with padding (a 2-D mask of 1s and 0s)."""
    positions["real"] = positions.get("real", 0) + int(attention_mask.sum())
    positions["padded"] = positions.get("padded", 0) + attention_mask.numel()


def record_positions(trainer, positions: dict[str, int]) -> None:
    """Count the positions of the batches a TRL trainer's collator makes from now on."""
    collate = trainer.data_collator

    def recording(features):
        batch = collate(features)
        count_positions(positions, batch["attention_mask"])
        return batch

    trainer.data_collator = recording


def data_in_order(rows: list[dict], order: list[int] | None, work: Path, name: str) -> dict[str, Any]:
    """The data for TRL: in the order alignlab trained on (each step's batch, as alignlab formed
    it, with a sequential sampler), so that both frameworks see the same batches and their curves
    can be compared step by step; TRL's own shuffle when the order is unknown."""
    if not order:
        path = work / f"{name}.jsonl"
        write_jsonl(rows, path)
        return {"trl_data": str(path), "same_order": False}
    path = work / f"{name}-in-alignlab-order.jsonl"
    write_jsonl([rows[i] for i in order], path)
    return {"trl_data": str(path), "same_order": True}


def trained_tokens(lengths: list[int], order: list[int] | None, examples: int) -> float:
    """Tokens of the examples trained on: exact when the order is known, else the mean length
    times the number of examples."""
    if order is not None:
        return float(sum(lengths[i] for i in order))
    return sum(lengths) / len(lengths) * examples


def trl_history(trainer, keys: tuple[str, ...]) -> dict[str, list[float]]:
    """Per-step values of ``keys`` from the trainer's log history (logging_steps=1)."""
    rows = [r for r in trainer.state.log_history if "loss" in r and "step" in r]
    return {k: [float(r[k]) for r in rows if k in r] for k in keys}


def alignlab_history(out_dir: str | Path, keys: tuple[str, ...]) -> dict[str, list[float]]:
    """Per-step values of ``keys`` from an alignlab run's metrics.jsonl (log_every=1)."""
    rows = [r for r in read_jsonl(Path(out_dir) / "metrics.jsonl") if "loss" in r]
    return {k: [float(r[k]) for r in rows if k in r] for k in keys}


# -- report ----------------------------------------------------------------------------------------

@dataclass
class Column:
    name: str
    result: dict[str, Any]


def curve(values: list[float], tail: int) -> str:
    """first → last (mean of the last ``tail`` steps)."""
    if not values:
        return "n/a"
    last = values[-tail:]
    return f"{values[0]:.4f} → {values[-1]:.4f} (last {len(last)}: {sum(last) / len(last):.4f})"


def report(title: str, columns: list[Column], metrics: dict[str, str], flops_per_token: float,
           ref_flops_per_token: float, tail: int = 8) -> None:
    """Print the comparison table, the alignlab/TRL ratios and alignlab's share of matmul peak.

    ``metrics`` maps a label to the per-step history key; FLOPs per token are 6·P for the
    trained model's forward and backward, ``ref_flops_per_token`` (2·P or 0) for a reference
    forward over the tokens each framework ran the reference on."""
    print(f"\n{title}")
    rows: list[tuple[str, list[str]]] = []

    def add(label: str, fn) -> None:
        rows.append((label, [fn(c.result) for c in columns]))

    add("timed span (s)", lambda r: f"{r['timed_s']:.1f}")
    add("  of which setup (s)", lambda r: f"{r['setup_s']:.1f}")
    if ref_flops_per_token:
        add("  of which reference pass (s)", lambda r: f"{r['ref_s']:.1f}" if r.get("ref_s") is not None else "inline")
    add("  of which steps (s)", lambda r: f"{r['train_s']:.1f}")
    add("not timed: saving (s)", lambda r: f"{r.get('save_s', 0.0):.1f}")
    add("pairs/s" if ref_flops_per_token else "examples/s", lambda r: f"{r['examples'] / r['timed_s']:.3f}")
    add("tokens/s", lambda r: f"{r['tokens'] / r['timed_s']:.0f}")
    add("tokens/s in steps only", lambda r: f"{r['tokens'] / r['train_s']:.0f}")
    add("tokens per example", lambda r: f"{r['tokens'] / r['examples']:.1f}")

    def run_positions(r: dict[str, Any]) -> str:
        pos = r.get("positions") or {}
        if not pos:
            return "n/a"
        return f"{pos['real'] / r['examples']:.1f} / {pos['padded'] / r['examples']:.1f}"

    add("positions run per example (real / padded)", run_positions)
    add("peak RSS (MiB)", lambda r: f"{r['peak_rss_mb']:.0f}")
    add("CPU user + sys (s)", lambda r: f"{r['user_s']:.0f} + {r['sys_s']:.0f}")
    add("tokens per CPU second", lambda r: f"{r['tokens'] / (r['user_s'] + r['sys_s']):.0f}")
    add("load average at end", lambda r: f"{r['load_avg']:.2f}")
    for label, key in metrics.items():
        add(label, lambda r, key=key: curve(r["history"].get(key, []), tail))
    add("steps logged", lambda r: str(len(r["history"].get("loss", []))))

    def mfu(r: dict[str, Any]) -> str:
        flops = flops_per_token * r["tokens"] + ref_flops_per_token * r["ref_tokens"]
        return f"{flops / r['timed_s'] / 1e9:.1f} GFLOP/s = {flops / r['timed_s'] / r['matmul_flops']:.1%}"

    def mfu_steps(r: dict[str, Any]) -> str:
        flops = flops_per_token * r["tokens"] + (ref_flops_per_token * r["ref_tokens"] if r.get("ref_s") is None else 0)
        return f"{flops / r['train_s'] / 1e9:.1f} GFLOP/s = {flops / r['train_s'] / r['matmul_flops']:.1%}"

    add("matmul peak around the run (GFLOP/s)", lambda r: f"{r['matmul_flops'] / 1e9:.0f}")
    add("model FLOP rate, share of that peak", mfu)
    add("  the same, training steps only", mfu_steps)
    label_w = max(len(label) for label, _ in rows) + 2
    widths = [max(len(c.name), *(len(values[i]) for _, values in rows)) + 3 for i, c in enumerate(columns)]
    print(" " * label_w + "".join(c.name.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for label, values in rows:
        print((label.ljust(label_w) + "".join(v.ljust(w) for v, w in zip(values, widths, strict=True))).rstrip())

    base = columns[0].result
    for c in columns[1:]:
        r = c.result
        print(f"alignlab/{c.name}: speed (examples/s and tokens/s, timed span) "
              f"{(base['tokens'] / base['timed_s']) / (r['tokens'] / r['timed_s']):.2f}×, "
              f"steps only {(base['tokens'] / base['train_s']) / (r['tokens'] / r['train_s']):.2f}×, "
              f"peak RSS {base['peak_rss_mb'] / r['peak_rss_mb']:.2f}×; tokens per CPU second "
              f"{(base['tokens'] / (base['user_s'] + base['sys_s'])) / (r['tokens'] / (r['user_s'] + r['sys_s'])):.2f}×")
        if r.get("same_order"):
            a, b = base["history"].get("loss", []), r["history"].get("loss", [])
            gaps = [abs(x - y) for x, y in zip(a, b, strict=False)]
            if gaps:
                worst = max(range(len(gaps)), key=gaps.__getitem__)
                print(f"  same batches in the same order: loss gap per step, largest {gaps[worst]:.2e} at step "
                      f"{worst + 1}, mean {sum(gaps) / len(gaps):.2e}")


def common_flags(parser: argparse.ArgumentParser, lr: float) -> None:
    parser.add_argument("--model", choices=["tiny", "30m", "both"], default="both")
    parser.add_argument("--pairs", type=int, default=512, help="examples in the data set")
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps (default: one epoch, pairs / batch size)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every process")
    parser.add_argument("--trl-grad-ckpt", action="store_true",
                        help="let TRL use gradient checkpointing (its default; off here so both compute the same)")
    parser.add_argument("--alignlab-set", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra alignlab config key for its run, e.g. packing=false (repeatable)")
    parser.add_argument("--work", default=None, help="folder for data, models and runs (default: a temporary one)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--spec", default=None, help=argparse.SUPPRESS)


def record_optimizer(loop_mod, seen: list[str]) -> None:
    """Have alignlab's loop (module ``loop_mod``) record in ``seen`` which AdamW it runs."""
    make = loop_mod.make_optimizer

    def recorded(*args, **kwargs):
        opt = make(*args, **kwargs)
        fused = all(g.get("fused") for g in opt.param_groups)
        seen.append(f"{type(opt).__module__}.{type(opt).__name__}" + (" (fused)" if fused else ""))
        return opt

    loop_mod.make_optimizer = recorded


def run_alignlab(spec: dict[str, Any], config: dict[str, Any], tokens_of, keys: tuple[str, ...]) -> None:
    """Child: ``alignlab.train`` with the benchmark's settings plus ``config``, timed.

    The timed span is the whole ``train`` call less its saving (the final checkpoint and model,
    timed apart); within it the reference pass (``_prepare``) and the step loop are timed too.
    ``tokens_of(example)`` counts an example's tokens as alignlab rendered it."""
    import alignlab.training.kinds as kinds_mod
    import alignlab.training.loop as loop_mod
    import alignlab.training.run as run_mod
    from alignlab import train

    timer = Timer()
    lengths: list[int] = []
    order: list[int] = []
    positions: dict[str, int] = {}
    original_loop = run_mod.run_loop

    def loop(inp):  # record each example's tokens, the training order and the positions run
        lengths.extend(tokens_of(e) for e in inp.source.examples)
        record_order(inp, order, positions)
        return original_loop(inp)

    run_mod.run_loop = loop
    optimizer: list[str] = []
    record_optimizer(loop_mod, optimizer)
    timer.wrap(run_mod, "_prepare", "ref")
    timer.wrap(run_mod, "run_loop", "loop")
    timer.wrap(loop_mod, "save", "checkpoint")
    timer.wrap(kinds_mod.PolicyKind, "save", "model")
    cpu = cpu_seconds()
    t = time.perf_counter()
    train({
        "model": spec["model"], "data": spec["data"], "output_dir": spec["out"], "overwrite": True,
        "max_steps": spec["steps"], "batch_size": spec["batch_size"], "grad_accum": 1, "lr": spec["lr"],
        "max_length": spec["max_length"], "dtype": "fp32", "seed": spec["seed"], "scheduler": "linear",
        "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0, "eval_fraction": 0.0, "log_every": 1,
        "save_every": 0, "progress": False, "cache": False, **config, **spec.get("alignlab_set", {}),
    })
    total = time.perf_counter() - t
    sec = timer.seconds
    save = sec["checkpoint"] + sec["model"]
    steps_s = sec["loop"] - sec["checkpoint"]
    examples = spec["steps"] * spec["batch_size"]
    finish_child(spec, {
        "timed_s": total - save, "train_s": steps_s, "ref_s": sec["ref"], "setup_s": total - save - steps_s,
        "save_s": save, "examples": examples, "tokens": trained_tokens(lengths, order, examples),
        "ref_tokens": sum(lengths), "history": alignlab_history(spec["out"], keys), "order": order,
        "positions": positions, "optimizer": optimizer[0] if optimizer else "?",
    }, cpu)


def run_trl(spec: dict[str, Any], make_trainer, tokens_of, keys: tuple[str, ...]) -> None:
    """Child: a TRL trainer, timed from loading the model to the end of ``train()``.

    ``make_trainer(model, tokenizer, dataset)`` builds the trainer (its preprocessing, and a
    precomputed reference pass, happen there); ``tokens_of(trainer)`` lists each training
    example's tokens as TRL tokenized it."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cpu = cpu_seconds()
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    dataset = datasets.Dataset.from_list(read_jsonl(spec["trl_data"]))
    trainer, ref_seconds = make_trainer(model, tokenizer, dataset)
    positions: dict[str, int] = {}
    record_positions(trainer, positions)
    t_train = time.perf_counter()
    trainer.train()
    end = time.perf_counter()
    lengths = tokens_of(trainer)
    examples = spec["steps"] * spec["batch_size"]
    # In alignlab's order the data set is the trained examples, in training order.
    tokens = trained_tokens(lengths, list(range(len(lengths))) if spec["same_order"] else None, examples)
    ref = ref_seconds()
    finish_child(spec, {
        "timed_s": end - t, "train_s": end - t_train, "ref_s": ref, "setup_s": t_train - t, "save_s": 0.0,
        "examples": examples, "tokens": tokens, "ref_tokens": sum(lengths) if ref is not None else tokens,
        "history": trl_history(trainer, keys), "optimizer": str(trainer.args.optim),
        "gradient_checkpointing": trainer.args.gradient_checkpointing, "same_order": spec["same_order"],
        "positions": positions,
    }, cpu)


def compare(script: str, args: argparse.Namespace, method: str, rows: list[dict], names: list[str],
            metrics: dict[str, str], reference: bool, legend: str = "") -> None:
    """The parent's part: write the data, then for each model build it, run alignlab and the TRL
    variants ``names`` one after the other (TRL in alignlab's order), and print the report."""
    steps = args.steps or -(-len(rows) // args.batch_size)
    if steps * args.batch_size < len(rows):
        print(f"note: {steps} steps of {args.batch_size} use {steps * args.batch_size} of the {len(rows)} examples"
              + ("; alignlab (and TRL with --trl-precompute) still run the reference over all of them, inside the "
                 "timed span" if reference else ""), file=sys.stderr)
    work = Path(args.work or tempfile.mkdtemp(prefix=f"{method}-vs-trl-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data.jsonl"
    write_jsonl(rows, data)
    peak = matmul_flops(args.threads)
    print(f"machine: {machine()}; torch threads {args.threads}; dense fp32 matmul (2048²) now: {peak / 1e9:.1f} GFLOP/s")
    print(f"alignlab {code_version(Path(script).resolve().parents[1])}; date {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"{method.upper()}: {len(rows)} examples (seed {args.seed}), {steps} steps of {args.batch_size}, lr {args.lr}, "
          f"max_length {args.max_length}, fp32, TRL gradient checkpointing {'on' if args.trl_grad_ckpt else 'off'}; "
          f"work folder {work}")
    extra = {}
    for item in args.alignlab_set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--alignlab-set: expected KEY=VALUE, got '{item}'")
        extra[key] = yaml.safe_load(value)
    if extra:
        print(f"alignlab run with {extra}")
    if legend:
        print(legend)
    for kind in (["tiny", "30m"] if args.model == "both" else [args.model]):
        model_dir = work / f"model-{kind}"
        counts = build_model(kind, model_dir, args.seed)
        print(f"\nmodel {kind}: {counts['total']:,} parameters ({counts['embedding']:,} input embedding, "
              f"{counts['matmul']:,} in matmuls)")
        spec = {"model": str(model_dir), "data": str(data), "steps": steps, "batch_size": args.batch_size,
                "lr": args.lr, "max_length": args.max_length, "seed": args.seed, "trl_grad_ckpt": args.trl_grad_ckpt,
                "alignlab_set": extra}
        columns = []
        for name in ["alignlab", *names]:
            run_spec = {**spec, "out": str(work / f"run-{kind}-{name}"), "precompute": name == "trl-precompute"}
            columns.append(Column(name, run_child(script, name, run_spec, work, args.threads)))
            if name == "alignlab":  # TRL gets alignlab's batches, in alignlab's order
                spec.update(data_in_order(rows, columns[0].result.get("order"), work, f"data-{kind}"))
                print("TRL sees " + ("alignlab's batches, in alignlab's order" if spec["same_order"]
                                     else "its own shuffle (alignlab's order was not recorded)"))
        optimizers = {c.name: c.result["optimizer"] for c in columns if "optimizer" in c.result}
        print("optimizers: " + "; ".join(f"{k} {v}" for k, v in optimizers.items()))
        p = counts["matmul"]
        report(f"{method.upper()}, model {kind}", columns, metrics, flops_per_token=6 * p,
               ref_flops_per_token=2 * p if reference else 0.0)
