"""Reward-model losses: Bradley-Terry (scalar rewards) and the general preference model (GPM).

Pure functions over the reward model's outputs for a batch of B pairs (``RewardPairs``): the
chosen and rejected responses' values, (B, D) each, D = 1 for Bradley-Terry and 2k for GPM.

**Bradley-Terry** (ALGORITHMS.md 5.1, as in TRL's RewardTrainer), with r = the scalar value:

    L = −log σ(r_w − r_l − m) + c·(r_w + r_l)²

m is an optional per-pair margin, c the optional centering coefficient (e.g. 0.01; the term keeps
rewards centred on zero, Eisenstein et al. 2023, "Helping or Herding?").

**GPM** (Zhang et al. 2024, "General Preference Modeling with Preference Representations for
Aligning Language Models", ALGORITHMS.md 5.2). Each response gets a vector v ∈ R^{2k}; the
preference score of y_i over y_j is the skew-symmetric form

    s(y_i ≻ y_j) = Σ_{l=1..k} λ_l · (v_i[2l−1]·v_j[2l] − v_i[2l]·v_j[2l−1])     (1-based indices)

with eigenvalues λ_l ≡ 1 or prompt-dependent λ(x) (computed by the model, given here as ``lam``).
P(y_i ≻ y_j) = σ(s/τ) and L = −log σ((s(y_w, y_l) − m)/τ). Because s(i, j) = −s(j, i), the
probabilities of the two orders add to one and cyclic preferences (A ≻ B ≻ C ≻ A) can be
represented, which no scalar reward can do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from alignlab.losses.params import param, require, require_non_negative, require_positive
from alignlab.losses.types import LossOutput

OBJECTIVES = ("bt", "gpm")
POOLS = ("auto", "last", "mean", "cls")


@dataclass
class RewardPairs:
    """The reward model's values for B pairs: ``chosen``/``rejected`` (B, D); ``margin`` (B,) or
    None; ``lam`` (B, k) GPM eigenvalues or None (all ones)."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    margin: torch.Tensor | None = None
    lam: torch.Tensor | None = None


@dataclass
class RewardModelParams:
    objective: str = param("bt", "bt (Bradley-Terry: a scalar reward) or gpm (general preference model: a 2k-dim "
                                 "preference representation)")
    margin_scale: float = param(0.0, "margin m = margin_scale × (score_chosen − score_rejected) from the data's "
                                     "scores (0: no margin)")
    center_coef: float = param(0.0, "c of the centering term c·(r_chosen + r_rejected)² (Bradley-Terry; e.g. 0.01)")
    gpm_dim: int = param(4, "GPM: 2k, the dimension of the preference representation (even)")
    gpm_tau: float = param(0.1, "GPM: τ in P = σ(s/τ)")
    gpm_gate: bool = param(False, "GPM: prompt-dependent eigenvalues λ(x) = k·softmax(W h_x/√d), h_x the backbone's "
                                  "state at the last prompt token (else λ = 1)")
    gpm_normalize: bool = param(True, "GPM: scale each representation to unit L2 norm")
    pool: str = param("auto", "where the head reads the backbone: last (the last non-pad token), mean (over real "
                              "tokens) or cls (the first token); auto: last for causal LMs, mean for encoders")

    def __post_init__(self) -> None:
        require(self.objective in OBJECTIVES, "objective", f"must be bt or gpm, got '{self.objective}'")
        require_non_negative(self.margin_scale, "margin_scale")
        require_non_negative(self.center_coef, "center_coef")
        require(self.gpm_dim >= 2 and self.gpm_dim % 2 == 0, "gpm_dim", f"must be even and >= 2, got {self.gpm_dim}")
        require_positive(self.gpm_tau, "gpm_tau")
        require(self.pool in POOLS, "pool", f"must be one of {', '.join(POOLS)}, got '{self.pool}'")

    @property
    def head_dim(self) -> int:
        return 1 if self.objective == "bt" else self.gpm_dim


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | None = None,
                       center_coef: float = 0.0) -> torch.Tensor:
    """Per-pair −log σ(r_w − r_l − m) + c·(r_w + r_l)²; inputs (B,), output (B,)."""
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - margin
    losses = -F.logsigmoid(diff)
    if center_coef:
        losses = losses + center_coef * (r_chosen + r_rejected) ** 2
    return losses


def gpm_score(v_i: torch.Tensor, v_j: torch.Tensor, lam: torch.Tensor | None = None) -> torch.Tensor:
    """s(y_i ≻ y_j) = Σ_l λ_l (v_i[2l−1] v_j[2l] − v_i[2l] v_j[2l−1]) for (B, 2k) inputs and λ (B, k)
    or None (all ones); output (B,). Antisymmetric: gpm_score(a, b) = −gpm_score(b, a)."""
    a_odd, a_even = v_i[..., 0::2], v_i[..., 1::2]  # 1-based components 2l−1 and 2l
    b_odd, b_even = v_j[..., 0::2], v_j[..., 1::2]
    per_block = a_odd * b_even - a_even * b_odd
    if lam is not None:
        per_block = per_block * lam
    return per_block.sum(-1)


def gpm_loss(v_chosen: torch.Tensor, v_rejected: torch.Tensor, tau: float, margin: torch.Tensor | None = None,
             lam: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pair −log σ((s(y_w ≻ y_l) − m)/τ); (B, 2k) inputs, (B,) output."""
    s = gpm_score(v_chosen, v_rejected, lam)
    if margin is not None:
        s = s - margin
    return -F.logsigmoid(s / tau)


def reward_model_loss(r: RewardPairs, params: RewardModelParams) -> LossOutput:
    """Bradley-Terry or GPM, by ``params.objective``; metrics: accuracy (the chosen response is
    preferred), and the rewards (Bradley-Terry) or the preference score and probability (GPM)."""
    if params.objective == "bt":
        r_w, r_l = r.chosen[:, 0], r.rejected[:, 0]
        losses = bradley_terry_loss(r_w, r_l, r.margin, params.center_coef)
        return LossOutput(losses, {
            "rewards/chosen": r_w.detach(), "rewards/rejected": r_l.detach(),
            "rewards/margins": (r_w - r_l).detach(), "rewards/accuracies": (r_w > r_l).float(),
        })
    losses = gpm_loss(r.chosen, r.rejected, params.gpm_tau, r.margin, r.lam)
    s = gpm_score(r.chosen, r.rejected, r.lam).detach()
    return LossOutput(losses, {
        "preference/score": s, "preference/prob": torch.sigmoid(s / params.gpm_tau),
        "rewards/accuracies": (s > 0).float(),
    })
