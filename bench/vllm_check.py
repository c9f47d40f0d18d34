"""The vLLM backend's check, for a machine with a CUDA GPU and vLLM installed (README: "Sampling
with vLLM"). It has not been run yet: this project's machines have no GPU.

    python bench/vllm_check.py                        # a random ~27M-parameter Llama built here
    python bench/vllm_check.py --model-dir DIR        # a model directory (config.json, weights, tokenizer)
    python bench/vllm_check.py --dtype bfloat16       # engine and policy in bf16 (looser tolerance)

Each check prints PASS or FAIL with its numbers; the exit status is 1 if any failed (2 if no engine
could be built). About two to three minutes on one H100, most of it building the two engines.

1. logprobs: vLLM's samples (greedy; temperature 1; temperature 0.7 with top-k 50 and top-p 0.95)
   carry ``Sample.logprobs`` equal, token by token, to a teacher-forced forward pass of the policy
   (``policy(prompt + response)``, log-softmax in float32); at temperature 1 with no cut
   ``sampling_logprobs`` equals ``logprobs``, for greedy tokens it is 0.
2. seed: the same seed draws the same samples, another seed other ones.
3. update_weights: after the policy's weights are perturbed in place (noise of 0.3 times each
   tensor's spread), ``update_weights`` makes the new samples' log-probs those of the perturbed
   policy, and far from the old one's.
4. lora: a LoRA policy (random adapters on every projection) pushed with ``update_weights`` (merged
   on the way): the samples' log-probs are the PEFT model's.
5. processed: a second engine with ``logprobs_mode="processed_logprobs"``, temperature 0.7 and
   top-k 50: ``sampling_logprobs`` is the log-softmax of logits / 0.7 over the 50 best tokens, and
   ``logprobs`` (from the second, teacher-forced pass) the raw one.
6. speed (no pass or fail): generated tokens per second of vLLM and of the "hf" backend on the
   same prompts (256 prompts, 128 new tokens, temperature 1).

Tolerance on a token's log-prob: 1e-3 (largest difference) in float32; in bfloat16, 0.02 on the
mean difference and 0.25 on the largest (vLLM's kernels and bf16 rounding of the logits).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import tempfile
import time
import traceback
import types

import torch

TOLERANCE = {"float32": (1e-3, 1e-3), "bfloat16": (0.02, 0.25)}  # (mean, largest) |difference|
POLICY_DTYPE = {"float32": "fp32", "bfloat16": "bf16"}
DEVICE = "cuda"  # where the policy runs (vLLM's engine is on the GPU in any case)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Check the vLLM generation backend on a GPU: log-probs against a "
                                            "teacher-forced pass, seeds, update_weights (plain and LoRA), "
                                            "processed log-probs, and speed against the hf backend.")
    p.add_argument("--model-dir", help="a model directory to check with (default: a random Llama built here)")
    p.add_argument("--dtype", choices=sorted(TOLERANCE), default="float32", help="engine and policy dtype")
    p.add_argument("--prompts", type=int, default=64, help="prompts of the correctness checks (2 samples each)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="new tokens per sample in the correctness checks")
    p.add_argument("--speed-prompts", type=int, default=256, help="prompts of the speed measurement")
    p.add_argument("--speed-tokens", type=int, default=128, help="new tokens per sample in the speed measurement")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.3, help="per engine (two are built)")
    p.add_argument("--eager", action="store_true", help="no torch.compile / CUDA graphs in the first engine")
    return p.parse_args(argv)


def prompts(n: int, offset: int = 0) -> list[str]:
    things = ["river", "lamp", "garden", "engine", "letter", "market", "planet", "recipe"]
    return [f"Tell me about the {things[i % len(things)]} number {offset + i}: " for i in range(n)]


def teacher_forced(model, samples, pad: int, batch: int = 64) -> list[list[float]]:
    """log π(token | prompt, earlier tokens) of every sample's tokens, from one right-padded forward
    pass per ``batch`` samples, log-softmax in float32."""
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(samples), batch):
            chunk = samples[start:start + batch]
            seqs = [list(s.prompt_ids + s.token_ids) for s in chunk]
            ids = torch.full((len(seqs), max(map(len, seqs))), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for b, seq in enumerate(seqs):
                ids[b, :len(seq)] = torch.tensor(seq)
                mask[b, :len(seq)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for b, s in enumerate(chunk):
                n, t = len(s.prompt_ids), len(s.token_ids)
                rows = logits[b, n - 1:n - 1 + t].float().log_softmax(-1)
                out.append(rows.gather(-1, torch.tensor(s.token_ids, device=device)[:, None])[:, 0].tolist())
    return out


def differences(got: list, want: list) -> torch.Tensor:
    flat_got = [x for row in got for x in row]
    flat_want = [x for row in want for x in row]
    assert len(flat_got) == len(flat_want), (len(flat_got), len(flat_want))
    return (torch.tensor(flat_got, dtype=torch.float64) - torch.tensor(flat_want, dtype=torch.float64)).abs()


class Report:
    """PASS/FAIL lines, the failures, and the time since the start."""

    def __init__(self, dtype: str):
        self.mean_tol, self.max_tol = TOLERANCE[dtype]
        self.failed: list[str] = []
        self.start = time.perf_counter()

    def check(self, name: str, ok: bool, detail: str) -> None:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}  [{time.perf_counter() - self.start:.0f}s]", flush=True)
        if not ok:
            self.failed.append(name)

    def close(self, name: str, got: list, want: list, extra: str = "") -> float:
        """PASS if ``got`` and ``want`` (per-sample lists of log-probs) agree within the tolerance;
        returns the mean difference."""
        d = differences(got, want)
        ok = bool(d.numel()) and float(d.mean()) <= self.mean_tol and float(d.max()) <= self.max_tol
        self.check(name, ok, f"{d.numel()} tokens, mean |diff| {float(d.mean()):.2e}, largest {float(d.max()):.2e} "
                             f"(tolerance {self.mean_tol:g} / {self.max_tol:g}){extra}")
        return float(d.mean())

    def run(self, name: str, check, *args) -> None:
        """``check(*args)``; an exception is that check's FAIL (traceback on stderr), and the next
        check still runs."""
        try:
            check(*args)
        except Exception as e:
            traceback.print_exc()
            self.check(name, False, f"{type(e).__name__}: {e}")


def flat(rows):
    return [s for row in rows for s in row]


def check_logprobs(ctx, report: Report) -> None:
    """1: log-probs of greedy, plain and cut samples against a teacher-forced pass."""
    for name, params in (("greedy", ctx.greedy), ("temperature 1", ctx.plain), ("temperature 0.7, top-k, top-p", ctx.cut)):
        samples = flat(ctx.gen.generate(ctx.texts, 2, params))
        report.close(f"logprobs, {name}", [s.logprobs for s in samples], teacher_forced(ctx.policy, samples, ctx.pad))
        if params is ctx.greedy:
            ok = all(s.sampling_logprobs == (0.0,) * len(s.token_ids) for s in samples)
            report.check("sampling_logprobs, greedy", ok, "all 0.0" if ok else "not all 0.0")
        elif params is ctx.plain:
            ok = all(s.sampling_logprobs == s.logprobs for s in samples)
            report.check("sampling_logprobs, temperature 1", ok, "equal to logprobs" if ok else "differ from logprobs")


def check_seed(ctx, report: Report) -> None:
    """2: the same seed, the same samples; another seed, other ones."""
    first = [s.token_ids for s in flat(ctx.gen.generate(ctx.texts, 2, ctx.cut))]
    again = [s.token_ids for s in flat(ctx.gen.generate(ctx.texts, 2, ctx.cut))]
    other = [s.token_ids for s in flat(ctx.gen.generate(ctx.texts, 2, dataclasses.replace(ctx.cut, seed=2)))]
    same = sum(a == b for a, b in zip(first, again, strict=True))
    changed = sum(a != b for a, b in zip(first, other, strict=True))
    report.check("seed", same == len(first) and changed > len(first) // 2,
                 f"same seed: {same}/{len(first)} samples identical; another seed: {changed}/{len(first)} differ")


def check_update_weights(ctx, report: Report) -> None:
    """3: perturb the policy in place, push it, and sample from the perturbed policy."""
    old = copy.deepcopy(ctx.policy)
    with torch.no_grad():
        for p in ctx.policy.parameters():
            p.add_(0.3 * p.float().std() * torch.randn(p.shape, device=p.device, generator=ctx.noise).to(p.dtype))
    start = time.perf_counter()
    ctx.gen.update_weights(ctx.policy)
    took = time.perf_counter() - start
    samples = flat(ctx.gen.generate(ctx.texts, 2, ctx.plain))
    got = [s.logprobs for s in samples]
    report.close("update_weights", got, teacher_forced(ctx.policy, samples, ctx.pad), f"; the push took {took:.2f}s")
    away = float(differences(got, teacher_forced(old, samples, ctx.pad)).mean())
    report.check("update_weights, away from the old policy", away > 10 * report.mean_tol,
                 f"mean |diff| to the old policy's log-probs {away:.2e} (must exceed {10 * report.mean_tol:g})")


def check_lora(ctx, report: Report) -> None:
    """4: a LoRA policy with random adapters, merged on the way into the engine."""
    from alignlab.models import LoraSettings, add_lora

    lora = add_lora(copy.deepcopy(ctx.policy), LoraSettings(r=8, alpha=16, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])).eval()
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:  # peft starts them at zero: an adapter that changes nothing
                p.normal_(0.0, 0.02, generator=ctx.noise)
    ctx.gen.update_weights(lora)
    try:
        samples = flat(ctx.gen.generate(ctx.texts, 2, ctx.plain))
        report.close("update_weights, LoRA merged", [s.logprobs for s in samples],
                     teacher_forced(lora, samples, ctx.pad))
    finally:
        ctx.gen.update_weights(ctx.policy)


def measure_speed(ctx, report: Report) -> None:
    """6: generated tokens per second, vLLM and the hf backend, the same prompts and settings."""
    from alignlab.generation import SamplingParams, make_generator

    texts = prompts(ctx.args.speed_prompts, offset=10_000)
    params = SamplingParams(max_new_tokens=ctx.args.speed_tokens, seed=3)
    rates = {}
    for backend, gen in (("vllm", ctx.gen), ("hf", make_generator(ctx.policy, ctx.tok, "hf", batch_size=128))):
        gen.generate(texts[:8], 1, dataclasses.replace(params, max_new_tokens=8))  # warm up
        torch.cuda.synchronize()
        start = time.perf_counter()
        tokens = sum(len(s.token_ids) for s in flat(gen.generate(texts, 1, params)))
        torch.cuda.synchronize()
        rates[backend] = tokens / (time.perf_counter() - start)
    print(f"INFO  speed: {len(texts)} prompts x {ctx.args.speed_tokens} new tokens at most, "
          f"{torch.cuda.get_device_name()}, {ctx.args.dtype}: vllm {rates['vllm']:,.0f} tokens/s, "
          f"hf {rates['hf']:,.0f} tokens/s, ratio {rates['vllm'] / rates['hf']:.1f}x", flush=True)


def check_processed(ctx, report: Report) -> None:
    """5: a second engine reporting processed log-probs (temperature 0.7, top-k 50)."""
    from alignlab.generation import make_generator

    gen = make_generator(ctx.policy, ctx.tok, "vllm", logprobs_mode="processed_logprobs", enforce_eager=True,
                         **ctx.engine)
    params = dataclasses.replace(ctx.cut, top_p=1.0, seed=4)
    samples = flat(gen.generate(ctx.texts, 2, params))
    report.close("processed: logprobs (teacher-forced pass)", [s.logprobs for s in samples],
                 teacher_forced(ctx.policy, samples, ctx.pad))
    by_hand = []
    with torch.no_grad():
        for s in samples:
            ids = torch.tensor([list(s.prompt_ids + s.token_ids)], device=DEVICE)
            n = len(s.prompt_ids)
            logits = ctx.policy(input_ids=ids).logits[0, n - 1:n - 1 + len(s.token_ids)].float() / params.temperature
            kept = logits.masked_fill(logits < logits.topk(params.top_k, dim=-1).values[:, -1:], float("-inf"))
            by_hand.append(kept.log_softmax(-1).gather(-1, ids[0, n:, None])[:, 0].tolist())
    report.close(f"processed: sampling_logprobs (temperature {params.temperature}, top-k {params.top_k})",
                 [s.sampling_logprobs for s in samples], by_hand)


def main(argv=None) -> int:
    args = parse_args(argv)
    from alignlab.errors import UserError
    from alignlab.generation import SamplingParams, make_generator
    from alignlab.models import TinyModelConfig, load_model, load_tokenizer, save_tiny_model

    if not torch.cuda.is_available():
        print("FAIL  setup: no CUDA GPU; this check needs one")
        return 2
    model_dir = args.model_dir
    if model_dir is None:
        model_dir = save_tiny_model(tempfile.mkdtemp(prefix="vllm-check-"), TinyModelConfig(
            hidden_size=512, num_layers=8, num_heads=8, intermediate_size=1536))
    tok = load_tokenizer(str(model_dir))
    policy = load_model(str(model_dir), dtype=POLICY_DTYPE[args.dtype]).to(DEVICE).eval()
    report = Report(args.dtype)
    engine = {"dtype": args.dtype, "max_model_len": 1024, "gpu_memory_utilization": args.gpu_memory_utilization}
    try:
        gen = make_generator(policy, tok, "vllm", enforce_eager=args.eager, **engine)
    except UserError as e:
        print(f"FAIL  setup: {e}")
        return 2
    report.check("engine", True, f"built from {model_dir}")
    n = args.max_new_tokens
    ctx = types.SimpleNamespace(
        args=args, gen=gen, policy=policy, tok=tok, pad=tok.pad_token_id, engine=engine, texts=prompts(args.prompts),
        noise=torch.Generator(device=DEVICE).manual_seed(0),
        greedy=SamplingParams(max_new_tokens=n, temperature=0.0),
        plain=SamplingParams(max_new_tokens=n, seed=1),
        cut=SamplingParams(max_new_tokens=n, temperature=0.7, top_k=50, top_p=0.95, seed=1))
    report.run("logprobs", check_logprobs, ctx, report)
    report.run("seed", check_seed, ctx, report)
    report.run("update_weights", check_update_weights, ctx, report)
    report.run("update_weights, LoRA", check_lora, ctx, report)
    report.run("speed", measure_speed, ctx, report)  # before the second engine takes its share of the GPU
    report.run("processed", check_processed, ctx, report)
    print(f"{'FAIL' if report.failed else 'PASS'}: {len(report.failed)} check(s) failed"
          + (f" ({', '.join(report.failed)})" if report.failed else ""))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
