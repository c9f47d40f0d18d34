"""Sampling speed and memory: alignlab's native backend against Hugging Face ``generate``.

    python bench/generate_vs_hf.py                      # the full comparison (about 40 min on 2 cores)
    python bench/generate_vs_hf.py --prompts 32 --max-new-tokens 64 --subset 8   # a quick look
    python bench/generate_vs_hf.py --model tiny --prompts 4 --parts full   # the plumbing only (the tests)

The 30M model of the DPO benchmark (a Llama with a 32k vocabulary, random weights), 256 prompts of
50-300 tokens (the DPO benchmark's prompts, byte-level tokens), 4 samples each, up to 256 new
tokens, temperature 1, fp32. Every engine runs in its own child process, one after the other,
after one untimed call on a single prompt (a process's first forward pass pays one-time costs;
``--parts`` picks the tables: full, subset, tiny):

1. alignlab's native backend (``make_generator(model, tok, "native")``) on the whole set;
2. ``model.generate`` on a subset of the prompts at each of ``--hf-batches`` sequences per call,
   to find its best batch size (no search for a single one), then on the whole set at that batch size (and, when that is not
   the native backend's batch size, on the subset at the native one, for memory at equal batch);
3. on the subset, what else transformers ships: ``generate`` with its static cache, the static
   cache with the model's forward compiled (``torch.compile``), and ``generate_batch``
   (continuous batching with paged attention), beside the native backend on the same subset;
4. the testbed's tiny arithmetic model: native and ``generate`` on the task's 200
   held-out prompts, 4 samples each: what the testbed's online runs will feel.

Printed: generated tokens per second (end-of-sequence tokens included), the ratio to HF, the
sequences decoding at once ("batch": the setting, or fewer when the set has fewer sequences), the
peak resident memory of each child, and the model FLOP rate as a share of the machine's dense fp32
matmul throughput measured in the same children. Model FLOPs are what any engine must compute,
whatever it pads, repeats or shares: a prompt's positions once per prompt through every matmul but
the output layer; each sample's fed-back tokens (all generated tokens but the last) through those
matmuls too; the output layer once per generated token; and the attention's two products (scores
and weighted values, 2 × 2 × attention width × positions attended, per layer) for every position
fed. Counting the output layer for prompt positions too would add about 8% here; leaving attention
out would take about 6% away.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from common import (
    build_model,
    child_setup,
    code_version,
    cpu_seconds,
    finish_child,
    machine,
    make_pairs,
    matmul_flops,
    param_counts,
    run_child,
)

HERE = Path(__file__).resolve()


# -- children ----------------------------------------------------------------------------------------

def _load(spec: dict):
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    # float32 as the testbed loads them (the shipped tiny models are stored in 16 bits)
    model = LlamaForCausalLM.from_pretrained(spec["model"], dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(spec["model"])
    contexts = [tuple(c) for c in json.loads(Path(spec["prompts"]).read_text())]
    torch.manual_seed(0)
    return model, tok, contexts


def child(name: str, spec: dict) -> None:
    """Generate ``spec["samples"]`` samples per prompt with one engine; write tokens and seconds."""
    import torch

    child_setup(spec)
    model, tok, contexts = _load(spec)
    n, new, batch = spec["samples"], spec["max_new_tokens"], spec["batch"]
    engine = spec["engine"]
    with torch.no_grad():
        # one untimed call on the first prompt: the first forward pass in a process pays one-time
        # costs (kernel selection, the native engine's model check) that a training run pays once
        _run_engine(engine, model, tok, contexts[:1], 1, 2, batch)
        start, cpu = time.perf_counter(), cpu_seconds()
        lengths = _run_engine(engine, model, tok, contexts, n, new, batch)
        seconds = time.perf_counter() - start
    finish_child(spec, {"name": name, "tokens": sum(map(sum, lengths)), "seconds": seconds,
                        "sequences": n * len(contexts), "flops": model_flops(model, contexts, lengths)}, cpu)


def model_flops(model, contexts, lengths: list[list[int]]) -> float:
    """The FLOPs of the module docstring for prompts ``contexts`` and, per prompt, its samples'
    generated lengths."""
    config = model.config
    head = model.get_output_embeddings().weight.numel()
    shared = model.get_input_embeddings().weight is model.get_output_embeddings().weight
    body = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel() - (
        0 if shared else head)  # the matmuls other than the output layer
    width = config.num_attention_heads * getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    per_position = 2 * 2 * width * config.num_hidden_layers  # × positions attended

    def attended(a: int, b: int) -> int:
        """Positions attended by the positions a..b-1 together (position p attends to p + 1)."""
        return (b * (b + 1) - a * (a + 1)) // 2

    total = 0
    for context, gens in zip(contexts, lengths, strict=True):
        p = len(context)
        total += 2 * body * p + per_position * attended(0, p)
        for g in gens:
            total += 2 * body * max(g - 1, 0) + 2 * head * g + per_position * attended(p, p + max(g - 1, 0))
    return float(total)


def _run_engine(engine, model, tok, contexts, n, new, batch) -> list[list[int]]:
    """Generated lengths, ``n`` per prompt."""
    if engine == "native":
        return _native(model, tok, contexts, n, new, batch)
    if engine == "generate_batch":
        return _generate_batch(model, tok, contexts, n, new, batch)
    return _generate(model, tok, contexts, n, new, batch, engine)


def _native(model, tok, contexts, n, new, batch) -> list[list[int]]:
    from alignlab.generation import SamplingParams, make_generator

    gen = make_generator(model, tok, "native", batch_size=batch)
    rows = gen.generate_ids(contexts, n, SamplingParams(max_new_tokens=new, temperature=1.0, seed=0))
    return [[len(s.token_ids) for s in row] for row in rows]


def _config(tok, new, **extra):
    from transformers import GenerationConfig

    return GenerationConfig(max_new_tokens=new, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **extra)


def _generate(model, tok, contexts, n, new, batch, engine) -> list[list[int]]:
    """``model.generate`` on left-padded batches of ``batch`` sequences (the n samples of a prompt
    side by side), counting each row's tokens up to its end-of-sequence token."""
    import torch

    extra = {}
    if engine in ("static", "static+compile"):
        extra["cache_implementation"] = "static"
    if engine == "static+compile" and not getattr(model, "_bench_compiled", False):
        model.forward = torch.compile(model.forward, dynamic=False)
        model._bench_compiled = True
    config = _config(tok, new, **extra)
    flat = [c for c in contexts for _ in range(n)]
    lengths = []
    for i in range(0, len(flat), batch):
        part = flat[i:i + batch]
        width = max(map(len, part))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(c)) + list(c) for c in part])
        mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in part])
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, width:].tolist()
        for row in out:
            lengths.append(row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row))
    return [lengths[i:i + n] for i in range(0, len(lengths), n)]


def _generate_batch(model, tok, contexts, n, new, batch) -> list[list[int]]:
    """transformers' continuous batching with paged attention (``generate_batch``)."""
    config = _config(tok, new, max_batch_tokens=batch * 64, num_blocks=None)
    flat = [list(c) for c in contexts for _ in range(n)]
    out = model.generate_batch(inputs=flat, generation_config=config, progress_bar=False)
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for r in out.values():
        by_prompt.setdefault(tuple(r.prompt_ids), []).append(len(r.generated_tokens))
    lengths = []
    for c in contexts:  # a prompt given twice has 2n outputs: n for each
        got = by_prompt[tuple(c)]
        lengths.append(got[:n])
        del got[:n]
    return lengths


# -- parent --------------------------------------------------------------------------------------------

def prompts(count: int, seed: int, tok) -> list[list[int]]:
    rows = make_pairs(count, seed)
    return [tok(r["prompt"], add_special_tokens=True)["input_ids"] for r in rows]


def run(engine: str, batch: int, contexts: list[list[int]], args, work: Path, model_dir: Path, label: str) -> dict:
    path = work / f"{label}.prompts.json"
    path.write_text(json.dumps(contexts))
    spec = {"model": str(model_dir), "prompts": str(path), "samples": args.samples,
            "max_new_tokens": args.max_new_tokens, "batch": batch, "engine": engine}
    result = run_child(str(HERE), label, spec, work, args.threads)
    result.update(engine=engine, batch=min(batch, len(contexts) * args.samples))
    return result


def line(r: dict, base: dict | None) -> str:
    rate = r["tokens"] / r["seconds"]
    flops = r["flops"] / r["seconds"]
    ratio = f"{rate / (base['tokens'] / base['seconds']):5.2f}×" if base else "     "
    return (f"  {r['name']:<34} batch {r['batch']:>4}  {rate:8.0f} tok/s  {ratio}  peak {r['peak_rss_mb']:6.0f} MiB  "
            f"{100 * flops / r['matmul_flops']:4.1f}% of matmul peak ({r['matmul_flops'] / 1e9:.0f} GFLOP/s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["30m", "tiny"], default="30m",
                   help="the random model of the full and subset tables: the DPO benchmark's 30M one, or the tiny "
                        "one (a quick look)")
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--native-batch", type=int, default=256, help="sequences decoding at once (native)")
    p.add_argument("--hf-batches", default="16,64,128", help="generate's batch sizes to try on the subset")
    p.add_argument("--subset", type=int, default=32, help="prompts for the batch-size search and the alternatives")
    p.add_argument("--no-alternatives", action="store_true", help="skip static cache, compile and generate_batch")
    p.add_argument("--parts", default="full,subset,tiny",
                   help="which tables: full (all prompts), subset (batch sizes, what transformers ships), tiny "
                        "(the testbed's arithmetic model)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None, help="folder for the model, prompts, logs and results (default: a new "
                                                "temporary one, kept and named at the end)")
    p.add_argument("--child")
    p.add_argument("--spec")
    args = p.parse_args()
    if args.child:
        child(args.child, json.loads(Path(args.spec).read_text()))
        return
    from transformers import AutoTokenizer

    if args.work:
        work = Path(args.work).expanduser().absolute()
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="alignlab-genbench-"))
    model_dir = work / f"model-{args.model}"
    counts = build_model(args.model, model_dir, args.seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    everything = prompts(args.prompts, args.seed, tok)
    subset = random.Random(args.seed).sample(everything, min(args.subset, len(everything)))
    print(f"machine: {machine()}; torch threads {args.threads}; code {code_version(HERE.parents[1])}")
    print(f"matmul peak at the start: {matmul_flops(args.threads) / 1e9:.0f} GFLOP/s")
    print(f"{args.model} model: {counts['matmul'] / 1e6:.1f}M parameters in matmuls; {len(everything)} prompts of "
          f"{min(map(len, everything))}-{max(map(len, everything))} tokens, {args.samples} samples each, up to "
          f"{args.max_new_tokens} new tokens, temperature 1\n")

    parts = set(args.parts.split(","))
    batches = [int(b) for b in args.hf_batches.split(",")]
    # the search for generate's best batch size, where there is one to search (or the subset
    # table shows it)
    search = "subset" in parts or ("full" in parts and len(batches) > 1)
    if search:
        sweep = [run("generate", b, subset, args, work, model_dir, f"generate-b{b}-subset") for b in batches]
        best = max(sweep, key=lambda r: r["tokens"] / r["seconds"])
    if "full" in parts:
        native = run("native", args.native_batch, everything, args, work, model_dir, "native")
        hf = run("generate", best["batch"] if search else batches[0], everything, args, work, model_dir, "generate")
        print(f"\nall {len(everything)} prompts:")
        print(line(hf, None))
        print(line(native, hf))
        ratio = (native["tokens"] / native["seconds"]) / (hf["tokens"] / hf["seconds"])
        print(f"  native / generate at its best batch: {ratio:.2f}× tokens/s")
    if "subset" in parts:
        subset_part(args, work, model_dir, subset, sweep, best, counts)
    if "tiny" in parts:
        tiny_part(args, work)
    print(f"\nlogs and results: {work}", file=sys.stderr)


def subset_part(args, work: Path, model_dir: Path, subset, sweep: list[dict], best: dict, counts: dict) -> None:
    print(f"\n{len(subset)} of the prompts (batch-size search and what transformers ships):")
    subset_native = run("native", args.native_batch, subset, args, work, model_dir, "native-subset")
    rows = list(sweep)
    if not args.no_alternatives:
        for engine in ("static", "static+compile", "generate_batch"):
            try:
                rows.append(run(engine, best["batch"], subset, args, work, model_dir, f"{engine}-subset"))
            except RuntimeError as exc:
                print(f"  {engine}: failed ({str(exc).splitlines()[0]})")
    if subset_native["batch"] not in [r["batch"] for r in sweep]:  # memory at the same batch
        rows.append(run("generate", args.native_batch, subset, args, work, model_dir,
                        f"generate-b{args.native_batch}-subset"))
    for r in rows:
        print(line(r, best))
    print(line(subset_native, best))


def tiny_part(args, work: Path) -> None:
    from transformers import AutoTokenizer, LlamaForCausalLM

    from alignlab.generation.prompts import prompt_ids
    from alignlab.tasks import get_task
    from alignlab.testbed.shipped import shipped_dir

    tiny_dir = shipped_dir("arithmetic")
    task = get_task("arithmetic")
    tiny_tok = AutoTokenizer.from_pretrained(tiny_dir)
    tiny_prompts = [list(prompt_ids(tiny_tok, q)) for q in task.eval_prompts()]
    tiny_params = param_counts(LlamaForCausalLM.from_pretrained(tiny_dir))
    tiny_args = argparse.Namespace(**{**vars(args), "max_new_tokens": task.max_new_tokens})
    print(f"\nthe testbed's arithmetic model ({tiny_params['matmul'] / 1e6:.2f}M parameters in matmuls), "
          f"{len(tiny_prompts)} held-out prompts, {args.samples} samples, up to {task.max_new_tokens} new tokens:")
    tiny = [run("generate", 256, tiny_prompts, tiny_args, work, tiny_dir, "tiny-generate"),
            run("native", 256, tiny_prompts, tiny_args, work, tiny_dir, "tiny-native")]
    print(line(tiny[0], None))
    print(line(tiny[1], tiny[0]))


if __name__ == "__main__":
    main()
