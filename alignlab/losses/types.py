"""Small typed containers that losses take and return. Only torch, no models or tokenizers."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class PairLogps:
    """Log-probs of a batch of B preference pairs, each of shape (B,).

    ``chosen``/``rejected`` are already reduced the way the loss's registry entry says (summed
    over response tokens by default, token means where the entry says 'mean'). ``ref_*`` are None
    for losses that need no reference model. ``*_len`` are response token counts.
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_len: torch.Tensor
    rejected_len: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None


@dataclass
class SeqLogps:
    """Log-probs of B sequences: ``logps`` (B,) summed over response tokens, ``lengths`` (B,)."""

    logps: torch.Tensor
    lengths: torch.Tensor


@dataclass
class LossOutput:
    """What every loss returns.

    ``losses`` holds one value per example, shape (B,). The training loop sums them and divides by
    the number of units in the whole optimizer step (over micro-batches and processes), where a
    unit is an example or a token as the registry entry says. So the update does not depend on how
    the step's batch is split. ``metrics`` are per-example (B,) values, averaged for logging.
    """

    losses: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
