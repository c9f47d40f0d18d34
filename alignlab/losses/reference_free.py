"""Pairwise preference losses without a reference model: SimPO, CPO, ORPO and ASFT.

Each loss takes a ``PairLogps`` whose ``ref_*`` fields are None (they are never read) and returns a
(B,) per-pair loss. Notation, per pair (all (B,)): ℓ(y) is the policy log-prob summed over response
tokens, ℓ̄(y) = ℓ(y)/|y| its token mean, NLL(y) = −ℓ̄(y) (token-mean cross-entropy), and with
p(y) = e^{ℓ̄(y)} the log-odds ``lo(y) = ℓ̄(y) − log(1 − e^{ℓ̄(y)})``.

- ``simpo`` — Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward".
  As the official code: z = ℓ̄(y_w) − ℓ̄(y_l) − γ/β (γ/β = ``gamma_beta_ratio``),
  ``L = −(1 − ε)·log σ(β·z) − ε·log σ(−β·z) + w_sft·NLL(y_w)``. β = 2, γ/β = 0.25, ε = w_sft = 0.
- ``cpo`` — Xu et al. 2024, "Contrastive Preference Optimization: Pushing the Boundaries of LLM
  Performance in Machine Translation" (TRL's CPO trainer). Summed log-probs:
  ``L = −(1 − ε)·log σ(β·(ℓ(y_w) − ℓ(y_l))) − ε·log σ(−β·(…)) + α·NLL(y_w)``. β = 0.1, α = 1, ε = 0.
- ``orpo`` — Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model"
  (TRL's ORPO trainer): ``L = NLL(y_w) − λ·log σ(lo(y_w) − lo(y_l))``, λ = 0.1 (TRL's ``beta``).
- ``asft`` — Wang et al. 2024, "ASFT: Aligned Supervised Fine-Tuning through Absolute Likelihood",
  in the form given by Gorbatovski et al. 2025, "The Differences Between Direct Alignment Algorithms
  are a Blur", which adds a temperature β:
  ``L = NLL(y_w) + λ·[−log σ(β·lo(y_w)) − log σ(−β·lo(y_l))]``.
  At β = 1, σ(lo(y)) = p(y), so this is the pointwise ``NLL(y_w) − λ·[ℓ̄(y_w) + log(1 − e^{ℓ̄(y_l)})]``.
  Assumed (the survey was not read in full): λ multiplies the tempered term and β only scales the
  log-odds; λ = 0.1 is a starting value, not a published default.

Differences from the reference code, per example: SimPO's and CPO's NLL terms are the mean over the
whole batch's chosen tokens there, the per-pair token mean here (equal when the chosen responses have
equal lengths). TRL 1.16's ORPO NLL also counts the chosen row's prompt tokens (its labels are the
whole input); here it is the response's alone, as for every alignlab loss. TRL logs ``logps/*`` as
the log-probs its loss uses (token means for SimPO and ORPO); here they are always the sums. The
parity tests (tests/losses/test_trl_parity.py) map each of these explicitly. ORPO and ASFT compute the log-odds in float32 or better (float64 stays float64) and
return the loss in that dtype; log(1 − e^x) uses log(−expm1(x)) for x > −log 2 and log1p(−e^x)
below, and ℓ̄ is capped at −1e-6 inside the log-odds only (p ≤ 1 − 1e-6), so that a response the
policy already predicts with certainty gives a finite log-odds instead of inf/NaN (TRL does not cap;
the NLL term is not capped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from alignlab.losses.dpo import reward_metrics
from alignlab.losses.logistic import smoothed_logistic
from alignlab.losses.params import (
    param,
    require_below_half,
    require_beta,
    require_non_negative,
    require_positive,
)
from alignlab.losses.registry import LossSpec, register
from alignlab.losses.types import LossOutput, PairLogps

# Cap on the token-mean log-prob inside the log-odds (p ≤ 1 − 1e-6), so lo(y) stays finite.
MAX_MEAN_LOGP = -1e-6


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − e^x) for x < 0, accurate near 0 and for very negative x (Mächler's two branches)."""
    near_zero = x > -math.log(2.0)
    return torch.where(near_zero, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def log_odds(mean_logp: torch.Tensor) -> torch.Tensor:
    """lo(y) = ℓ̄ − log(1 − e^ℓ̄) with p = e^ℓ̄ capped at 1 − 1e-6; float32 or better. Shape kept."""
    x = _at_least_fp32(mean_logp).clamp(max=MAX_MEAN_LOGP)
    return x - log1mexp(x)


# -------------------------------------------------------------------------------------------- SimPO
@dataclass
class SimPOParams:
    beta: float = param(2.0, "β: scale of the token-mean log-prob margin (SimPO's config default)")
    gamma_beta_ratio: float = param(0.25, "γ/β: target margin in token-mean log-probs (γ = β·ratio)")
    label_smoothing: float = param(0.0, "ε: weight of the flipped logistic term, in [0, 0.5)")
    sft_weight: float = param(0.0, "weight of NLL(y_w), the token-mean cross-entropy on the chosen response")

    def __post_init__(self) -> None:
        require_beta(self.beta)
        require_non_negative(self.gamma_beta_ratio, "gamma_beta_ratio")
        require_below_half(self.label_smoothing, "label_smoothing")
        require_non_negative(self.sft_weight, "sft_weight")


def simpo_loss(logps: PairLogps, params: SimPOParams) -> LossOutput:
    """SimPO on token means; rewards are β·ℓ̄ (as the official code logs them). (B,) per pair."""
    mean_w, mean_l = logps.chosen_mean, logps.rejected_mean
    z = mean_w - mean_l - params.gamma_beta_ratio
    nll = -mean_w
    losses = smoothed_logistic(params.beta * z, params.label_smoothing) + params.sft_weight * nll
    metrics = reward_metrics(params.beta * mean_w, params.beta * mean_l, logps)
    metrics["nll"] = nll.detach()
    return LossOutput(losses, metrics)


# ---------------------------------------------------------------------------------------------- CPO
@dataclass
class CPOParams:
    beta: float = param(0.1, "β: scale of the summed log-prob margin (TRL default)")
    alpha: float = param(1.0, "α: weight of NLL(y_w), the token-mean cross-entropy on the chosen response")
    label_smoothing: float = param(0.0, "ε: weight of the flipped logistic term, in [0, 0.5)")

    def __post_init__(self) -> None:
        require_beta(self.beta)
        require_non_negative(self.alpha, "alpha")
        require_below_half(self.label_smoothing, "label_smoothing")


def cpo_loss(logps: PairLogps, params: CPOParams) -> LossOutput:
    """CPO: logistic loss on β·(ℓ(y_w) − ℓ(y_l)) (summed) + α·NLL(y_w) (token mean). (B,) per pair."""
    r_chosen, r_rejected = params.beta * logps.chosen, params.beta * logps.rejected
    nll = -logps.chosen_mean
    losses = smoothed_logistic(r_chosen - r_rejected, params.label_smoothing) + params.alpha * nll
    metrics = reward_metrics(r_chosen, r_rejected, logps)
    metrics["nll"] = nll.detach()
    return LossOutput(losses, metrics)


# --------------------------------------------------------------------------------------------- ORPO
@dataclass
class ORPOParams:
    lam: float = param(0.1, "λ: weight of the odds-ratio term (TRL's ORPOConfig.beta)")

    def __post_init__(self) -> None:
        require_positive(self.lam, "lam")


def orpo_loss(logps: PairLogps, params: ORPOParams) -> LossOutput:
    """ORPO: NLL(y_w) − λ·log σ(lo(y_w) − lo(y_l)), (B,) per pair, float32 or better.

    Metrics as TRL logs them: rewards λ·ℓ̄, ``log_odds_ratio`` = log σ(lo_w − lo_l),
    ``log_odds_chosen`` = lo_w − lo_l, and ``nll``; ``logps/*`` are sums (TRL logs the token means).
    """
    mean_w, mean_l = _at_least_fp32(logps.chosen_mean), _at_least_fp32(logps.rejected_mean)
    z = log_odds(mean_w) - log_odds(mean_l)
    ratio = F.logsigmoid(z)
    nll = -mean_w
    losses = nll - params.lam * ratio
    metrics = reward_metrics(params.lam * mean_w, params.lam * mean_l, logps)
    metrics.update({"log_odds_ratio": ratio.detach(), "log_odds_chosen": z.detach(), "nll": nll.detach()})
    return LossOutput(losses, metrics)


# --------------------------------------------------------------------------------------------- ASFT
@dataclass
class ASFTParams:
    lam: float = param(0.1, "λ: weight of the absolute-likelihood term (a starting value, not verified)")
    beta: float = param(1.0, "β: temperature on the log-odds (DAA survey); 1 gives the plain ASFT loss")

    def __post_init__(self) -> None:
        require_positive(self.lam, "lam")
        require_beta(self.beta)


def asft_loss(logps: PairLogps, params: ASFTParams) -> LossOutput:
    """ASFT: NLL(y_w) + λ·[−log σ(β·lo(y_w)) − log σ(−β·lo(y_l))], (B,) per pair, float32 or better.

    Pointwise: each response is pushed up or down on its own, with no margin between the two.
    Metrics: rewards λ·ℓ̄ (as for ORPO), ``logodds/chosen`` and ``logodds/rejected``, ``nll``.
    """
    mean_w, mean_l = _at_least_fp32(logps.chosen_mean), _at_least_fp32(logps.rejected_mean)
    lo_w, lo_l = log_odds(mean_w), log_odds(mean_l)
    nll = -mean_w
    align = -F.logsigmoid(params.beta * lo_w) - F.logsigmoid(-params.beta * lo_l)
    losses = nll + params.lam * align
    metrics = reward_metrics(params.lam * mean_w, params.lam * mean_l, logps)
    metrics.update({"logodds/chosen": lo_w.detach(), "logodds/rejected": lo_l.detach(), "nll": nll.detach()})
    return LossOutput(losses, metrics)


register(LossSpec(
    name="simpo", fn=simpo_loss, shape="pair", params=SimPOParams, needs_reference=False, reduction="mean",
    paper="Meng et al. 2024, SimPO: Simple Preference Optimization with a Reference-Free Reward",
    summary="−log σ(β(ℓ̄_w − ℓ̄_l) − γ) (+ label smoothing, + w·NLL(y_w)), ℓ̄ = token-mean log-prob",
))
register(LossSpec(
    name="cpo", fn=cpo_loss, shape="pair", params=CPOParams, needs_reference=False, reduction="sum+mean",
    paper="Xu et al. 2024, Contrastive Preference Optimization: Pushing the Boundaries of LLM Performance "
          "in Machine Translation",
    summary="−log σ(β(ℓ_w − ℓ_l)) + α·NLL(y_w), summed log-probs, token-mean NLL",
))
register(LossSpec(
    name="orpo", fn=orpo_loss, shape="pair", params=ORPOParams, needs_reference=False, reduction="mean",
    paper="Hong et al. 2024, ORPO: Monolithic Preference Optimization without Reference Model",
    summary="NLL(y_w) − λ·log σ(lo(y_w) − lo(y_l)), lo(y) = ℓ̄ − log(1 − e^ℓ̄)",
))
register(LossSpec(
    name="asft", fn=asft_loss, shape="pair", params=ASFTParams, needs_reference=False, reduction="mean",
    paper="Wang et al. 2024, ASFT: Aligned Supervised Fine-Tuning through Absolute Likelihood",
    summary="NLL(y_w) − λ·[log σ(β·lo(y_w)) + log σ(−β·lo(y_l))], lo(y) = ℓ̄ − log(1 − e^ℓ̄)",
))
