"""Reward-model training: how a batch of pairs becomes per-pair Bradley-Terry or GPM losses.

The model is a ``RewardModel`` (``rewards/model.py``): a pretrained backbone (a causal LM's decoder
or an encoder such as MiniLM) with a fresh head. Batches are padded pairs (``collate_pairs``: rows
[0, n) are the chosen responses, [n, 2n) the rejected ones), one forward pass for both; the loss is
``losses/reward.py``. The loop, checkpoints and evaluation are the shared ones (``loop.py``).
"""

from __future__ import annotations

import torch

from alignlab.data.collate import Batch
from alignlab.losses.reward import RewardPairs
from alignlab.losses.types import LossOutput
from alignlab.training.forward import Forward


class RewardModelForward(Forward):
    def __call__(self, model: torch.nn.Module, batch: Batch) -> LossOutput:
        n = batch.num_pairs
        rows = [e.sequences()[0] for e in batch.examples] + [e.sequences()[1] for e in batch.examples]
        prompt_last = torch.tensor([len(p) - 1 for p, _ in rows], device=batch.input_ids_BT.device)
        values, lam = model(batch.input_ids_BT, batch.attention_mask_BT, prompt_last)
        values = values.float() if values.dtype == torch.bfloat16 else values
        margin = None
        if self.params.margin_scale:
            margin = self.params.margin_scale * torch.tensor([e.score_gap for e in batch.examples],
                                                             dtype=values.dtype, device=values.device)
        inputs = RewardPairs(values[:n], values[n:], margin, None if lam is None else lam[:n].to(values.dtype))
        return self.spec.fn(inputs, self.params)
