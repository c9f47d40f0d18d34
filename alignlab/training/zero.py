"""DeepSpeed ZeRO-2/3: the model and AdamW handed to DeepSpeed's engine (``deepspeed.initialize``).

Asked for with ``deepspeed: zero2 | zero3 | PATH.json`` in the run's config, or by launching with
an accelerate config whose ``distributed_type`` is ``DEEPSPEED`` (accelerate's ``DeepSpeedPlugin``
reads what ``accelerate launch`` exported). DeepSpeed is imported here only, and only then.

The loop stays the loop (``loop.py``): it still divides each example's loss by the units of the
global batch and scales by the number of processes, because DeepSpeed averages gradients over
processes as DDP does. What DeepSpeed must not add is its own division by the accumulation steps:
every micro-batch goes through ``engine.backward(loss, scale_wrt_gas=False)``, with the
accumulation boundary set by hand on the last one, and one ``engine.step()`` per optimizer step,
which clips (``gradient_clipping`` = ``max_grad_norm``), steps AdamW over the partitions and skips
a step whose gradient is not finite. The learning-rate schedule is the run's own, over the AdamW
that DeepSpeed drives. Precision is the run's ``dtype``: DeepSpeed's own fp16/bf16 modes are not
used (``dtype: bf16`` keeps fp32 weights under autocast, as without DeepSpeed).

Checkpoints go through ``engine.save_checkpoint`` (``zero/``: DeepSpeed's files, each process its
own partitions), beside the trainable weights gathered whole (``trainable.safetensors``), the RNG
state and ``state.json``; written atomically with a manifest, as ``checkpoint.py`` writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from alignlab.errors import ConfigError, UserError
from alignlab.training.checkpoint import read_state, rng_tensors, seal, set_rng, shared_tmp, step_name
from alignlab.training.distributed import Dist
from alignlab.training.zero_config import ds_config

ENGINE_DIR, TAG = "zero", "engine"
INSTALL = "pip install 'alignlab[deepspeed]'"


def import_deepspeed():
    """``deepspeed``, imported with its start-up log sent to stderr (stdout stays the run's own);
    a one-line error when it is not installed."""
    try:
        with contextlib.redirect_stdout(sys.stderr):  # its logger binds the stream it sees now
            import deepspeed
    except ImportError as e:
        raise UserError(f"deepspeed: DeepSpeed is not installed ({e}); {INSTALL}, or train without "
                        "deepspeed (or with fsdp)") from None
    return deepspeed


def stage_of(engine) -> int:
    return engine.zero_optimization_stage()


def is_engine(model) -> bool:
    deepspeed = sys.modules.get("deepspeed")
    return deepspeed is not None and isinstance(model, deepspeed.DeepSpeedEngine)


def initialize(policy: torch.nn.Module, optimizer: torch.optim.Optimizer, spec: str, cfg, dist: Dist):
    """The DeepSpeed engine that trains ``policy`` with ``optimizer`` (the run's AdamW, whose
    param groups DeepSpeed keeps driving: the run's schedule sets their lr)."""
    deepspeed = import_deepspeed()
    config = ds_config(spec, cfg, dist.world_size, getattr(getattr(policy, "config", None), "hidden_size", None))
    for key, value in (("LOCAL_RANK", dist.local_rank), ("RANK", dist.rank), ("WORLD_SIZE", dist.world_size)):
        os.environ.setdefault(key, str(value))  # set by a launcher; a run alone sets them here
    with contextlib.redirect_stdout(sys.stderr):  # compiled-op and set-up messages
        engine, *_ = deepspeed.initialize(model=policy, optimizer=optimizer, config=config,
                                          dist_init_required=False)
    return engine


def backward(model, loss: torch.Tensor, last: bool) -> None:
    """``loss.backward()``; through the engine for a DeepSpeed one, with no scaling of its own,
    the accumulation boundary on the step's ``last`` micro-batch."""
    if not is_engine(model):
        loss.backward()
        return
    model.set_gradient_accumulation_boundary(last)
    model.backward(loss, scale_wrt_gas=False)


def step(engine) -> float:
    """Clip, step AdamW and clear the gradients (one ``engine.step()``); the gradient norm before
    clipping, not finite when DeepSpeed found the gradient not finite and left the weights alone."""
    engine.step()
    norm = engine.get_global_grad_norm()
    if not engine.was_step_applied() or norm is None:
        return float("nan")
    return float(norm)


def _gathered(params: list[torch.nn.Parameter]):
    """A block in which the ZeRO-3 partitioned ``params`` are whole on every process."""
    import deepspeed

    return deepspeed.zero.GatheredParameters(params) if any(hasattr(p, "ds_id") for p in params) else contextlib.nullcontext()


def full_state(module: torch.nn.Module, dist: Dist, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """Every process takes part; the first gets the whole parameters on the CPU (a partitioned
    one gathered one module at a time), the others {}. A tied parameter is kept once."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for prefix, sub in module.named_modules():
        own = [(n, p) for n, p in sub.named_parameters(recurse=False)
               if id(p) not in seen and (p.requires_grad or not trainable_only)]
        seen.update(id(p) for _, p in own)
        if not own:
            continue
        with _gathered([p for _, p in own]):
            if dist.is_main:
                for name, p in own:
                    out[f"{prefix}.{name}" if prefix else name] = p.detach().cpu().clone().contiguous()
    return out


def export(policy: torch.nn.Module, skeleton: torch.nn.Module | None, dist: Dist) -> torch.nn.Module | None:
    """The trained model to save, on the first process (None on the others). ZeRO-2 keeps whole
    weights in ``policy``; under ZeRO-3 they are gathered into ``skeleton`` (``fsdp.meta_copy``
    of the policy, made before DeepSpeed partitioned it). Every process takes part."""
    if skeleton is None:
        return policy if dist.is_main else None
    state = full_state(policy, dist)
    if not dist.is_main:
        return None
    skeleton.to_empty(device="cpu")
    with torch.no_grad():
        buffers = dict(policy.named_buffers())
        for name, buf in skeleton.named_buffers():
            buf.copy_(buffers[name])
    skeleton.load_state_dict(state, strict=False)
    missing = {n for n, _ in skeleton.named_parameters()} - set(state)
    if missing:
        raise RuntimeError(f"parameters not gathered from DeepSpeed: {sorted(missing)[:3]}")
    return skeleton


@contextlib.contextmanager
def full_params(model):
    """Within the block a ZeRO-3 engine's parameters are whole on every process and its hooks
    are off, so each process can run any number of forward passes without the others
    (evaluation, sampling). A no-op for anything else. Forward passes without gradient only.
    The hooks are taken off and put back through the engine's ``parameter_offload`` (DeepSpeed
    internals, as of 0.19.8)."""
    if not is_engine(model) or stage_of(model) != 3:
        yield
        return
    offload = model.optimizer.parameter_offload
    with _gathered(list(model.module.parameters())):
        offload._remove_module_hooks()
        try:
            yield
        finally:
            offload.setup_zero_stage3_hooks()


def save(root: Path, step: int, engine, scheduler, extra: dict[str, Any], dist: Dist) -> Path:
    """Write checkpoint ``step`` under ``root`` from every process, atomically; returns its directory."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_name(step)
    tmp = shared_tmp(root, step, dist)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            engine.save_checkpoint(str(tmp / ENGINE_DIR), tag=TAG, save_latest=False)
        weights = full_state(engine.module, dist, trainable_only=True)
        dist.barrier()
        if dist.is_main:
            from safetensors.torch import save_file

            save_file(weights, tmp / "trainable.safetensors")
            save_file(rng_tensors(), tmp / "rng.safetensors")
            state = {"step": step, "deepspeed": stage_of(engine), "scheduler": scheduler.state_dict(), **extra}
            (tmp / "state.json").write_text(json.dumps(state, indent=1, default=str))
            seal(tmp, final, step)
    except BaseException:
        if dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    dist.barrier()
    return final


def check_resume(found: Path, state: dict, engine) -> None:
    """Refuse a checkpoint written with DeepSpeed resumed without it, or the other way round."""
    then, now = state.get("deepspeed"), stage_of(engine) if is_engine(engine) else None
    if then != now:
        said = {None: "without DeepSpeed"} | {s: f"with DeepSpeed ZeRO-{s}" for s in (2, 3)}
        raise ConfigError(f"resume: checkpoint {found} was written {said.get(then, then)} and this run trains "
                          f"{said.get(now, now)}; launch it as it was launched, or start afresh")


def load(found: Path, engine, scheduler) -> None:
    """Restore the engine (weights, AdamW partitions), the schedule and the RNG from ``found``."""
    state = read_state(found)
    with contextlib.redirect_stdout(sys.stderr):
        path, _ = engine.load_checkpoint(str(found / ENGINE_DIR), tag=TAG, load_lr_scheduler_states=False)
    if path is None:
        raise UserError(f"resume: DeepSpeed could not load checkpoint {found}")
    scheduler.load_state_dict(state["scheduler"])
    from safetensors.torch import load_file

    set_rng(load_file(found / "rng.safetensors"))
