"""Checkpoints of a sharded (FSDP) run: each process writes its own shards, with
``torch.distributed.checkpoint`` in the safetensors format; JSON for the rest.

Layout of ``<output_dir>/checkpoints/step-00000042/``:
    shards/*.safetensors   each process's pieces of the trainable parameters (``model.<name>``)
                           and of the AdamW state (``optim.<name>.<exp_avg|exp_avg_sq|step>``),
                           each piece with its place in the whole tensor in the file's metadata
    rng.safetensors        torch's CPU (and CUDA) random state (the first process's)
    state.json             step, optimizer param groups, scheduler, run config, the process count
    manifest.json          sha256 of every file above; written last

The guarantees are those of ``checkpoint.py``: every process writes into one temporary directory
(named by the first), the first writes state.json and the manifest once all have finished, and
renames the directory into place. Loading reads each process's pieces of the tensors in the
checkpoint's layout, so a checkpoint resumes on any number of processes; nothing is unpickled.
``read_weights`` puts the pieces of the parameters together on one process, without a process
group (``training/saved.py``: a run's models over training).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from alignlab.errors import ConfigError, option
from alignlab.training.checkpoint import read_state, rng_tensors, seal, set_rng, shared_tmp, step_name
from alignlab.training.distributed import Dist

SHARDS = "shards"


def _flat(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors by checkpoint key, the optimizer state dict they come from): the trainable
    parameters and the optimizer state, sharded as the model is."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    tensors = {f"model.{k}": v for k, v in msd.items() if k in trainable}
    for fqn, st in osd["state"].items():
        for key, value in st.items():
            tensors[f"optim.{fqn}.{key}"] = value
    return tensors, osd


def save_sharded(root: Path, step: int, model, optimizer, scheduler, extra: dict[str, Any], dist: Dist) -> Path:
    """Write checkpoint ``step`` under ``root`` from every process, atomically; returns its directory."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    root.mkdir(parents=True, exist_ok=True)
    final = root / step_name(step)
    tmp = shared_tmp(root, step, dist)
    try:
        tensors, osd = _flat(model, optimizer)
        dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(tmp / SHARDS), save_distributed=True))
        dist.barrier()  # every process's shards are written
        if dist.is_main:
            save_file(rng_tensors(), tmp / "rng.safetensors")
            state = {"step": step, "param_groups": osd["param_groups"], "scheduler": scheduler.state_dict(),
                     "sharded": True, **extra}
            (tmp / "state.json").write_text(json.dumps(state, indent=1, default=str))
            seal(tmp, final, step)
        dist.barrier()
    except BaseException:
        if dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_sharded(ckpt: Path, model, optimizer, scheduler) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG from a sharded ``ckpt`` into the sharded
    ``model`` (on any number of processes; every process takes part); returns its state.json."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    state = read_state(ckpt)
    tensors, osd = _flat(model, optimizer)  # the shapes and placements to read into
    dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(ckpt / SHARDS)))
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    opt_state = {fqn: {key: tensors[f"optim.{fqn}.{key}"] for key in st} for fqn, st in osd["state"].items()}
    set_state_dict(model, optimizer, model_state_dict=weights,
                   optim_state_dict={"state": opt_state, "param_groups": state["param_groups"]},
                   options=StateDictOptions(strict=False))
    scheduler.load_state_dict(state["scheduler"])
    set_rng(load_file(ckpt / "rng.safetensors"))
    return state


def read_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """The trainable parameters of a sharded ``ckpt``, whole, on the CPU of this process alone (no
    process group): each tensor is allocated at the size the shards' metadata gives and filled
    from every process's pieces by ``torch.distributed.checkpoint``. Nothing is unpickled."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    where = str(ckpt / SHARDS)
    items = HuggingFaceStorageReader(where).read_metadata().state_dict_metadata
    tensors = {k: torch.empty(v.size, dtype=v.properties.dtype) for k, v in items.items() if k.startswith("model.")}
    with warnings.catch_warnings():  # loading without a process group is the intent here
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        dcp.load(tensors, storage_reader=HuggingFaceStorageReader(where))
    return {k[len("model."):]: v for k, v in tensors.items()}


def check_processes(found: Path, saved: dict, then: int, sharded: bool, cfg, dist: Dist, log) -> None:
    """A checkpoint written by ``then`` processes, resumed on another number: an unsharded one is
    refused; a sharded one is re-cut, and what changes is said."""
    now = dist.world_size
    if not sharded:
        batch = f" (global_batch={saved['global_batch']})" if "global_batch" in saved else ""
        raise ConfigError(f"resume: checkpoint {found.name} was written by {then} processes{batch} and this run has "
                          f"{now}; an unsharded checkpoint resumes on as many processes as wrote it: launch {then} "
                          f"(a run with {option('fsdp')} writes sharded checkpoints, which resume on any number)")
    if "rollout" in saved:
        raise ConfigError(f"resume: checkpoint {found.name} was written inside an online round by {then} processes, "
                          f"each holding its share of the round; resume it on {then} processes, or resume from a "
                          "checkpoint at the end of a round (save_every a multiple of updates_per_rollout)")
    if dist.is_main:
        log(f"resuming {found.name}, written by {then} processes, on {now}: the weights and AdamW state are "
            f"re-cut into {now} shards, and each process now takes {cfg.optim.batch_size} × {cfg.optim.grad_accum} "
            "examples per step of the same global batch; the updates are the same up to rounding (the gradient "
            "is summed in another order)")
