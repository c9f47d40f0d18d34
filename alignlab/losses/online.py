"""The online policy-gradient methods as registry entries: GRPO and its named variants, and RLOO.

Each entry pairs the per-token loss of ``policy_gradient.py`` with the advantage rule of
``advantages.py`` (``LossSpec.advantages``: the round's rewards, one row per prompt and one column
per sample, to one advantage per sample; the step source calls it on the whole round's rewards,
over every process, so a statistic of the batch is the batch's). The variants differ only in
their defaults, so that ``--method dapo`` is what the DAPO paper ran, and each default is a field
the user can change.

Defaults and their sources:
- ``grpo``: TRL 1.16's ``GRPOConfig`` defaults: token-mean aggregation over the global batch
  (TRL's ``loss_type="dapo"``), ε = 0.2 on both sides, group-std scaling, β = 0 (no reference).
- ``dapo``: Yu et al. 2025 (DAPO): clip-higher ε_high = 0.28, completions cut at the length limit
  masked out, token-mean aggregation, β = 0.
- ``dr_grpo``: Liu et al. 2025 (Understanding R1-Zero-Like Training): no std scaling, a constant
  normaliser (the completion-length limit), β = 0.
- ``gspo``: Zheng et al. 2025 (Group Sequence Policy Optimization): one ratio per sequence,
  ε = 3e-4 / 4e-4 (the paper's), sequence-mean-token-mean aggregation as in TRL's GSPO example.
- ``rloo``: Ahmadian et al. 2024 (Back to Basics): leave-one-out baseline, no std scaling; TRL
  wraps it in the PPO clip, as here (ε = 0.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignlab.losses.advantages import group_advantages, rloo_advantages
from alignlab.losses.params import param, require
from alignlab.losses.policy_gradient import PolicyGradientParams, policy_gradient_loss
from alignlab.losses.registry import LossSpec, register

SCALES = ("group", "batch", "none")


@dataclass
class GRPOParams(PolicyGradientParams):
    scale_rewards: str = param("group", "advantage scaling: 'group' (divide by the group's std, GRPO), 'batch' "
                                        "(by the whole batch's std), 'none' (Dr. GRPO)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.scale_rewards in SCALES, "scale_rewards", f"must be one of {SCALES}, got {self.scale_rewards!r}")


@dataclass
class DAPOParams(GRPOParams):
    eps_high: float = param(0.28, "ε_high: the ratio is clipped above at 1 + ε_high (DAPO's clip-higher)")
    mask_truncated: bool = param(True, "drop completions cut at the length limit from the loss (DAPO)")


@dataclass
class DrGRPOParams(GRPOParams):
    scale_rewards: str = param("none", "advantage scaling: 'none' (Dr. GRPO), 'group' or 'batch'")
    aggregation: str = param("constant", "'constant' (Dr. GRPO: the sum over tokens / the completion-length "
                                         "limit), 'token_mean' or 'seq_mean_token_mean'")


@dataclass
class GSPOParams(GRPOParams):
    ratio_level: str = param("sequence", "'sequence': one ratio per sequence (GSPO), or 'token'")
    eps_low: float = param(3e-4, "ε_low of the sequence ratio (GSPO paper: 3e-4)")
    eps_high: float = param(4e-4, "ε_high of the sequence ratio (GSPO paper: 4e-4)")
    aggregation: str = param("seq_mean_token_mean", "'seq_mean_token_mean', 'token_mean' or 'constant'")


@dataclass
class RLOOParams(PolicyGradientParams):
    """The leave-one-out baseline needs no scaling option."""


def grpo_advantages(rewards_PG: torch.Tensor, params: GRPOParams) -> torch.Tensor:
    """(P, G) rewards → (P, G) advantages with the params' scaling."""
    return group_advantages(rewards_PG, scale=params.scale_rewards)


def rloo_group_advantages(rewards_PG: torch.Tensor, params: RLOOParams) -> torch.Tensor:
    return rloo_advantages(rewards_PG)


_GRPO_SUMMARY = "clipped policy gradient with group-normalised advantages (+ β·k3 KL)"
for _name, _params, _paper in (
        ("grpo", GRPOParams, "Shao et al. 2024, DeepSeekMath (GRPO); defaults as TRL 1.16"),
        ("dapo", DAPOParams, "Yu et al. 2025, DAPO"),
        ("dr_grpo", DrGRPOParams, "Liu et al. 2025, Understanding R1-Zero-Like Training (Dr. GRPO)"),
        ("gspo", GSPOParams, "Zheng et al. 2025, Group Sequence Policy Optimization")):
    register(LossSpec(name=_name, fn=policy_gradient_loss, shape="online", params=_params, needs_reference=False,
                      paper=_paper, summary=_GRPO_SUMMARY, advantages=grpo_advantages))
register(LossSpec(name="rloo", fn=policy_gradient_loss, shape="online", params=RLOOParams, needs_reference=False,
                  paper="Ahmadian et al. 2024, Back to Basics (RLOO)",
                  summary="clipped policy gradient with a leave-one-out baseline", advantages=rloo_group_advantages))
