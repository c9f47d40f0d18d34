"""Preference training: how a batch of pairs becomes per-pair losses.

Chosen and rejected rows go through the policy in one forward pass (``collate_pairs`` stacks
them); the reference, when the loss needs one, runs the same batch without gradients.
"""

from __future__ import annotations

import torch

from alignlab.data.collate import Batch
from alignlab.logprobs import SequenceLogps, sequence_logps, split_pairs
from alignlab.losses.registry import LossSpec
from alignlab.losses.types import LossOutput, PairLogps
from alignlab.models import Reference


def _reduced(lp: SequenceLogps, reduction: str) -> torch.Tensor:
    return lp.mean_B if reduction == "mean" else lp.sum_B


def make_forward(spec: LossSpec, params, reference: Reference | None, policy_unwrapped: torch.nn.Module):
    def forward(model: torch.nn.Module, batch: Batch) -> tuple[LossOutput, torch.Tensor]:
        ref_c = ref_r = None
        if reference is not None:
            with reference.model(policy_unwrapped) as ref_model:
                ref_c, ref_r = split_pairs(sequence_logps(ref_model, batch), batch.num_pairs)
            ref_c, ref_r = _reduced(ref_c, spec.reduction), _reduced(ref_r, spec.reduction)
        chosen, rejected = split_pairs(sequence_logps(model, batch), batch.num_pairs)
        logps = PairLogps(
            chosen=_reduced(chosen, spec.reduction),
            rejected=_reduced(rejected, spec.reduction),
            chosen_len=chosen.count_B,
            rejected_len=rejected.count_B,
            ref_chosen=ref_c,
            ref_rejected=ref_r,
        )
        out = spec.fn(logps, params)
        return out, torch.tensor(float(batch.num_pairs))

    return forward
