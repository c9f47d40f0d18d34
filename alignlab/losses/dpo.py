"""Direct Preference Optimization.

Rafailov et al., 2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward
Model". With ρ(y) = log πθ(y|x) − log πref(y|x) (summed over response tokens):

    L = −log σ(β · (ρ(y_w) − ρ(y_l)))

Inputs are (B,) tensors; the output is the (B,) per-pair loss and per-pair metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from alignlab.losses.params import BETA_HELP, param, require_beta
from alignlab.losses.types import LossOutput, PairLogps


@dataclass
class DPOParams:
    beta: float = param(0.1, BETA_HELP)

    def __post_init__(self) -> None:
        require_beta(self.beta)


def implicit_rewards(logps: PairLogps, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """β·ρ for chosen and rejected, each (B,)."""
    return beta * (logps.chosen - logps.ref_chosen), beta * (logps.rejected - logps.ref_rejected)


def reward_metrics(r_chosen: torch.Tensor, r_rejected: torch.Tensor, logps: PairLogps) -> dict[str, torch.Tensor]:
    """The per-pair metrics every pairwise loss with a reference logs."""
    return {
        "rewards/chosen": r_chosen.detach(),
        "rewards/rejected": r_rejected.detach(),
        "rewards/margins": (r_chosen - r_rejected).detach(),
        "rewards/accuracies": (r_chosen > r_rejected).float(),
        "logps/chosen": logps.chosen.detach(),
        "logps/rejected": logps.rejected.detach(),
    }


def dpo_loss(logps: PairLogps, params: DPOParams) -> LossOutput:
    r_chosen, r_rejected = implicit_rewards(logps, params.beta)
    losses = -F.logsigmoid(r_chosen - r_rejected)
    return LossOutput(losses, reward_metrics(r_chosen, r_rejected, logps))
