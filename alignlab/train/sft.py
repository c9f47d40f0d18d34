"""Supervised fine-tuning: how a batch of SFT examples becomes per-example losses."""

from __future__ import annotations

import torch

from alignlab.data.collate import Batch
from alignlab.logprobs import sequence_logps
from alignlab.losses.registry import LossSpec
from alignlab.losses.types import LossOutput, SeqLogps


def make_forward(spec: LossSpec, params):
    def forward(model: torch.nn.Module, batch: Batch) -> tuple[LossOutput, torch.Tensor]:
        lp = sequence_logps(model, batch)
        out = spec.fn(SeqLogps(lp.sum_B, lp.count_B), params)
        return out, lp.count_B.sum()

    return forward
