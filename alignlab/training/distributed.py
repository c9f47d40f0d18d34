"""Processes and devices: who this process is, the collectives the loop uses, and the DDP wrapper.

The same code runs alone, under ``torchrun`` and under ``accelerate launch``: both set
RANK/WORLD_SIZE/LOCAL_RANK and the rendezvous address. Everything that talks to other processes
or unwraps the wrapper is here, so the rest of the package never sees ``torch.distributed``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    # this run started a process group of one (FSDP or DeepSpeed on one process), which it ends
    own_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a float64 tensor over processes (a copy; the input is left alone)."""
        out = values.detach().to(torch.float64).clone()
        if self.world_size > 1:
            out = out.to(self.device)
            tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
        return out.cpu()

    def barrier(self) -> None:
        if self.world_size > 1:
            tdist.barrier()

    def union(self, keys: list[str]) -> list[str]:
        """The sorted union of every process's ``keys`` (each process may have seen different ones)."""
        return sorted({k for part in self.gather(sorted(set(keys))) for k in part})

    def gather(self, part: Any) -> list:
        """Every process's ``part`` (any picklable value), in rank order."""
        if self.world_size == 1:
            return [part]
        out: list = [None] * self.world_size
        tdist.all_gather_object(out, part)
        return out

    def scatter(self, parts: list | None) -> Any:
        """Item i of the first process's ``parts`` (one picklable value per process; None on the
        others), on process i."""
        if self.world_size == 1:
            return parts[0]
        out: list = [None]
        tdist.scatter_object_list(out, parts if self.is_main else None, src=0)
        return out[0]

    def from_main(self, read: Callable[[], Any]) -> Any:
        """``read()`` on the first process only; every process gets its value."""
        value = read() if self.is_main else None
        if self.world_size > 1:
            box = [value]
            tdist.broadcast_object_list(box, src=0)
            value = box[0]
        return value


def init_distributed(group: bool = False) -> Dist:
    """This process's place among the launched ones, with the process group started when there
    are several. ``group``: start one for a single process too (FSDP shards over a group, here
    a group of one, kept in memory)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if cuda else "gloo"
    own = False
    if world > 1 and not tdist.is_initialized():
        tdist.init_process_group(backend=backend)
    elif group and not tdist.is_initialized():
        tdist.init_process_group(backend=backend, store=tdist.HashStore(), rank=0, world_size=1)
        own = True
    return Dist(rank, world, local, device, own_group=own)


def end_own_group(dist: Dist) -> None:
    """End the process group of one that ``init_distributed`` started for this run, so that the
    process is as the run found it (a later run, or the caller's own group, starts afresh). A
    launcher's group of several processes is left to the launcher. Where DeepSpeed ran on the
    group, its own teardown ends it: DeepSpeed keeps groups cloned from it (a later engine would
    find them ended, "not registered"), which only its ``destroy_process_group`` lets go."""
    if not (dist.own_group and tdist.is_initialized()):
        return
    comm = sys.modules.get("deepspeed.comm")  # imported by a run that used DeepSpeed, never here
    if comm is not None and comm.is_initialized():
        comm.destroy_process_group()
    else:
        tdist.destroy_process_group()


def wrap_model(model: torch.nn.Module, dist: Dist) -> torch.nn.Module:
    if dist.world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [dist.device.index] if dist.device.type == "cuda" else None
    # Buffers (rotary tables) never change; broadcasting them would add a collective to every forward.
    return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside a ``DistributedDataParallel`` wrapper or a DeepSpeed engine
    (``zero.py``; the model itself when unwrapped)."""
    from torch.nn.parallel import DistributedDataParallel

    deepspeed = sys.modules.get("deepspeed")  # imported only when a run asks for it
    engine = deepspeed is not None and isinstance(model, deepspeed.DeepSpeedEngine)
    return model.module if engine or isinstance(model, DistributedDataParallel) else model


def sum_over_processes(dist: Dist, sums: dict[str, torch.Tensor], extra: dict[str, torch.Tensor] | None = None
                       ) -> dict[str, float]:
    """Sum every value over processes in one collective. Every process takes part with the same
    keys, including one that saw no example (its sums count as zero)."""
    extra = extra or {}
    keys = dist.union(list(sums) + list(extra))
    zero = torch.zeros((), dtype=torch.float64)
    flat = torch.stack([sums.get(k, extra.get(k, zero)) for k in keys])
    total = dist.sum(flat)
    return {k: float(total[i]) for i, k in enumerate(keys)}


class StepReduce:
    """The collectives a forward's ``before_step`` may use: called with a dict of scalars, their
    sums over processes (``sum_over_processes``); ``gather(part)``, every process's ``part``; and
    ``step``, the optimizer step (0-based; −1 outside training)."""

    def __init__(self, dist: Dist, step: int = -1):
        self.dist, self.step = dist, step

    def __call__(self, sums: dict[str, torch.Tensor]) -> dict[str, float]:
        return sum_over_processes(self.dist, sums)

    def gather(self, part: Any) -> list:
        return self.dist.gather(part)


def peer_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another process died or stopped
    answering (gloo's closed connection, NCCL's error or timeout)."""
    if isinstance(exc, tdist.DistError):
        return True
    text = str(exc).lower()
    return any(s in text for s in ("gloo", "nccl", "connection reset by peer", "connection closed by peer"))
