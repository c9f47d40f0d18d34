"""The optimizer-step loop: the only one, for every method.

What differs between methods comes in through two seams: the *step source* (``source.py``: where
each step's examples come from — a fixed dataset in a seeded order, or prompts sampled and scored
while training) and the *forward* (``forward/``: how a batch becomes per-example losses, and the
units the loss is divided by). This file does the rest, top to bottom: gradient accumulation
normalised over the whole step, clipping, the schedule, evaluation, metrics, checkpoints, resume.

Batch arithmetic. One optimizer step consumes ``batch_size × grad_accum × world_size`` examples
(the global batch). Each example's loss is summed and divided by the number of units (examples,
or tokens for SFT; ``Forward.units``) in the *global* batch, counted before the backward passes.
So batch 8 × accum 1 on one process, batch 1 × accum 8, and batch 4 on two processes all give the
same update. DistributedDataParallel averages gradients over processes, so each process scales its
loss by ``world_size`` to turn that average back into the sum.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from alignlab.config import config_differences
from alignlab.data.collate import Batch
from alignlab.errors import ConfigError, UserError, option
from alignlab.losses.types import LossOutput
from alignlab.models import Reference
from alignlab.training import checkpoint as ckpt
from alignlab.training import fsdp, zero
from alignlab.training import sharded as sharded_ckpt
from alignlab.training.distributed import Dist, StepReduce, peer_lost, sum_over_processes, unwrap
from alignlab.training.forward import Forward
from alignlab.training.interrupt import Interrupted, StopRequest
from alignlab.training.metrics import MetricsLog, read_metrics, short
from alignlab.training.optim import make_optimizer, make_scheduler
from alignlab.training.ref_sync import RefSync
from alignlab.training.sinks import sinks_for
from alignlab.training.source import Step, StepFault, StepSource, rows_text

# How a process's share of the global batch is cut: a sharded checkpoint resumes with another cut
# (another number of processes) as long as the global batch is the same.
SPLIT_KEYS = frozenset({"batch_size", "grad_accum"})


@dataclass
class LoopInputs:
    cfg: Any  # TrainConfig
    dist: Dist
    model: torch.nn.Module  # the policy being trained, possibly DDP-wrapped or a DeepSpeed engine (zero.py)
    source: StepSource  # each step's micro-batches
    forward: Forward  # batch -> per-example losses
    out_dir: Path
    eval_examples: list = field(default_factory=list)  # held-out examples, evaluated with ``collate``
    collate: Callable[[list], Batch] | None = None
    # The frozen starting policy, for whatever needs it while training (None when nothing does).
    reference: Reference | None = None
    # Extra measurements at every evaluation (e.g. a testbed task's gold reward): (module, reference) -> metrics.
    extra_eval: Callable[[torch.nn.Module, Reference | None], dict[str, float]] | None = None
    log: Callable[[str], None] = print
    # A reference that moves toward the policy every few steps (ref_sync_steps), kept in checkpoints.
    ref_sync: RefSync | None = None


@dataclass
class LoopResult:
    steps: int
    skipped_steps: int = 0  # steps not applied because their loss or gradient was not finite (skip_nonfinite)
    train_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)


def _sum_metrics(acc: dict[str, torch.Tensor], out: LossOutput, what: str = "metrics") -> None:
    for k, v in getattr(out, what).items():
        acc[k] = acc.get(k, torch.zeros((), dtype=torch.float64)) + v.detach().double().sum().cpu()


def _means(tot: dict[str, float], examples: float, prefix: str = "") -> dict[str, float]:
    """The logged metrics of summed ones: each sum over the examples, or over its own count
    ``_count/<name>`` where the forward gives one (a mean over tokens: ``LossOutput``); a metric
    whose count is 0 (nothing it is a mean of) is left out."""
    return {prefix + k: v / max(tot.get(f"_count/{k}", examples), 1.0) for k, v in tot.items()
            if not k.startswith("_") and tot.get(f"_count/{k}", 1.0) != 0}


def autocast(cfg, dist: Dist):
    """bf16 compute over fp32 master weights when the run asks for bf16; otherwise nothing."""
    if cfg.dtype != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=dist.device.type, dtype=torch.bfloat16)


def evaluate(inp: LoopInputs, module: torch.nn.Module) -> dict[str, float]:
    """Loss and metrics over the held-out set, split over processes, summed exactly.

    A loss with a quantity of the whole optimizer step (KTO's reference point z0) gets it from the
    whole held-out set, over every process: the held-out loss does not depend on how the set is
    cut into batches or shared between processes."""
    cfg, dist, forward = inp.cfg, inp.dist, inp.forward
    examples = inp.eval_examples[dist.rank::dist.world_size]
    bs = cfg.eval.eval_batch_size or cfg.optim.batch_size
    parts = [examples[start:start + bs] for start in range(0, len(examples), bs)]
    sums: dict[str, torch.Tensor] = {}
    loss_sum = torch.zeros((), dtype=torch.float64)
    units = torch.zeros((), dtype=torch.float64)
    count = torch.zeros((), dtype=torch.float64)
    was_training = module.training
    module.eval()
    forward.before_step(module, parts, StepReduce(dist))  # as in a training step
    with torch.no_grad(), autocast(cfg, dist):
        for part in parts:
            batch = inp.collate(part)
            out = forward(module, batch)
            loss_sum += out.losses.double().sum().cpu()
            units += float(forward.units(batch))
            count += len(part)
            _sum_metrics(sums, out)
    module.train(was_training)
    tot = sum_over_processes(dist, sums, {"_loss": loss_sum, "_units": units, "_count": count})
    result = {"eval/loss": tot["_loss"] / max(tot["_units"], 1.0)}
    result.update(_means(tot, tot["_count"], "eval/"))
    return result


def evaluate_all(inp: LoopInputs, module: torch.nn.Module) -> dict[str, float]:
    """The held-out loss and metrics (when there is held-out data) and the extra measurements."""
    # each process evaluates its own share: no collective in a forward pass (the reference's too)
    with fsdp.full_params(module, inp.reference.own if inp.reference is not None else None), \
            zero.full_params(inp.model):
        result = evaluate(inp, module) if inp.eval_examples else {}
        if inp.extra_eval is not None:
            with autocast(inp.cfg, inp.dist):
                result.update(inp.extra_eval(module, inp.reference))
    return result


def afresh() -> str:
    """How the caller starts afresh in an output directory that holds a run: overwrite, not resume."""
    return f"{option('overwrite')} without {option('resume')}"


def _resume(inp: LoopInputs, unwrapped, optimizer, scheduler) -> tuple[int, int]:
    """Restore the newest complete checkpoint; return its step and skipped-step count ((0, 0) when
    there is none)."""
    dist = inp.dist
    root = inp.out_dir / "checkpoints"
    found = ckpt.newest_valid(root, report=inp.log if dist.is_main else (lambda _: None))
    ckpt.same_newest(found, root, dist)
    if found is None:
        if dist.is_main:
            inp.log(f"no checkpoint in {root}; starting from step 0")
        return 0, 0
    state = ckpt.read_state(found)
    sharded, then = bool(state.get("sharded")), state.get("world_size", dist.world_size)
    differ = config_differences(state.get("config", {}), inp.cfg.to_dict())
    if sharded:  # the split of the global batch over processes may change; the global batch is checked below
        differ = [k for k in differ if k not in SPLIT_KEYS]
    if differ:
        raise ConfigError(f"resume: checkpoint {found} was written with a config that differs in "
                          f"{', '.join(differ)}; resume with the same config, or start afresh with {afresh()}")
    zero.check_resume(found, state, inp.model)
    saved = state.get("data_position", {})
    if then != dist.world_size:
        sharded_ckpt.check_processes(found, saved, then, sharded, inp.cfg, inp.dist, inp.log)
    mismatches = inp.source.mismatches(saved)
    if mismatches:
        key, then, now = mismatches[0]
        if key == "data_digest":
            raise ConfigError(
                f"resume: checkpoint {found.name} was written from other data: as many examples, but what they "
                f"hold differs (the data changed since, or for fixed data the tokenizer or chat template); resume "
                f"with the data it was written with, or start afresh with {afresh()}"
            )
        raise ConfigError(
            f"resume: checkpoint {found.name} was written with {key}={then} and this run has {now}; "
            "resume with the same batch_size × grad_accum × processes and the same data, "
            f"or start afresh with {afresh()}"
        )
    if sharded:
        sharded_ckpt.load_sharded(found, unwrapped, optimizer, scheduler)
    elif zero.is_engine(inp.model):
        zero.load(found, inp.model, scheduler)
    else:
        ckpt.load_checkpoint(found, unwrapped, optimizer, scheduler)
    inp.source.load_state_dict(saved)
    if inp.ref_sync is not None:
        path = found / ckpt.REFERENCE_FILE
        inp.ref_sync.load_state_tensors(load_file(path) if path.is_file() else {})
    inp.forward.load_state(state.get("loss_state", {}))
    if dist.is_main:
        inp.log(f"resumed from {found} at step {state['step']}")
    return state["step"], int(state.get("skipped_steps", 0))


def run_loop(inp: LoopInputs) -> LoopResult:
    cfg, dist, model = inp.cfg, inp.dist, inp.model
    unwrapped = unwrap(model)
    steps = inp.source.total_steps
    # A DeepSpeed engine drives the run's AdamW, made before the engine (run.py)
    optimizer = model.client_optimizer if zero.is_engine(model) else make_optimizer(
        unwrapped, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.adam_betas, cfg.optim.adam_eps)
    scheduler = make_scheduler(optimizer, steps, cfg.optim.warmup_steps, cfg.optim.warmup_ratio, cfg.optim.scheduler)
    trainable = [p for p in unwrapped.parameters() if p.requires_grad]
    if dist.is_main:
        for note in inp.source.notes():
            inp.log(note)

    start_step, skipped = _resume(inp, unwrapped, optimizer, scheduler) if cfg.checkpoint.resume else (0, 0)
    metrics_path = inp.out_dir / "metrics.jsonl"
    if start_step >= steps:  # a finished run: report its numbers, do not redo or relog anything
        if dist.is_main:
            inp.log(f"the run is already complete ({steps} steps)")
        return _finished(metrics_path, steps)
    # TensorBoard, W&B, trackio (when asked): opened here, ended however the run ends
    sinks = sinks_for(cfg, inp.out_dir, start_step or None) if dist.is_main else None
    metrics_log = MetricsLog(metrics_path, dist.is_main, start_step if cfg.checkpoint.resume else None, sinks)

    result = LoopResult(steps=steps, skipped_steps=skipped)
    has_eval = bool(inp.eval_examples) or inp.extra_eval is not None
    progress = None
    with metrics_log:
        if cfg.progress and dist.is_main:
            from tqdm.auto import tqdm

            progress = tqdm(total=steps, initial=start_step, desc=cfg.method, dynamic_ncols=True)
        if has_eval and cfg.eval.eval_at_start and start_step == 0:
            metrics_log.write({"step": 0, **evaluate_all(inp, unwrapped)})
        model.train()
        # A stop asked for during the last step, the final evaluation or the final save lets the run
        # finish: the final checkpoint is the one a stop would have written.
        with StopRequest() as stop:
            try:
                _steps(inp, optimizer, scheduler, trainable, metrics_log, result, progress, stop, start_step)
            except RuntimeError as exc:
                if dist.world_size > 1 and peer_lost(exc):  # one line, not the collective's traceback
                    newest = ckpt.newest_valid(inp.out_dir / "checkpoints", report=lambda _: None)
                    raise LostProcess(f"another process of the run was lost ({str(exc).splitlines()[0][:160]}); "
                                      + (f"the newest complete checkpoint is {newest}: continue with "
                                         f"{option('resume')}" if newest else "no checkpoint was written")) from None
                raise
            finally:
                if progress is not None:
                    progress.close()
            if has_eval:
                result.eval_metrics = evaluate_all(inp, unwrapped)
                metrics_log.write({"step": steps, **result.eval_metrics})
            save(inp, unwrapped, optimizer, scheduler, steps, result.skipped_steps)
    return result


def _gradients(inp: LoopInputs, micro: list[Batch], step: int = -1) -> tuple[float, dict, dict]:
    """Forward and backward over the step's micro-batches, gradients accumulated for the whole
    global step. Returns the step's mean loss, the summed metrics (with ``_tokens``/``_slots``)
    and the summed loss statistics, all over every process."""
    cfg, dist, model, forward = inp.cfg, inp.dist, inp.model, inp.forward
    # Units of the whole global step, known before any backward pass.
    local_units = torch.tensor(float(sum(forward.units(b) for b in micro)), dtype=torch.float64)
    global_units = float(dist.sum(local_units))
    scale = dist.world_size / max(global_units, 1.0)
    # A quantity of the whole step (KTO's z0), before any backward pass, from all of the step's
    # examples (those a micro-batch leaves out of its passes too: ``Batch.idle``).
    forward.before_step(unwrap(model), [list(b.examples) + list(b.idle) for b in micro], StepReduce(dist, step))

    sums: dict[str, torch.Tensor] = {}
    stats: dict[str, torch.Tensor] = {}
    loss_sum = torch.zeros((), dtype=torch.float64)
    tokens = slots = 0
    for m, batch in enumerate(micro):
        last = m == len(micro) - 1
        sync = last or dist.world_size == 1
        # DDP's or FSDP's; a DeepSpeed engine keeps its own accumulation boundary (training/zero.py)
        ctx = fsdp.no_sync(model) if not sync and not zero.is_engine(model) else contextlib.nullcontext()
        with ctx:
            with autocast(cfg, dist):
                out = forward(model, batch)
            zero.backward(model, out.losses.sum() * scale, last)
        loss_sum += out.losses.detach().double().sum().cpu()
        tokens += batch.num_tokens
        slots += batch.attention_mask_BT.numel()
        _sum_metrics(sums, out)
        _sum_metrics(stats, out, "stats")
    tot = sum_over_processes(dist, sums, {"_loss": loss_sum, "_tokens": torch.tensor(float(tokens), dtype=torch.float64),
                                          "_slots": torch.tensor(float(slots), dtype=torch.float64)})
    tot["_units"] = global_units
    return tot["_loss"] / max(global_units, 1.0), tot, stats


def _steps(inp: LoopInputs, optimizer, scheduler, trainable, metrics_log: MetricsLog, result: LoopResult,
           progress, stop: StopRequest, start_step: int) -> None:
    """Optimizer steps from ``start_step`` to the end, or until a stop is requested (then a
    checkpoint is written and ``Interrupted`` raised)."""
    cfg, dist, forward = inp.cfg, inp.dist, inp.forward
    unwrapped = unwrap(inp.model)
    engine = inp.model if zero.is_engine(inp.model) else None
    steps = result.steps
    has_eval = bool(inp.eval_examples) or inp.extra_eval is not None
    for step in range(start_step, steps):
        t0 = time.perf_counter()
        fault: StepFault | None = None
        try:
            batch = inp.source.step(step)
        except StepFault as exc:  # the source could not make the step (an online reward failed)
            if not cfg.optim.skip_nonfinite:
                raise
            batch, fault = None, exc
        if batch is not None:
            loss, tot, stats = _gradients(inp, batch.micro, step)
            if engine is not None:  # DeepSpeed clips and steps in one call; a non-finite gradient it skips
                grad_norm = zero.step(engine)
            else:
                max_norm = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm > 0 else float("inf")
                grad_norm = fsdp.grad_norm(torch.nn.utils.clip_grad_norm_(trainable, max_norm))
        else:
            loss = grad_norm = float("nan")  # skipped below, like a step whose loss is not finite
        done = step + 1
        lr = scheduler.get_last_lr()[0]
        position = inp.source.position(done)
        if math.isfinite(loss) and math.isfinite(grad_norm):
            if engine is None:
                optimizer.step()
            if forward.stateful:
                forward.after_step(sum_over_processes(dist, stats))
            elapsed = time.perf_counter() - t0
            metrics = {"step": done, **position, "loss": loss}
            if batch.size:  # none when an online step computed no completion (all with advantage 0)
                metrics.update(_means(tot, batch.size))
                if tot["_units"] == 0 and dist.is_main:
                    inp.log(f"step {done}: no token is in the loss (mask_truncated leaves out every completion cut "
                            "at max_new_tokens, here all of them); the step's gradient is 0")
            metrics.update({"lr": lr, "grad_norm": grad_norm, "tokens_per_s": tot["_tokens"] / max(elapsed, 1e-9),
                            "padding": 1.0 - tot["_tokens"] / max(tot["_slots"], 1.0)})
            if batch.metrics:  # an online round's reward and timings; training time is the rest
                metrics.update(batch.metrics)
                making = batch.metrics.get("generation_s", 0.0) + batch.metrics.get("reward_s", 0.0)
                metrics["training_s"] = max(elapsed - making, 0.0)
            if forward.stateful:
                metrics.update({f"state/{k}": v for k, v in forward.state.items()})
            if result.skipped_steps:
                metrics["skipped_steps"] = result.skipped_steps
            result.train_metrics = dict(metrics)
        elif cfg.optim.skip_nonfinite:
            result.skipped_steps += 1
            metrics = {"step": done, **position, "skipped": True, "skipped_steps": result.skipped_steps}
            result.train_metrics["skipped_steps"] = result.skipped_steps
            if dist.is_main:
                inp.log(f"step {done}: skipped (skip_nonfinite): {fault}" if fault is not None
                        else _numeric_fault(inp, step, loss, grad_norm, batch, skipped=True))
        else:
            raise NumericError(_numeric_fault(inp, step, loss, grad_norm, batch))
        with warnings.catch_warnings():  # a skipped first step steps the schedule before the optimizer
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*optimizer.step")
            scheduler.step()  # a skipped step keeps its place in the schedule, as in the data order
        optimizer.zero_grad(set_to_none=True)
        if inp.ref_sync is not None:  # before the evaluation and the checkpoint of this step, as TRL's on_step_end
            inp.ref_sync.after_step(done)

        evaluated = bool(has_eval and cfg.eval.eval_every and done % cfg.eval.eval_every == 0 and done < steps)
        if evaluated:
            metrics.update(evaluate_all(inp, unwrapped))
        if evaluated or done % cfg.log_every == 0 or done == steps or "loss" not in metrics:
            metrics_log.write(metrics)
        saved = bool(cfg.checkpoint.save_every and done % cfg.checkpoint.save_every == 0 and done < steps)
        if saved:
            save(inp, unwrapped, optimizer, scheduler, done, result.skipped_steps)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(short(metrics))
        if done < steps and stop.agreed(dist):
            if not saved:
                save(inp, unwrapped, optimizer, scheduler, done, result.skipped_steps)
            raise Interrupted(f"stopped by {stop.signal_name or 'a signal to another process'} after step {done} "
                              f"of {steps}; checkpoint {inp.out_dir / 'checkpoints' / ckpt.step_name(done)} written; "
                              f"continue with {option('resume')}")


def _finished(metrics_path: Path, steps: int) -> LoopResult:
    records = read_metrics(metrics_path)
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if r.get("step") == steps and "loss" not in r and not r.get("skipped")]
    skipped = max((int(r.get("skipped_steps", 0)) for r in records), default=0)
    train_metrics = dict(train[-1]) if train else {}
    if skipped:
        train_metrics["skipped_steps"] = skipped
    return LoopResult(steps=steps, skipped_steps=skipped, train_metrics=train_metrics,
                      eval_metrics={k: v for k, v in evals[-1].items() if k != "step"} if evals else {})


class LostProcess(UserError):
    """A collective failed because another process of the run died or hung."""


class NumericError(UserError):
    """A non-finite loss or gradient; the step was not applied."""


def _numeric_fault(inp: LoopInputs, step: int, loss: float, grad_norm: float, batch: Step,
                   skipped: bool = False) -> str:
    shown = rows_text(batch.rows)
    if skipped:
        return (f"step {step + 1}: skipped (skip_nonfinite): the loss ({loss}) or gradient norm ({grad_norm}) "
                f"is not finite, on the batch of {shown}")
    newest = ckpt.newest_valid(inp.out_dir / "checkpoints", report=lambda _: None)
    state = f"the newest checkpoint, {newest}, is the last good state" if newest else "no checkpoint was written yet"
    return (f"step {step + 1}: the loss ({loss}) or gradient norm ({grad_norm}) is not finite, on the batch of "
            f"{shown}; the weights were not updated and {state}. A lower lr or max_grad_norm, "
            f"or a smaller beta, usually helps (start afresh with {afresh()})")


def save(inp: LoopInputs, unwrapped, optimizer, scheduler, step: int, skipped_steps: int = 0) -> None:
    dist, root = inp.dist, inp.out_dir / "checkpoints"
    extra = {"data_position": inp.source.state_dict(step), "config": inp.cfg.to_dict(),
             "loss_state": dict(inp.forward.state) if inp.forward.stateful else {},
             "skipped_steps": skipped_steps, "world_size": dist.world_size}
    if fsdp.is_sharded(unwrapped):  # every process writes its shards
        sharded_ckpt.save_sharded(root, step, unwrapped, optimizer, scheduler, extra, dist)
    elif zero.is_engine(inp.model):  # every process writes its partitions, through the engine
        zero.save(root, step, inp.model, scheduler, extra, dist)
    else:  # the first process writes alone; the others must see it to resume from it
        tensors = inp.ref_sync.state_tensors() if inp.ref_sync is not None else None
        written = dist.from_main(lambda: str(ckpt.save_checkpoint(root, step, unwrapped, optimizer, scheduler, extra,
                                                                  tensors)))
        ckpt.seen_by_all(Path(written), dist, "wrote as a checkpoint (it alone writes them)")
    if dist.is_main:
        ckpt.prune(root, inp.cfg.checkpoint.keep_checkpoints)
    dist.barrier()
