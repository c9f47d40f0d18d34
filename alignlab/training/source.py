"""Step sources: what hands the loop each optimizer step's examples.

The loop (``loop.py``) asks its source for step ``s`` and gets this process's micro-batches of it;
it never learns where they came from. A source also says how many steps the run has, what its
position is worth logging (the epoch), and what of it a checkpoint must hold to resume exactly.

``OfflineSource`` reads a fixed list of examples in an order that is a function of the step alone
(``order.py``: step → global batch indices → this process's micro-batches → collate), so a resumed
run sees exactly the batches an uninterrupted one sees; its checkpoint state is the data position,
which a resumed run must match. A source that samples while it trains (prompts → generator →
scorer → examples) plugs into the same seam and keeps its own state in the checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from alignlab.data.collate import Batch
from alignlab.errors import UserError
from alignlab.training.distributed import Dist
from alignlab.training.order import (
    global_batch_indices,
    global_batch_size,
    local_micro_batches,
    steps_per_epoch,
    total_steps,
)


@dataclass
class Step:
    micro: list[Batch]  # this process's micro-batches, collated, on the device
    size: int  # examples in the whole step, over every process (what per-example metrics are averaged over)
    # (data file, row) of the step's examples, over every process, named when a step fails
    # (``rows_text``; the file "" where the source does not know it)
    rows: list[tuple[str, int]]
    # what the source measured making the step, logged with it (an online round's reward, its
    # generation time); the same on every process
    metrics: dict[str, float] = field(default_factory=dict)


def rows_text(rows: Sequence[tuple[str, int]], shown: int = 8) -> str:
    """How a message names a step's data rows: "data rows 3, 5" when they come from one file, else
    each with its file ("a.jsonl row 3, b.jsonl row 1"), as a folder of files numbers each file's
    rows from 1; the first ``shown`` of them."""
    more = ", ..." if len(rows) > shown else ""
    if len({source for source, _ in rows}) <= 1:
        return "data rows " + ", ".join(str(row) for _, row in rows[:shown]) + more
    return ", ".join(f"{source} row {row}" for source, row in rows[:shown]) + more


class StepFault(UserError):
    """The source could not make a step from its data (an online reward that failed on one sample):
    the run stops with the message, or with ``skip_nonfinite`` skips the step and counts it."""


class StepSource(Protocol):
    total_steps: int

    def step(self, step: int) -> Step:
        """The examples of optimizer step ``step`` (0-based)."""
        ...

    def notes(self) -> list[str]:
        """What the log should say about the source before the first step."""
        ...

    def position(self, done: int) -> dict[str, float]:
        """What to log about where the run is after ``done`` steps (e.g. the epoch)."""
        ...

    def state_dict(self, done: int) -> dict[str, Any]:
        """What a checkpoint written after ``done`` steps holds of this source. The first process
        writes the checkpoint and every process resumes from it, so the state must be the same on
        every process (a source with per-process state gathers it here)."""
        ...

    def mismatches(self, saved: dict[str, Any]) -> list[tuple[str, Any, Any]]:
        """(key, saved, now) for what a checkpoint's source state says that this run contradicts."""
        ...

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Continue from a checkpoint's source state (after ``mismatches`` found none)."""
        ...


# Fields of an example that are not its data: where it was read from (a moved data folder is the
# same data) and what is computed from models before training (reference log-probs, samples, BCO's
# UDM weights), which a resume may compute again (with other threads, or without the cache) to other
# rounding or other samples.
_NOT_DATA = frozenset({"source", "ref", "ref_tokens", "samples", "kl_completion", "udm_weight"})


def data_digest(items: Iterable) -> str:
    """A short digest of what ``items`` (examples, or an online run's prompts) hold: their token
    ids, labels, scores and rows, in order; dataclasses without the fields of ``_NOT_DATA``. A
    checkpoint keeps it, and a resumed run whose data file, tokenizer or chat template changed what
    it trains on is refused: the same count of examples is not the same data. An online run's
    prompts are digested as their rows and texts, before any template."""
    h = hashlib.sha256()
    for item in items:
        _feed(h, item)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _feed(h, value) -> None:
    """``value`` into the hash ``h``: a dataclass field by field (without ``_NOT_DATA``), a tuple of
    ints as their bytes (token ids: the bulk of the data, 5-10 times faster than their text),
    anything else as its ``repr``."""
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            if f.name not in _NOT_DATA:
                h.update(f.name.encode())
                _feed(h, getattr(value, f.name))
        return
    if isinstance(value, tuple):
        try:
            h.update(b"i%d:" % len(value) + array("q", value).tobytes())
            return
        except (TypeError, OverflowError):  # not all ints: field by field
            h.update(b"(")
            for v in value:
                _feed(h, v)
            h.update(b")")
            return
    h.update(repr(value).encode())


def mismatched(saved: dict[str, Any], now: dict[str, Any], digest: Callable[[], str]) -> list[tuple[str, Any, Any]]:
    """(key, saved, now) for each of ``now``'s values a checkpoint's source state ``saved`` holds
    otherwise; where they all agree, the data digest (``digest()``, computed only then) against the
    saved one, when the checkpoint has one (one written before the digest existed has none)."""
    found = [(k, saved[k], v) for k, v in now.items() if k in saved and saved[k] != v]
    if not found and "data_digest" in saved and saved["data_digest"] != digest():
        found.append(("data_digest", saved["data_digest"], digest()))
    return found


class OfflineSource:
    """A fixed list of examples, ``batch_size × grad_accum × world_size`` of them per step."""

    def __init__(self, cfg, dist: Dist, examples: list, collate: Callable[[list], Batch],
                 lengths: tuple[int, ...] | None = None):
        """``collate`` makes a batch on the device; ``lengths`` (tokens per example) groups
        examples of similar length into the same step."""
        self.cfg, self.dist, self.examples, self.collate, self.lengths = cfg, dist, examples, collate, lengths
        self.global_batch = global_batch_size(cfg, dist)
        self.per_epoch = steps_per_epoch(len(examples), self.global_batch)
        self.total_steps = total_steps(cfg, len(examples), self.global_batch)
        self._digest: str | None = None

    def digest(self) -> str:
        if self._digest is None:
            self._digest = data_digest(self.examples)
        return self._digest

    def notes(self) -> list[str]:
        """What the log should say about the data order before the first step."""
        n, gb = len(self.examples), self.global_batch
        if n % gb:
            return [f"each epoch's last step repeats {gb - n % gb} examples from its start "
                    f"to fill the global batch of {gb}"]
        return []

    def step(self, step: int) -> Step:
        cfg = self.cfg
        indices = global_batch_indices(len(self.examples), self.global_batch, cfg.seed, step, self.lengths)
        micro = [self.collate([self.examples[i] for i in idx])
                 for idx in local_micro_batches(indices, cfg.optim.batch_size, cfg.optim.grad_accum, self.dist)]
        return Step(micro, self.global_batch,
                    sorted({(self.examples[i].source, self.examples[i].row) for i in indices}))

    def position(self, done: int) -> dict[str, float]:
        return {"epoch": done / self.per_epoch}

    def state_dict(self, done: int) -> dict[str, Any]:
        epoch, position = divmod(done, self.per_epoch)
        return {"epoch": epoch, "global_batches_done_in_epoch": position, "global_batch": self.global_batch,
                "train_examples": len(self.examples), "data_digest": self.digest()}

    def mismatches(self, saved: dict[str, Any]) -> list[tuple[str, Any, Any]]:
        return mismatched(saved, {"global_batch": self.global_batch, "train_examples": len(self.examples)},
                          self.digest)

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Nothing to restore: the position in the data is a function of the step."""


class GatheredSource:
    """A step source whose ``step`` runs the models on each process alone (an online round:
    sampling, the round's log-probs), inside ``gathered()``: a context in which sharded
    parameters are whole (``fsdp.full_params`` over the policy and a sharded reference, or
    ``zero.full_params`` over a ZeRO-3 engine). Everything else is ``source``'s."""

    def __init__(self, source, gathered: Callable[[], Any]):
        self.source, self.gathered = source, gathered

    def step(self, step: int):
        with self.gathered():
            return self.source.step(step)

    def __getattr__(self, name: str):
        return getattr(self.source, name)
