"""The optimizer-step loop shared by SFT and preference training.

A family (``sft.py``, ``preference.py``) says how a batch of its examples becomes per-example
losses; this file does the rest, top to bottom: data order, gradient accumulation normalised over
the whole step, clipping, the schedule, evaluation, metrics, checkpoints and resume.

Batch arithmetic. One optimizer step consumes ``batch_size × grad_accum × world_size`` examples
(the global batch). Each example's loss is summed and divided by the number of units (examples,
or tokens for SFT) in the *global* batch, counted before the backward passes. So batch 8 × accum 1
on one process, batch 1 × accum 8, and batch 4 on two processes all give the same update.
DistributedDataParallel averages gradients over processes, so each process scales its loss by
``world_size`` to turn that average back into the sum.

Data order (``order.py``) is a function of the step, which is what makes resume exact.
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

from alignlab.config import config_differences
from alignlab.data.collate import Batch
from alignlab.errors import ConfigError, UserError, option
from alignlab.losses.types import LossOutput
from alignlab.train import checkpoint as ckpt
from alignlab.train.distributed import Dist
from alignlab.train.interrupt import Interrupted, StopRequest
from alignlab.train.metrics import MetricsLog, read_metrics, short
from alignlab.train.optim import make_optimizer, make_scheduler
from alignlab.train.order import (
    global_batch_indices,
    global_batch_size,
    local_micro_batches,
    steps_per_epoch,
    total_steps,
)

# forward(model, batch) -> (LossOutput, units in this batch)
Forward = Callable[[torch.nn.Module, Batch], tuple[LossOutput, torch.Tensor]]


@dataclass
class LoopInputs:
    cfg: Any  # TrainConfig
    dist: Dist
    model: torch.nn.Module  # possibly DDP-wrapped
    train_examples: list
    eval_examples: list
    collate: Callable[[list], Batch]
    forward: Forward
    out_dir: Path
    log: Callable[[str], None] = print
    # Extra measurements at every evaluation (e.g. a testbed task's gold reward): module -> metrics.
    extra_eval: Callable[[torch.nn.Module], dict[str, float]] | None = None
    # Stateful losses: the state the forward reads (updated in place after every optimizer step
    # from the step's summed ``LossOutput.stats``), saved in checkpoints and logged as state/<key>.
    loss_state: dict[str, float] | None = None
    update_state: Callable[[dict, dict], dict] | None = None
    lengths: tuple[int, ...] | None = None  # tokens per training example: batches are grouped by length


@dataclass
class LoopResult:
    steps: int
    skipped_steps: int = 0  # steps not applied because their loss or gradient was not finite (skip_nonfinite)
    train_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)


def _sum_metrics(acc: dict[str, torch.Tensor], out: LossOutput, what: str = "metrics") -> None:
    for k, v in getattr(out, what).items():
        acc[k] = acc.get(k, torch.zeros((), dtype=torch.float64)) + v.detach().double().sum().cpu()


def sum_over_processes(dist: Dist, sums: dict[str, torch.Tensor], extra: dict[str, torch.Tensor]) -> dict[str, float]:
    """Sum every value over processes in one collective. Every process takes part with the same
    keys, including one that saw no example (its sums count as zero)."""
    keys = dist.union(list(sums) + list(extra))
    zero = torch.zeros((), dtype=torch.float64)
    flat = torch.stack([sums.get(k, extra.get(k, zero)) for k in keys])
    total = dist.sum(flat)
    return {k: float(total[i]) for i, k in enumerate(keys)}


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
    cfg, dist = inp.cfg, inp.dist
    examples = inp.eval_examples[dist.rank::dist.world_size]
    bs = cfg.eval.eval_batch_size or cfg.optim.batch_size
    parts = [examples[start:start + bs] for start in range(0, len(examples), bs)]
    sums: dict[str, torch.Tensor] = {}
    loss_sum = torch.zeros((), dtype=torch.float64)
    units = torch.zeros((), dtype=torch.float64)
    count = torch.zeros((), dtype=torch.float64)
    was_training = module.training
    module.eval()
    step_sums = getattr(inp.forward, "step_sums", None)
    if step_sums is not None:  # computed before any loss, as in a training step
        unwrapped = getattr(module, "module", module)
        inp.forward.step_values = sum_over_processes(dist, step_sums(unwrapped, parts), {})
    with torch.no_grad(), autocast(cfg, dist):
        for part in parts:
            out, n_units = inp.forward(module, inp.collate(part))
            loss_sum += out.losses.double().sum().cpu()
            units += n_units.double().cpu()
            count += len(part)
            _sum_metrics(sums, out)
    module.train(was_training)
    if step_sums is not None:
        inp.forward.step_values = {}  # the next training step computes its own
    tot = sum_over_processes(dist, sums, {"_loss": loss_sum, "_units": units, "_count": count})
    result = {"eval/loss": tot["_loss"] / max(tot["_units"], 1.0)}
    result.update({f"eval/{k}": v / max(tot["_count"], 1.0) for k, v in tot.items() if not k.startswith("_")})
    return result


def evaluate_all(inp: LoopInputs, module: torch.nn.Module) -> dict[str, float]:
    """The held-out loss and metrics (when there is held-out data) and the extra measurements."""
    result = evaluate(inp, module) if inp.eval_examples else {}
    if inp.extra_eval is not None:
        with autocast(inp.cfg, inp.dist):
            result.update(inp.extra_eval(module))
    return result


def afresh() -> str:
    """How the caller starts afresh in an output directory that holds a run: overwrite, not resume."""
    return f"{option('overwrite')} without {option('resume')}"


def _resume(inp: LoopInputs, unwrapped, optimizer, scheduler, global_batch: int) -> tuple[int, int]:
    """Restore the newest complete checkpoint; return its step and skipped-step count ((0, 0) when
    there is none)."""
    dist = inp.dist
    root = inp.out_dir / "checkpoints"
    found = ckpt.newest_valid(root, report=inp.log if dist.is_main else (lambda _: None))
    if found is None:
        if dist.is_main:
            inp.log(f"no checkpoint in {root}; starting from step 0")
        return 0, 0
    state = ckpt.read_state(found)
    differ = config_differences(state.get("config", {}), inp.cfg.to_dict())
    if differ:
        raise ConfigError(f"resume: checkpoint {found} was written with a config that differs in "
                          f"{', '.join(differ)}; resume with the same config, or start afresh with {afresh()}")
    saved = state.get("data_position", {})
    now = {"global_batch": global_batch, "train_examples": len(inp.train_examples)}
    for key, value in now.items():
        if key in saved and saved[key] != value:
            raise ConfigError(
                f"resume: checkpoint {found.name} was written with {key}={saved[key]} and this run has {value}; "
                "resume with the same batch_size × grad_accum × processes and the same data, "
                f"or start afresh with {afresh()}"
            )
    ckpt.load_checkpoint(found, unwrapped, optimizer, scheduler)
    if inp.loss_state is not None:
        inp.loss_state.update(state.get("loss_state", {}))
    if dist.is_main:
        inp.log(f"resumed from {found} at step {state['step']}")
    return state["step"], int(state.get("skipped_steps", 0))


def run_loop(inp: LoopInputs) -> LoopResult:
    cfg, dist, model = inp.cfg, inp.dist, inp.model
    unwrapped = getattr(model, "module", model)
    n = len(inp.train_examples)
    global_batch = global_batch_size(cfg, dist)
    steps = total_steps(cfg, n, global_batch)
    optimizer = make_optimizer(unwrapped, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.adam_betas, cfg.optim.adam_eps)
    scheduler = make_scheduler(optimizer, steps, cfg.optim.warmup_steps, cfg.optim.warmup_ratio, cfg.optim.scheduler)
    trainable = [p for p in unwrapped.parameters() if p.requires_grad]
    if n % global_batch and dist.is_main:
        inp.log(f"each epoch's last step repeats {global_batch - n % global_batch} examples from its start "
                f"to fill the global batch of {global_batch}")

    start_step, skipped = _resume(inp, unwrapped, optimizer, scheduler, global_batch) if cfg.checkpoint.resume else (0, 0)
    metrics_path = inp.out_dir / "metrics.jsonl"
    if start_step >= steps:  # a finished run: report its numbers, do not redo or relog anything
        if dist.is_main:
            inp.log(f"the run is already complete ({steps} steps)")
        return _finished(metrics_path, steps)
    metrics_log = MetricsLog(metrics_path, dist.is_main, start_step if cfg.checkpoint.resume else None)

    result = LoopResult(steps=steps, skipped_steps=skipped)
    has_eval = bool(inp.eval_examples) or inp.extra_eval is not None
    progress = None
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
        finally:
            if progress is not None:
                progress.close()
        if has_eval:
            result.eval_metrics = evaluate_all(inp, unwrapped)
            metrics_log.write({"step": steps, **result.eval_metrics})
        save(inp, unwrapped, optimizer, scheduler, steps, result.skipped_steps)
    return result


def _gradients(inp: LoopInputs, micro: list[Batch]) -> tuple[float, dict, dict]:
    """Forward and backward over the step's micro-batches, gradients accumulated for the whole
    global step. Returns the step's mean loss, the summed metrics (with ``_tokens``/``_slots``)
    and the summed loss statistics, all over every process."""
    cfg, dist, model = inp.cfg, inp.dist, inp.model
    unwrapped = getattr(model, "module", model)
    # Units of the whole global step, known before any backward pass.
    local_units = torch.tensor(float(sum(_units_of(inp, b) for b in micro)), dtype=torch.float64)
    global_units = float(dist.sum(local_units))
    scale = dist.world_size / max(global_units, 1.0)
    step_sums = getattr(inp.forward, "step_sums", None)
    if step_sums is not None:  # a quantity of the whole step (KTO's z0), before any backward pass
        inp.forward.step_values = sum_over_processes(dist, step_sums(unwrapped, [b.examples for b in micro]), {})

    sums: dict[str, torch.Tensor] = {}
    stats: dict[str, torch.Tensor] = {}
    loss_sum = torch.zeros((), dtype=torch.float64)
    tokens = slots = 0
    for m, batch in enumerate(micro):
        sync = m == len(micro) - 1 or dist.world_size == 1
        ctx = model.no_sync() if not sync and hasattr(model, "no_sync") else contextlib.nullcontext()
        with ctx:
            with autocast(cfg, dist):
                out, _ = inp.forward(model, batch)
            (out.losses.sum() * scale).backward()
        loss_sum += out.losses.detach().double().sum().cpu()
        tokens += batch.num_tokens
        slots += batch.attention_mask_BT.numel()
        _sum_metrics(sums, out)
        _sum_metrics(stats, out, "stats")
    tot = sum_over_processes(dist, sums, {"_loss": loss_sum, "_tokens": torch.tensor(float(tokens), dtype=torch.float64),
                                          "_slots": torch.tensor(float(slots), dtype=torch.float64)})
    return tot["_loss"] / max(global_units, 1.0), tot, stats


def _steps(inp: LoopInputs, optimizer, scheduler, trainable, metrics_log: MetricsLog, result: LoopResult,
           progress, stop: StopRequest, start_step: int) -> None:
    """Optimizer steps from ``start_step`` to the end, or until a stop is requested (then a
    checkpoint is written and ``Interrupted`` raised)."""
    cfg, dist = inp.cfg, inp.dist
    unwrapped = getattr(inp.model, "module", inp.model)
    n = len(inp.train_examples)
    global_batch = global_batch_size(cfg, dist)
    per_epoch = steps_per_epoch(n, global_batch)
    steps = result.steps
    has_eval = bool(inp.eval_examples) or inp.extra_eval is not None
    for step in range(start_step, steps):
        t0 = time.perf_counter()
        indices = global_batch_indices(n, global_batch, cfg.seed, step, inp.lengths)
        micro = [inp.collate([inp.train_examples[i] for i in idx])
                 for idx in local_micro_batches(indices, cfg.optim.batch_size, cfg.optim.grad_accum, dist)]
        loss, tot, stats = _gradients(inp, micro)
        max_norm = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, max_norm))
        done = step + 1
        lr = scheduler.get_last_lr()[0]
        if math.isfinite(loss) and math.isfinite(grad_norm):
            optimizer.step()
            if inp.update_state is not None:
                totals = sum_over_processes(dist, stats, {})
                inp.loss_state.update(inp.update_state(dict(inp.loss_state), totals))
            elapsed = time.perf_counter() - t0
            metrics = {"step": done, "epoch": done / per_epoch, "loss": loss}
            metrics.update({k: v / global_batch for k, v in tot.items() if not k.startswith("_")})
            metrics.update({"lr": lr, "grad_norm": grad_norm, "tokens_per_s": tot["_tokens"] / max(elapsed, 1e-9),
                            "padding": 1.0 - tot["_tokens"] / max(tot["_slots"], 1.0)})
            metrics.update({f"state/{k}": v for k, v in (inp.loss_state or {}).items()})
            if result.skipped_steps:
                metrics["skipped_steps"] = result.skipped_steps
            result.train_metrics = dict(metrics)
        elif cfg.optim.skip_nonfinite:
            result.skipped_steps += 1
            metrics = {"step": done, "epoch": done / per_epoch, "skipped": True, "skipped_steps": result.skipped_steps}
            result.train_metrics["skipped_steps"] = result.skipped_steps
            if dist.is_main:
                inp.log(_numeric_fault(inp, step, loss, grad_norm, indices, skipped=True))
        else:
            raise NumericError(_numeric_fault(inp, step, loss, grad_norm, indices))
        with warnings.catch_warnings():  # a skipped first step steps the schedule before the optimizer
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*optimizer.step")
            scheduler.step()  # a skipped step keeps its place in the schedule, as in the data order
        optimizer.zero_grad(set_to_none=True)

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


class NumericError(UserError):
    """A non-finite loss or gradient; the step was not applied."""


def _numeric_fault(inp: LoopInputs, step: int, loss: float, grad_norm: float, indices: list[int],
                   skipped: bool = False) -> str:
    rows = sorted({inp.train_examples[i].row for i in indices})
    shown = ", ".join(map(str, rows[:8])) + (", ..." if len(rows) > 8 else "")
    if skipped:
        return (f"step {step + 1}: skipped (skip_nonfinite): the loss ({loss}) or gradient norm ({grad_norm}) "
                f"is not finite, on the batch of data rows {shown}")
    newest = ckpt.newest_valid(inp.out_dir / "checkpoints", report=lambda _: None)
    state = f"the newest checkpoint, {newest}, is the last good state" if newest else "no checkpoint was written yet"
    return (f"step {step + 1}: the loss ({loss}) or gradient norm ({grad_norm}) is not finite, on the batch of "
            f"data rows {shown}; the weights were not updated and {state}. A lower lr or max_grad_norm, "
            f"or a smaller beta, usually helps (start afresh with {afresh()})")


def _units_of(inp: LoopInputs, batch: Batch) -> int:
    if inp.cfg.spec.normalize == "tokens":
        return batch.num_loss_tokens
    return batch.num_examples or batch.num_pairs or batch.input_ids_BT.shape[0]


def save(inp: LoopInputs, unwrapped, optimizer, scheduler, step: int, skipped_steps: int = 0) -> None:
    if inp.dist.is_main:
        root = inp.out_dir / "checkpoints"
        global_batch = global_batch_size(inp.cfg, inp.dist)
        epoch, position = divmod(step, steps_per_epoch(len(inp.train_examples), global_batch))
        position_info = {"epoch": epoch, "global_batches_done_in_epoch": position, "global_batch": global_batch,
                         "train_examples": len(inp.train_examples)}
        ckpt.save_checkpoint(root, step, unwrapped, optimizer, scheduler,
                             {"data_position": position_info, "config": inp.cfg.to_dict(),
                              "loss_state": dict(inp.loss_state or {}), "skipped_steps": skipped_steps})
        ckpt.prune(root, inp.cfg.checkpoint.keep_checkpoints)
    inp.dist.barrier()
