"""Which examples each optimizer step consumes: a function of the step alone.

Epoch ``e`` visits the examples in ``randperm(n)`` drawn from a generator seeded with
``(seed, e)`` (or, with length grouping, that order regrouped: ``grouped_order``). One step
consumes ``batch_size × grad_accum × world_size`` examples (the global batch); the last global
batch of an epoch is completed with examples from the start of the same order (as many as needed,
said in the log), so no example is left out. Because the position in the data depends on the step
number only, a resumed run sees exactly the batches an uninterrupted one sees.
"""

from __future__ import annotations

import functools
import math

import torch

from alignlab.training.distributed import Dist


@functools.lru_cache(maxsize=2)
def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The epoch's permutation, drawn once per epoch (cached; callers must not mutate it)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def steps_per_epoch(n: int, global_batch: int) -> int:
    return math.ceil(n / global_batch)


GROUP_SPAN = 32  # length grouping sorts windows of this many global batches


@functools.lru_cache(maxsize=2)
def grouped_order(lengths: tuple[int, ...], global_batch: int, seed: int, epoch: int) -> list[int]:
    """The epoch's permutation with examples of similar length in the same global batch: windows of
    ``GROUP_SPAN`` global batches of the random order are sorted by length (longest first), cut
    into global batches, and the batches of the epoch are shuffled. Within a batch the examples stay
    sorted, so each micro-batch holds neighbours in length and pads little."""
    order = epoch_order(len(lengths), seed, epoch)
    span = global_batch * GROUP_SPAN
    batches = []
    for start in range(0, len(order), span):
        window = sorted(order[start:start + span], key=lambda i: -lengths[i])
        batches += [window[k:k + global_batch] for k in range(0, len(window), global_batch)]
    full = [b for b in batches if len(b) == global_batch]
    partial = [b for b in batches if len(b) < global_batch]  # at most one: the epoch's last window's tail
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7919)
    shuffled = [full[i] for i in torch.randperm(len(full), generator=g).tolist()]
    return [i for b in shuffled + partial for i in b]


def global_batch_indices(n: int, global_batch: int, seed: int, step: int,
                         lengths: tuple[int, ...] | None = None) -> list[int]:
    """Indices of the examples that optimizer step ``step`` consumes, in order. With ``lengths``,
    batches are grouped by length (``grouped_order``)."""
    epoch, k = divmod(step, steps_per_epoch(n, global_batch))
    order = epoch_order(n, seed, epoch) if lengths is None else grouped_order(lengths, global_batch, seed, epoch)
    chosen = order[k * global_batch:(k + 1) * global_batch]
    if len(chosen) < global_batch:  # complete the last batch from the start of the same order
        chosen += (order * math.ceil(global_batch / n))[: global_batch - len(chosen)]
    return chosen


def local_micro_batches(indices: list[int], batch_size: int, grad_accum: int, dist: Dist) -> list[list[int]]:
    """This process's micro-batches of a global batch: micro m of rank r is slot m·world + r."""
    return [
        indices[(m * dist.world_size + dist.rank) * batch_size:][:batch_size]
        for m in range(grad_accum)
    ]


def global_batch_size(cfg, dist: Dist) -> int:
    """Examples consumed by one optimizer step, over micro-batches and processes."""
    return cfg.optim.batch_size * cfg.optim.grad_accum * dist.world_size


def total_steps(cfg, n: int, global_batch: int) -> int:
    if cfg.optim.max_steps > 0:
        return cfg.optim.max_steps
    return max(1, math.ceil(cfg.optim.epochs * steps_per_epoch(n, global_batch)))
