"""Losses for unpaired binary feedback: each response is desirable (thumbs up) or undesirable.

Inputs are ``UnpairedLogps``: ``logps``/``ref`` (B,) summed over response tokens, ``labels`` (B,)
with 1.0 = desirable and 0.0 = undesirable. With ρ(y) = log πθ(y|x) − log πref(y|x) and the
implicit reward r(y) = β·ρ(y):

KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization"):

    z0 = max(0, mean over the batch of (kl_logps − ref_kl_logps)),  detached
    desirable:    λD · (1 − σ(β·(ρ − z0)))
    undesirable:  λU · (1 − σ(β·(z0 − ρ)))

``kl_logps``/``ref_kl_logps`` are the log-probs of mismatched completions (row i's prompt with
another row's completion). The loss averages whatever batch it is given; the training side
decides which batch that is (TRL gathers it over processes). β = 0.1, λD = λU = 1 (TRL defaults).

BCO (Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment"):

    desirable:    −log σ(r − δ)
    undesirable:  −log σ(−(r − δ)) · w

δ is the running mean of every reward r seen over training (desirable and undesirable alike),
kept as loss state: ``init_state`` starts it at 0, each step reports Σr and the count in
``LossOutput.stats``, and ``update_state`` folds the step's totals into an exact running mean.
The δ a step uses is ``inputs.state["delta"]``, the mean over all *previous* steps. TRL updates
its running mean with the current batch before computing the loss; at step 0 the policy equals
the reference, so every reward is 0 and δ = 0 is exact in both, and after that δ here lags TRL's
by one step. w is the underlying-distribution-matching (UDM) weight of an undesirable example
(``inputs.udm_weight``, from a prompt classifier, see ``alignlab.training.udm``); desirable
examples always have weight 1. β = 0.1 (TRL default), UDM clip range [0.5, 10], 1024 prompts
sampled per class to fit the classifier (TRL defaults).

Every loss is per example, shape (B,); metrics are per example and detached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from alignlab.losses.params import (
    param,
    require,
    require_beta,
    require_bool,
    require_non_negative,
    require_positive,
)
from alignlab.losses.registry import LossSpec, register
from alignlab.losses.types import LossOutput, UnpairedLogps


def _unpaired_metrics(inputs: UnpairedLogps, rewards: torch.Tensor, threshold: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-example metrics: the reward βρ, the policy log-prob, and whether the reward falls on the
    side of ``threshold`` its label asks for (desirable above, undesirable below)."""
    desirable = inputs.labels > 0.5
    correct = torch.where(desirable, rewards > threshold, rewards < threshold)
    return {
        "rewards": rewards.detach(),
        "rewards/accuracies": correct.to(rewards.dtype).detach(),
        "logps": inputs.logps.detach(),
        "desirable": desirable.to(rewards.dtype),
    }


# ----------------------------------------------------------------------------------------- KTO


@dataclass
class KTOParams:
    beta: float = param(0.1, "β: scale of the log-ratio inside the sigmoid (higher stays closer to the reference)")
    desirable_weight: float = param(1.0, "λD: weight of the desirable examples' losses")
    undesirable_weight: float = param(1.0, "λU: weight of the undesirable examples' losses")

    def __post_init__(self) -> None:
        require_beta(self.beta)
        for name in ("desirable_weight", "undesirable_weight"):
            require_non_negative(getattr(self, name), name)
        require(self.desirable_weight > 0 or self.undesirable_weight > 0, "desirable_weight",
                "desirable_weight and undesirable_weight cannot both be 0")


def kto_reference_point(inputs: UnpairedLogps) -> torch.Tensor:
    """z0 = max(0, mean(kl_logps − ref_kl_logps)), detached (a 0-dim tensor).

    The mean is over the whole optimizer step when the training loop supplies it
    (``state["kl_sum"]`` / ``state["kl_count"]``, summed over micro-batches and processes, as TRL
    gathers it across devices), so the step's split does not change it; in evaluation, over the
    whole held-out set; otherwise (direct calls) over the batch given."""
    if inputs.state.get("kl_count", 0) > 0:
        mean = inputs.state["kl_sum"] / inputs.state["kl_count"]
        return torch.tensor(max(0.0, mean), dtype=inputs.logps.dtype, device=inputs.logps.device)
    if inputs.kl_logps is None or inputs.ref_kl_logps is None:
        raise ValueError("kto needs kl_logps and ref_kl_logps (the mismatched completions' log-probs)")
    return (inputs.kl_logps - inputs.ref_kl_logps).detach().mean().clamp(min=0)


def kto_loss(inputs: UnpairedLogps, params: KTOParams) -> LossOutput:
    z0 = kto_reference_point(inputs)
    rho = inputs.logps - inputs.ref
    desirable = inputs.labels > 0.5
    loss_desirable = params.desirable_weight * (1 - torch.sigmoid(params.beta * (rho - z0)))
    loss_undesirable = params.undesirable_weight * (1 - torch.sigmoid(params.beta * (z0 - rho)))
    losses = torch.where(desirable, loss_desirable, loss_undesirable)
    rewards = params.beta * rho
    metrics = _unpaired_metrics(inputs, rewards, params.beta * z0)
    metrics["kl"] = z0.expand_as(rho).clone()
    return LossOutput(losses, metrics)


# ----------------------------------------------------------------------------------------- BCO


@dataclass
class BCOParams:
    beta: float = param(0.1, "β: the reward is r = β·log(π/π_ref)")
    udm: bool = param(False, "underlying-distribution matching: weight undesirable examples by a prompt "
                             "classifier's density ratio p(desirable|x)/p(undesirable|x)")
    udm_clip_min: float = param(0.5, "UDM: smallest density-ratio weight")
    udm_clip_max: float = param(10.0, "UDM: largest density-ratio weight")
    udm_sample_size: int = param(1024, "UDM: prompts sampled from each class to fit the prompt classifier")

    def __post_init__(self) -> None:
        require_beta(self.beta)
        require_bool(self.udm, "udm")
        require_positive(self.udm_clip_min, "udm_clip_min")
        require(math.isfinite(self.udm_clip_max) and self.udm_clip_max >= self.udm_clip_min, "udm_clip_max",
                f"must be a finite number >= udm_clip_min ({self.udm_clip_min}), got {self.udm_clip_max}")
        require(isinstance(self.udm_sample_size, int) and not isinstance(self.udm_sample_size, bool)
                and self.udm_sample_size >= 1, "udm_sample_size",
                f"must be an integer >= 1, got {self.udm_sample_size!r}")


def bco_init_state(params: BCOParams) -> dict[str, float]:
    """δ = 0 before any reward was seen."""
    return {"delta": 0.0, "count": 0.0}


def bco_update_state(state: dict[str, float], stats: dict, params: BCOParams) -> dict[str, float]:
    """Fold one step's reward sum and count into the running mean of all rewards seen so far."""
    count = float(state["count"])
    added = float(stats["reward_count"])
    if added <= 0:
        return {"delta": float(state["delta"]), "count": count}
    total = count + added
    # δ_new = (δ·count + Σr) / (count + n), written so a long run does not lose precision.
    delta = float(state["delta"]) + (float(stats["reward_sum"]) - added * float(state["delta"])) / total
    return {"delta": delta, "count": total}


def bco_loss(inputs: UnpairedLogps, params: BCOParams) -> LossOutput:
    rewards = params.beta * (inputs.logps - inputs.ref)
    delta = torch.as_tensor(float(inputs.state.get("delta", 0.0)), dtype=rewards.dtype, device=rewards.device)
    desirable = inputs.labels > 0.5
    loss_desirable = -F.logsigmoid(rewards - delta)
    loss_undesirable = -F.logsigmoid(-(rewards - delta))
    if inputs.udm_weight is not None:
        loss_undesirable = loss_undesirable * inputs.udm_weight.to(rewards.dtype)
    elif params.udm:
        raise ValueError("bco with udm=true needs udm_weight (one density-ratio weight per example)")
    losses = torch.where(desirable, loss_desirable, loss_undesirable)
    metrics = _unpaired_metrics(inputs, rewards, delta)
    metrics["delta"] = delta.expand_as(rewards).clone()
    stats = {
        "reward_sum": rewards.detach().sum(),
        "reward_count": torch.tensor(float(rewards.numel()), dtype=torch.float64),
    }
    return LossOutput(losses, metrics, stats)


register(LossSpec(
    name="kto", fn=kto_loss, shape="unpaired", params=KTOParams, needs_reference=True,
    paper="Ethayarajh et al. 2024, KTO: Model Alignment as Prospect Theoretic Optimization",
    summary="λD(1 − σ(β(ρ − z0))) for desirable, λU(1 − σ(β(z0 − ρ))) for undesirable; "
            "z0 = max(0, mean ρ of mismatched completions), detached",
    needs=frozenset({"kl"}),
))
register(LossSpec(
    name="bco", fn=bco_loss, shape="unpaired", params=BCOParams, needs_reference=True,
    paper="Jung et al. 2024, Binary Classifier Optimization for Large Language Model Alignment",
    summary="−log σ(βρ − δ) for desirable, −w·log σ(−(βρ − δ)) for undesirable; δ = running mean "
            "reward, w = optional UDM density-ratio weight",
    needs=frozenset({"udm"}),
    init_state=bco_init_state, update_state=bco_update_state,
))
