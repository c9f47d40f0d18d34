"""Reward-model training: how a batch of pairs becomes per-pair Bradley-Terry or GPM losses.

The model is a ``RewardModel`` (``rewards/model.py``): a pretrained backbone (a causal LM's decoder
or an encoder such as MiniLM) with a fresh head. Batches are padded pairs (``collate_pairs``: rows
[0, n) are the chosen responses, [n, 2n) the rejected ones), one forward pass for both; the loss is
``losses/reward.py``. The loop, checkpoints and evaluation are the shared ones (``loop.py``).
"""

from __future__ import annotations

import torch

from alignlab.data.collate import Batch
from alignlab.errors import DataError, RowIssue
from alignlab.losses.registry import LossSpec
from alignlab.losses.reward import RewardModelParams, RewardPairs
from alignlab.losses.types import LossOutput
from alignlab.rewards.model import RewardModel, backbone_config, new_reward_model


def build_model(cfg, dtype: str) -> RewardModel:
    """The reward model to train: ``cfg.model``'s backbone and a head seeded by ``cfg.seed``."""
    params: RewardModelParams = cfg.method_params
    model = new_reward_model(cfg.model, params.objective, params.head_dim, params.pool,
                             params.objective == "gpm" and params.gpm_gate,
                             params.objective == "gpm" and params.gpm_normalize, params.gpm_tau, dtype=dtype,
                             trust_remote_code=cfg.trust_remote_code)
    if getattr(model.backbone, "pooler", None) is not None:
        model.backbone.pooler = None  # an encoder's pooler is not read: drop it, so every weight gets a gradient
    return model


def max_length(cfg) -> int:
    """``cfg.dataset.max_length``, or less when the backbone has fewer positions (MiniLM has 512)."""
    positions = getattr(backbone_config(cfg.model, cfg.trust_remote_code), "max_position_embeddings", None)
    return min(cfg.dataset.max_length, positions) if positions else cfg.dataset.max_length


def check_examples(cfg, examples: list) -> None:
    """A margin comes from the data's scores: every pair must have them."""
    if cfg.method_params.margin_scale > 0:
        bad = [RowIssue(cfg.data, e.row, "score_chosen", "margin_scale > 0 takes the margin from score_chosen − "
                        "score_rejected; this pair has no scores") for e in examples if e.score_gap is None]
        if bad:
            raise DataError(bad, hint="")


def make_forward(spec: LossSpec, params: RewardModelParams):
    def forward(model: torch.nn.Module, batch: Batch) -> tuple[LossOutput, torch.Tensor]:
        n = batch.num_pairs
        rows = [e.sequences()[0] for e in batch.examples] + [e.sequences()[1] for e in batch.examples]
        prompt_last = torch.tensor([len(p) - 1 for p, _ in rows], device=batch.input_ids_BT.device)
        values, lam = model(batch.input_ids_BT, batch.attention_mask_BT, prompt_last)
        values = values.float() if values.dtype == torch.bfloat16 else values
        margin = None
        if params.margin_scale:
            margin = params.margin_scale * torch.tensor([e.score_gap for e in batch.examples], dtype=values.dtype,
                                                        device=values.device)
        inputs = RewardPairs(values[:n], values[n:], margin, None if lam is None else lam[:n].to(values.dtype))
        return spec.fn(inputs, params), torch.tensor(float(n))

    return forward
