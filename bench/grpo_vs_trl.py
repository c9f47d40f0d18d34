"""GRPO speed, memory and reward: alignlab's ``grpo`` against TRL's GRPOTrainer, same model and settings.

    python bench/grpo_vs_trl.py                               # both models, their default settings
    python bench/grpo_vs_trl.py --model tiny --steps 20       # a quick look
    python bench/grpo_vs_trl.py --model chainsum              # longer answers, a model that learns

Three models: ``tiny``, the testbed's shipped arithmetic SFT model (0.9M parameters, a 263-token
vocabulary), which the reward can move, so that the reward curves say whether both learn alike;
``chainsum``, the reasoning task's shipped SFT model (the same size), whose answers write out their
partial sums (about 30 tokens; up to the task's 48), trained on that task's prompts with its gold
reward, for a run with longer answers that still learns; and ``30m``, the 35M-parameter Llama of the DPO benchmark (a 32k vocabulary, random weights), for
the cost of a step at a realistic vocabulary and longer completions. A random model answers an
arithmetic prompt with tokens the byte-level tokenizer cannot even decode, so its gold reward is
0 on both sides, every advantage is 0 and the weights do not move: that model measures cost only.

Both frameworks train on the task's training prompts (arithmetic, or chainsum for ``chainsum``) with
the same reward (by default the task's gold reward, ``task:arithmetic:gold``; TRL calls the same scorer through a reward function of
its signature), G samples per prompt, ``--batch`` completions per optimizer step (batch / G
prompts), up to ``--max-new-tokens`` new tokens at temperature 1 (no top-p, top-k or min-p), one
optimizer step per round of samples, fp32. The loss is the same on both sides: TRL's default
``loss_type="dapo"`` (the clipped token-level ratio, the step's loss summed over its completion
tokens and divided by their number) is alignlab's ``aggregation: token_mean``; ε 0.2 on both
sides of the ratio, β 0 (no reference model), group-scaled advantages, truncated completions
kept. AdamW at the same learning rate with linear decay and no warmup, gradient clipping at 1, no
weight decay, no evaluation, no checkpoints. TRL runs without gradient checkpointing (its default
is on; alignlab's is off) and with ``shuffle_dataset=False`` on the prompts in the order alignlab
drew them, so step s of both runs answers the same prompts. The samples themselves differ: each
framework draws them with its own random streams.

Each framework runs in its own child process, one after the other: alignlab first (its prompt
order is recorded), then TRL. Timed per child: the span from loading the model to the end of
training (alignlab's final save of checkpoint and model is timed apart and not counted), the
steps within it, and within the steps the sampling (alignlab's generator; TRL's
``_generate_single_turn``, i.e. ``model.generate``) and the reward; the rest of the steps is
"training" (log-probs, loss, backward, optimizer, and each framework's bookkeeping).

Printed per model: steps/s, sampling, reward and training time, sampled tokens/s, peak resident
memory from the start of the run (the heap is trimmed and the high-water mark reset after the
imports and the matmul measurement) and its growth over the run, CPU time, the mean reward over
all steps and per window of ``--every`` steps side by side, the alignlab/TRL ratios, and the
nominal model FLOP rate over the steps (8·P per token of prompt + completion per sample: 2·P to
sample it, 6·P to train on it; P the parameters other than the input embedding) as a share of
this machine's dense fp32 matmul throughput, measured in each child before and after its timed
span. Last, what 3× would ask: TRL's nominal FLOP rate times 3 as a share of that
throughput (where this nears 100%, no trimming of per-operation costs can reach 3×; only computing
less can, as alignlab's leaving out the completions whose advantage is 0, whose share it prints). Run it on an idle machine: children with two torch threads on two busy cores slow down
many times over.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import (
    Timer,
    alignlab_history,
    build_model,
    child_setup,
    code_version,
    cpu_seconds,
    finish_child,
    machine,
    matmul_flops,
    param_counts,
    read_jsonl,
    record_optimizer,
    run_child,
    trl_args,
    trl_history,
    write_jsonl,
)

HERE = Path(__file__).resolve()
TASKS = {"tiny": "arithmetic", "chainsum": "chainsum", "30m": "arithmetic"}  # each model's prompts and reward
EPSILON = 0.2

# Per-model defaults (each flag, when given, applies to every model run).
DEFAULTS = {
    "tiny": {"steps": 100, "batch": 32, "num_generations": 8, "max_new_tokens": 6, "lr": 5e-5},
    "chainsum": {"steps": 50, "batch": 32, "num_generations": 8, "max_new_tokens": 48, "lr": 5e-5},
    "30m": {"steps": 10, "batch": 16, "num_generations": 8, "max_new_tokens": 64, "lr": 5e-5},
}
ALIGNLAB_KEYS = ("loss", "reward", "completion_length", "truncated", "grad_norm", "skipped_zero_advantage")
TRL_KEYS = ("loss", "reward", "completions/mean_length", "completions/clipped_ratio", "grad_norm")


# -- children --------------------------------------------------------------------------------------

def fresh_peak_rss() -> float | None:
    """Hand freed heap memory back to the system (glibc's ``malloc_trim``) and start this
    process's peak resident memory afresh from its current size (Linux: ``5`` to
    /proc/self/clear_refs), so that the peak a child reports is its run's: the matmul measurement
    before the run leaves up to about 110 MiB of freed memory in the heap, more in one process
    than in the next. Returns the resident MiB at that point (None where this cannot be done)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        status = Path("/proc/self/status").read_text()
    except OSError:
        print("note: could not reset the peak RSS; it includes the matmul measurement", file=sys.stderr)
        return None
    return int(re.search(r"VmRSS:\s+(\d+)", status)[1]) / 1024


def child_alignlab(spec: dict) -> None:
    """``alignlab.train`` with method grpo; records the prompts of each round, in order."""
    child_setup(spec)
    import alignlab.generation.native as native_mod
    import alignlab.training.kinds as kinds_mod
    import alignlab.training.loop as loop_mod
    import alignlab.training.online as online_mod
    import alignlab.training.run as run_mod
    from alignlab import train

    timer = Timer()
    optimizer: list[str] = []
    record_optimizer(loop_mod, optimizer)
    decoding: set[bool] = set()  # whether the sampler's decode steps ran its written-out pass
    pass_ok = native_mod.decode_pass_ok
    native_mod.decode_pass_ok = lambda model: (decoding.add(pass_ok(model)), pass_ok(model))[1]
    rounds: list[list[str]] = []
    starts: list[float] = []  # when each step began, then when the loop ended
    tokens = {"prompt": 0, "completion": 0}
    make_source = run_mod.online_source

    def recorded_source(*args, **kwargs):  # the run's step source, its generator recording what it samples
        source = make_source(*args, **kwargs)
        generate = source.generator.generate

        def recording(texts, n, params, start=0):
            samples = generate(texts, n, params, start=start)
            rounds.append(list(texts))
            for group in samples:
                for s in group:
                    tokens["prompt"] += len(s.prompt_ids)
                    tokens["completion"] += len(s.token_ids)
            return samples

        source.generator.generate = recording
        timer.wrap(source.generator, "generate", "generation")
        make_step = source.step

        def clocked(step):
            starts.append(time.perf_counter())
            return make_step(step)

        source.step = clocked
        return source

    run_loop = run_mod.run_loop

    def loop(inp):
        try:
            return run_loop(inp)
        finally:
            starts.append(time.perf_counter())  # the end of the last step, and of its final save

    run_mod.online_source = recorded_source
    run_mod.run_loop = loop
    timer.wrap(online_mod, "score_samples", "reward")
    timer.wrap(run_mod, "run_loop", "loop")
    timer.wrap(loop_mod, "save", "checkpoint")
    timer.wrap(kinds_mod.PolicyKind, "save", "model")
    start_rss = fresh_peak_rss()
    cpu = cpu_seconds()
    t = time.perf_counter()
    train({
        "method": "grpo", "model": spec["model"], "data": f"task:{spec['task']}", "reward": [spec["reward"]],
        "output_dir": spec["out"], "overwrite": True, "max_steps": spec["steps"], "batch_size": spec["batch"],
        "grad_accum": 1, "num_generations": spec["num_generations"], "max_new_tokens": spec["max_new_tokens"],
        "temperature": 1.0, "top_p": 1.0, "top_k": 0, "updates_per_rollout": 1, "lr": spec["lr"], "dtype": "fp32",
        "seed": spec["seed"], "scheduler": "linear", "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0,
        "beta": 0.0, "eps_low": EPSILON, "eps_high": EPSILON, "aggregation": "token_mean", "scale_rewards": "group",
        "mask_truncated": False, "ratio_level": "token", "is_mode": "off", "log_every": 1, "save_every": 0,
        "progress": False, "cache": False, **spec.get("alignlab_set", {}),
    })
    total = time.perf_counter() - t
    sec = timer.seconds
    save = sec["checkpoint"] + sec["model"]
    loop = sec["loop"] - sec["checkpoint"]
    finish_child(spec, {
        "timed_s": total - save, "setup_s": total - save - loop, "loop_s": loop, "save_s": save,
        "generation_s": sec["generation"], "reward_s": sec["reward"], "steps": spec["steps"],
        "prompt_tokens": tokens["prompt"], "completion_tokens": tokens["completion"],
        "after_first_s": starts[-1] - sec["checkpoint"] - starts[1] if len(starts) > 2 else None,
        "history": alignlab_history(spec["out"], ALIGNLAB_KEYS), "rounds": rounds,
        "optimizer": optimizer[0] if optimizer else "?", "start_rss_mb": start_rss,
        "decoding": " and ".join(sorted("alignlab's written-out decode pass" if d else "the model's forward pass"
                                        for d in decoding)) or "?",
    }, cpu)


def child_trl(spec: dict) -> None:
    """TRL's GRPOTrainer on the prompts in alignlab's order, with the same scorer as its reward."""
    child_setup(spec)
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from alignlab.rewards import load_scorer

    scorer = load_scorer(spec["reward"])
    rounds: list[list[str]] = []

    def task_reward(prompts, completions, **kwargs) -> list[float]:
        rounds.append(list(prompts[::spec["num_generations"]]))  # each prompt comes G times in a row
        return [float(x) for x in scorer.score(list(prompts), list(completions))]

    starts: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            starts.append(time.perf_counter())

    timer = Timer()
    tokens = {"prompt": 0, "completion": 0}
    sample = GRPOTrainer._generate_single_turn

    def counting(self, prompt_ids, *args, **kwargs):
        completion_ids, logprobs = sample(self, prompt_ids, *args, **kwargs)
        tokens["prompt"] += sum(map(len, prompt_ids))
        tokens["completion"] += sum(map(len, completion_ids))
        return completion_ids, logprobs

    GRPOTrainer._generate_single_turn = counting
    timer.wrap(GRPOTrainer, "_generate_single_turn", "generation")
    timer.wrap(GRPOTrainer, "_calculate_rewards", "reward")

    shared = trl_args({**spec, "batch_size": spec["batch"], "max_length": None, "same_order": True}, spec["out"])
    del shared["max_length"]  # GRPO has no max_length: prompts are whole, completions cut at max_completion_length
    args = GRPOConfig(
        **shared, num_generations=spec["num_generations"], max_completion_length=spec["max_new_tokens"],
        temperature=1.0, top_p=1.0, top_k=0, min_p=None, steps_per_generation=1, num_iterations=1,
        beta=0.0, loss_type="dapo", epsilon=EPSILON, epsilon_high=EPSILON, scale_rewards="group",
        importance_sampling_level="token", mask_truncated_completions=False, use_vllm=False,
        shuffle_dataset=False, disable_dropout=True, log_completions=False,
    )
    start_rss = fresh_peak_rss()
    cpu = cpu_seconds()
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    dataset = datasets.Dataset.from_list(read_jsonl(spec["prompts"]))
    trainer = GRPOTrainer(model=model, reward_funcs=task_reward, args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[StepClock()])
    t_train = time.perf_counter()
    trainer.train()
    end = time.perf_counter()
    sec = timer.seconds
    finish_child(spec, {
        "timed_s": end - t, "setup_s": t_train - t, "loop_s": end - t_train, "save_s": 0.0,
        "generation_s": sec["generation"], "reward_s": sec["reward"], "steps": trainer.state.global_step,
        "prompt_tokens": tokens["prompt"], "completion_tokens": tokens["completion"],
        "after_first_s": end - starts[1] if len(starts) > 1 else None, "rounds": rounds,
        "history": trl_history(trainer, TRL_KEYS), "start_rss_mb": start_rss,
        "optimizer": str(getattr(trainer.args.optim, "value", trainer.args.optim)),
        "decoding": "the model's forward pass (model.generate)",
    }, cpu)


# -- parent ----------------------------------------------------------------------------------------

def settings(args: argparse.Namespace, kind: str) -> dict:
    out = dict(DEFAULTS[kind])
    for key in out:
        if getattr(args, key) is not None:
            out[key] = getattr(args, key)
    if out["batch"] % out["num_generations"]:
        raise SystemExit(f"--batch ({out['batch']}) must be a multiple of --num-generations ({out['num_generations']})")
    return out


def model_dir(kind: str, work: Path, seed: int) -> tuple[Path, dict[str, int]]:
    if kind == "30m":
        path = work / "model-30m"
        return path, build_model("30m", path, seed)
    from transformers import LlamaForCausalLM

    from alignlab.testbed.shipped import shipped_dir

    path = shipped_dir(TASKS[kind])
    return path, param_counts(LlamaForCausalLM.from_pretrained(path))


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def report(kind: str, s: dict, results: dict[str, dict], matmul_params: int, every: int) -> None:
    names = list(results)
    rows: list[tuple[str, list[str]]] = []

    def add(label: str, fn) -> None:
        rows.append((label, [fn(results[n]) for n in names]))

    def share(r: dict, key: str) -> str:
        return f"{r[key]:.1f} ({r[key] / r['loop_s']:.0%})"

    def training(r: dict) -> float:
        return r["loop_s"] - r["generation_s"] - r["reward_s"]

    def steady(r: dict) -> float | None:
        return (r["steps"] - 1) / r["after_first_s"] if r.get("after_first_s") else None

    def nominal_rate(r: dict) -> float:
        """FLOP/s at 8·P per token of prompt and completion of each sample over the steps."""
        return 8 * matmul_params * (r["prompt_tokens"] + r["completion_tokens"]) / r["loop_s"]

    def flops(r: dict) -> str:
        return f"{nominal_rate(r) / 1e9:.1f} GFLOP/s = {nominal_rate(r) / r['matmul_flops']:.1%}"

    rewards = {n: results[n]["history"].get("reward", []) for n in names}
    lengths = {"alignlab": results["alignlab"]["history"].get("completion_length", []),
               "trl": results["trl"]["history"].get("completions/mean_length", [])}
    tail = max(1, s["steps"] // 10)
    add("timed span (s)", lambda r: f"{r['timed_s']:.1f}")
    add("  of which setup (s)", lambda r: f"{r['setup_s']:.1f}")
    add("  of which steps (s)", lambda r: f"{r['loop_s']:.1f}")
    add("    sampling (s, share)", lambda r: share(r, "generation_s"))
    add("    reward (s, share)", lambda r: share(r, "reward_s"))
    add("    training and the rest (s, share)", lambda r: f"{training(r):.1f} ({training(r) / r['loop_s']:.0%})")
    add("not timed: saving (s)", lambda r: f"{r['save_s']:.1f}")
    add("steps", lambda r: str(r["steps"]))
    add("steps/s", lambda r: f"{r['steps'] / r['loop_s']:.3f}")
    add("steps/s after the first step", lambda r: f"{steady(r):.3f}" if steady(r) else "n/a")
    add("sampled tokens/s while sampling", lambda r: f"{r['completion_tokens'] / r['generation_s']:.0f}")
    add("tokens per step (prompt + completion)",
        lambda r: f"{(r['prompt_tokens'] + r['completion_tokens']) / r['steps']:.0f}")
    add("peak RSS (MiB)", lambda r: f"{r['peak_rss_mb']:.0f}")
    add("  of which above the RSS at the start", lambda r: f"{r['peak_rss_mb'] - r['start_rss_mb']:.0f}"
        if r.get("start_rss_mb") else "n/a")
    add("CPU user + sys (s)", lambda r: f"{r['user_s']:.0f} + {r['sys_s']:.0f}")
    add("load average at end", lambda r: f"{r['load_avg']:.2f}")
    add("matmul peak around the run (GFLOP/s)", lambda r: f"{r['matmul_flops'] / 1e9:.0f}")
    add("model FLOP rate over the steps, share", flops)
    add("optimizer", lambda r: r["optimizer"])
    add("sampling's decode steps", lambda r: r["decoding"])
    rows.append(("mean reward over all steps", [f"{mean(rewards[n]):.4f}" for n in names]))
    rows.append((f"mean reward, first {tail} / last {tail} steps",
                 [f"{mean(rewards[n][:tail]):.4f} / {mean(rewards[n][-tail:]):.4f}" for n in names]))
    rows.append(("mean completion length (tokens)", [f"{mean(lengths[n]):.2f}" for n in names]))
    rows.append(("steps logged", [str(len(rewards[n])) for n in names]))

    print(f"\nGRPO, model {kind}")
    label_w = max(len(label) for label, _ in rows) + 2
    widths = [max(len(n), *(len(values[i]) for _, values in rows)) + 3 for i, n in enumerate(names)]
    print(" " * label_w + "".join(n.ljust(w) for n, w in zip(names, widths, strict=True)).rstrip())
    for label, values in rows:
        print((label.ljust(label_w) + "".join(v.ljust(w) for v, w in zip(values, widths, strict=True))).rstrip())

    a, b = results["alignlab"], results["trl"]
    speed = (a["steps"] / a["loop_s"]) / (b["steps"] / b["loop_s"])
    after = f", after the first step {steady(a) / steady(b):.2f}×" if steady(a) and steady(b) else ""
    print(f"alignlab/trl: steps/s {speed:.2f}× (target at least 3×){after}; the timed span "
          f"{b['timed_s'] / a['timed_s']:.2f}× as fast; sampling time {a['generation_s'] / b['generation_s']:.2f}×, "
          f"training time {training(a) / training(b):.2f}×")
    print(f"  peak RSS {a['peak_rss_mb'] / b['peak_rss_mb']:.2f}× (target at most 1×); mean reward over all steps "
          f"{mean(rewards['alignlab']):.4f} against {mean(rewards['trl']):.4f}")
    # What 3× asks of the machine: TRL's nominal FLOP rate times 3, as a share of the matmul peak
    # alignlab's child measured. Near or above 100% no trimming of overheads reaches it; only doing
    # fewer FLOPs does (alignlab leaves out the completions whose advantage is 0, counted below).
    needed = 3 * nominal_rate(b) / a["matmul_flops"]
    skipped = a["history"].get("skipped_zero_advantage", [])
    left_out = f"; alignlab left out {mean(skipped):.0%} of the completions (advantage 0)" if skipped else ""
    print(f"  3× TRL's steps/s would be {needed:.0%} of the matmul peak at the nominal FLOPs{left_out}")

    print(f"\nreward per step, mean over each window of {every} steps:")
    print(f"  {'steps':<12}{'alignlab':>10}{'trl':>10}")
    for start in range(0, s["steps"], every):
        end = min(start + every, s["steps"])
        cells = [f"{mean(rewards[n][start:end]):>10.4f}" for n in names]
        print(f"  {f'{start + 1}-{end}':<12}{''.join(cells)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["tiny", "chainsum", "30m", "both", "all"], default="both",
                        help="which model (both: tiny and 30m; all: the three)")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps (default: tiny 100, chainsum 50, 30m 10)")
    parser.add_argument("--num-generations", type=int, default=None, help="G, samples per prompt (default 8)")
    parser.add_argument("--batch", type=int, default=None,
                        help="completions per optimizer step, a multiple of G (default: tiny 32, chainsum 32, 30m 16)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="most tokens per completion (default: tiny 6 and chainsum 48, the tasks'; 30m 64)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default 5e-5)")
    parser.add_argument("--reward", default=None,
                        help="the reward, an alignlab scorer spec (default: the model's task's gold reward)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every process")
    parser.add_argument("--every", type=int, default=0, help="steps per row of the reward table (default steps/10)")
    parser.add_argument("--alignlab-set", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra alignlab config key for its run, e.g. generation_batch_size=32 (repeatable)")
    parser.add_argument("--work", default=None, help="folder for models, logs and runs (default: a temporary one)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(Path(args.spec).read_text())
        {"alignlab": child_alignlab, "trl": child_trl}[spec["framework"]](spec)
        return 0

    extra = {}
    for item in args.alignlab_set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--alignlab-set: expected KEY=VALUE, got '{item}'")
        extra[key] = yaml.safe_load(value)
    work = Path(args.work or tempfile.mkdtemp(prefix="grpo-vs-trl-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}; torch threads {args.threads}; dense fp32 matmul (2048²) now: "
          f"{matmul_flops(args.threads) / 1e9:.1f} GFLOP/s")
    print(f"alignlab {code_version(HERE.parents[1])}; date {time.strftime('%Y-%m-%d %H:%M')}; work folder {work}")
    if extra:
        print(f"alignlab run with {extra}")
    kinds = {"both": ["tiny", "30m"], "all": ["tiny", "chainsum", "30m"]}.get(args.model, [args.model])
    for kind in kinds:
        task = TASKS[kind]
        reward = args.reward or f"task:{task}:gold"
        s = settings(args, kind)
        path, counts = model_dir(kind, work, args.seed)
        prompts = s["batch"] // s["num_generations"]
        print(f"\nmodel {kind}: {counts['total']:,} parameters ({counts['matmul']:,} in matmuls); "
              f"{s['steps']} steps of {s['batch']} completions ({prompts} {task} prompts × G {s['num_generations']}), "
              f"up to {s['max_new_tokens']} new tokens, temperature 1, lr {s['lr']}, reward {reward}, fp32")
        spec = {"model": str(path), "task": task, "reward": reward, "seed": args.seed, **s}
        results = {"alignlab": run_child(str(HERE), f"alignlab-{kind}", {
            **spec, "framework": "alignlab", "out": str(work / f"run-{kind}-alignlab"), "alignlab_set": extra,
        }, work, args.threads)}
        rounds = results["alignlab"].pop("rounds")
        if len(rounds) != s["steps"] or any(len(r) != prompts for r in rounds):
            raise RuntimeError(f"alignlab sampled {len(rounds)} rounds of {sorted({len(r) for r in rounds})} prompts; "
                               f"expected {s['steps']} of {prompts}")
        order = work / f"prompts-{kind}-in-alignlab-order.jsonl"
        write_jsonl([{"prompt": p} for r in rounds for p in r], order)
        print("TRL answers alignlab's prompts, in alignlab's order")
        results["trl"] = run_child(str(HERE), f"trl-{kind}", {
            **spec, "framework": "trl", "out": str(work / f"run-{kind}-trl"), "prompts": str(order),
        }, work, args.threads)
        answered = results["trl"].pop("rounds")
        differ = [i + 1 for i, (x, y) in enumerate(zip(rounds, answered, strict=False)) if x != y]
        if differ or len(answered) != len(rounds):
            print(f"warning: TRL answered other prompts than alignlab at {len(differ)} of {len(rounds)} steps "
                  f"(first: step {differ[0] if differ else len(answered) + 1})")
        else:
            print(f"both answered the same {prompts} prompts at each of the {len(rounds)} steps")
        report(kind, s, results, counts["matmul"], args.every or max(1, s["steps"] // 10))
    print(f"\nlogs and results: {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
