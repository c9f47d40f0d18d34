"""Forwards: how a batch of a method's examples becomes per-example losses.

A forward is what differs between training families (``sft.py``, ``preference.py``,
``reward_model.py``); the loop (``loop.py``) does the rest. Besides the losses a forward owns the
three things the loop must know about its loss and would otherwise look up in the registry:

- ``units(batch)``: what the step's summed loss is divided by (examples, or response tokens for
  SFT), counted from the batch alone, before any forward pass. The loop adds it over the whole
  global step, so every split of the step gives the same update.
- ``before_step(model, parts, reduce)``: a quantity of the whole optimizer step that the loss
  reads in every micro-batch (KTO's reference point z0), computed before any backward pass from
  the step's examples (``parts``: one list per micro-batch, the examples it leaves out of its
  passes included); ``reduce`` sums over processes, ``reduce.gather`` collects every process's
  value (``distributed.StepReduce``).
- ``state`` and ``after_step(totals)``: a stateful loss's running values (BCO's reward shift,
  LCPO's noise rate). The loss reports per-example statistics in ``LossOutput.stats``; after each
  applied step the loop sums them over the step and processes and hands them to ``after_step``.
  The state is saved in checkpoints and logged as ``state/<key>``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from alignlab.data.collate import Batch
from alignlab.losses.registry import LossSpec
from alignlab.losses.types import LossOutput

Reduce = Callable[[dict[str, torch.Tensor]], dict[str, float]]


class Forward:
    """The base of every forward: stateless, no quantity of the step, units from the registry."""

    def __init__(self, spec: LossSpec, params):
        self.spec, self.params = spec, params
        # A stateful loss's running values, plus constants of the data the loss reads (bvpo's
        # trace_fraction). Only a stateful loss's state is saved and logged.
        self.state: dict[str, float] = spec.init_state(params) if spec.init_state else {}

    @property
    def stateful(self) -> bool:
        return self.spec.update_state is not None

    def units(self, batch: Batch) -> int:
        """Units of this batch in the step's loss denominator."""
        if self.spec.normalize == "tokens":
            return batch.num_loss_tokens
        return batch.num_examples or batch.num_pairs or batch.input_ids_BT.shape[0]

    def __call__(self, model: torch.nn.Module, batch: Batch) -> LossOutput:
        raise TypeError(f"{type(self).__name__} does not define how a batch becomes losses")

    def before_step(self, model: torch.nn.Module, parts: Sequence[Sequence], reduce: Reduce) -> None:
        """Compute what the loss needs from the whole step; nothing for most losses."""

    def after_step(self, totals: dict[str, float]) -> None:
        """Fold one applied step's summed statistics into the running state."""
        if self.spec.update_state is not None:
            self.state.update(self.spec.update_state(dict(self.state), totals, self.params))

    def load_state(self, saved: dict[str, float]) -> None:
        """Restore the running state from a checkpoint."""
        if self.stateful:
            self.state.update(saved)
