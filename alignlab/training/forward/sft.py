"""Supervised fine-tuning: how a batch of SFT examples becomes per-example losses (summed NLL of
the response tokens; the step divides by its response tokens, ``normalize='tokens'``)."""

from __future__ import annotations

import torch

from alignlab.data.collate import Batch
from alignlab.logprobs import sequence_logps
from alignlab.losses.types import LossOutput, SeqLogps
from alignlab.training.forward import Forward


class SFTForward(Forward):
    def __call__(self, model: torch.nn.Module, batch: Batch) -> LossOutput:
        lp = sequence_logps(model, batch)
        return self.spec.fn(SeqLogps(lp.sum_B, lp.count_B), self.params)
