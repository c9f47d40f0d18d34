"""Pairwise losses with a reference model that change DPO's link, margin, reduction or weighting.

Notation (ALGORITHMS.md §0): ℓ(y) = log πθ(y|x) summed over response tokens, ρ(y) = ℓ(y) − ℓref(y),
Δ = ρ(yw) − ρ(yl), h = βΔ, ρ̄(y) = ρ(y)/|y| (token mean), Δ̄ = ρ̄(yw) − ρ̄(yl), σ the sigmoid.

Every loss takes a ``PairLogps`` of B pairs, each field (B,) (per-token fields (B, L)), and returns a
``LossOutput`` whose ``losses`` are (B,) per pair and whose ``metrics`` are (B,) and detached.

- ipo: (Δ̄ − 1/(2τ))², τ = ``beta``, no β multiplying Δ̄ (Azar et al. 2023)
- hinge: max(0, 1 − βΔ), RSO's "hinge-norm", TRL ``hinge`` (Liu et al. 2023)
- ln-dpo: −log σ(βΔ̄), TRL ``sigmoid_norm`` (Ahrabian et al. 2024)
- rpo: −log σ(βΔ) + η·NLL(yw), NLL = −ℓ(yw)/|yw| (Liu et al. 2024)
- dpop: −log σ(β(Δ − λ·max(0, ℓref(yw) − ℓ(yw)))) (Pal et al. 2024)
- gamma-dpo: −log σ(β[(ℓ(yw) − ℓ(yl)) − γ(ℓref(yw) − ℓref(yl))]) (Chen et al. 2024)
- f-dpo-{reverse-kl, forward-kl, js, alpha}: −log σ(β[s(ρ(yw)) − s(ρ(yl))]), s from f′ (Wang et al. 2023)
- ld-dpo: DPO on ℓ' = Σ_{t≤l_p} ℓ_t + α·Σ_{t>l_p} ℓ_t, l_p = min(|yw|, |yl|) (Liu et al. 2024)
- wpo: w·(−log σ(βΔ)), w = min(1, exp(m(yw) + m(yl))) detached (Zhou et al. 2024)
- bvpo: −log σ(βΔ) times α/f (trace pairs) or (1 − α)/(1 − f) (empty-trace pairs) (§1.14)
- dove: −log σ(βΔ) on joint pairs whose two prompts may differ (Bansal et al. 2024)

Where a detail could not be checked in the authors' code it is a parameter, and the docstring of
the loss says what was assumed (RPO's β·η, LD-DPO's reference, WPO's clamp).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from alignlab.losses.dpo import DPOParams, dpo_loss, implicit_rewards, reward_metrics
from alignlab.losses.params import (
    BETA_HELP,
    param,
    require,
    require_beta,
    require_bool,
    require_fraction,
    require_non_negative,
)
from alignlab.losses.registry import LossSpec, register
from alignlab.losses.types import LossOutput, PairLogps


def _log_ratios(logps: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
    """ρ(yw), ρ(yl), each (B,), summed over tokens."""
    return logps.chosen - logps.ref_chosen, logps.rejected - logps.ref_rejected


def _mean_log_ratios(logps: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
    """ρ̄(yw), ρ̄(yl): token means, (B,)."""
    rho_c, rho_r = _log_ratios(logps)
    return rho_c / logps.chosen_len.clamp(min=1), rho_r / logps.rejected_len.clamp(min=1)


# ---------------------------------------------------------------------------------------------
# IPO
# ---------------------------------------------------------------------------------------------


@dataclass
class IPOParams:
    beta: float = param(0.1, "τ: IPO's regularisation; the loss pulls the token-mean margin Δ̄ to 1/(2τ)")

    def __post_init__(self) -> None:
        require_beta(self.beta)


def ipo_loss(logps: PairLogps, params: IPOParams) -> LossOutput:
    """IPO (Azar et al. 2023): (Δ̄ − 1/(2τ))² with token-mean log-ratios (as TRL, confirmed by the
    IPO authors). τ is ``beta``; no β multiplies Δ̄. Rewards are logged as β·ρ (summed), as TRL does."""
    mean_c, mean_r = _mean_log_ratios(logps)
    delta = mean_c - mean_r
    losses = (delta - 1.0 / (2.0 * params.beta)) ** 2
    metrics = reward_metrics(*implicit_rewards(logps, params.beta), logps)
    metrics["ipo/mean_margin"] = delta.detach()
    return LossOutput(losses, metrics)


# ---------------------------------------------------------------------------------------------
# Hinge (RSO hinge-norm)
# ---------------------------------------------------------------------------------------------


def hinge_loss(logps: PairLogps, params: DPOParams) -> LossOutput:
    """max(0, 1 − βΔ): RSO's "hinge-norm" (Liu et al. 2023), TRL ``loss_type="hinge"``.

    β defaults to 0.1, TRL's default for every loss type; the RSO paper used β = γ = 0.05.
    """
    r_c, r_r = implicit_rewards(logps, params.beta)
    return LossOutput(torch.relu(1.0 - (r_c - r_r)), reward_metrics(r_c, r_r, logps))


# ---------------------------------------------------------------------------------------------
# LN-DPO
# ---------------------------------------------------------------------------------------------


@dataclass
class LNDPOParams:
    beta: float = param(5.0, "β on the token-mean log-ratio margin (per-token scale: much larger than DPO's)")

    def __post_init__(self) -> None:
        require_beta(self.beta)


def ln_dpo_loss(logps: PairLogps, params: LNDPOParams) -> LossOutput:
    """Length-normalised DPO: −log σ(β·Δ̄), TRL ``sigmoid_norm``.

    The margin is a difference of per-token log-ratios, roughly Δ/|y|, so β must be about |y| times
    DPO's for the same pull: the default 5 matches DPO's 0.1 at ~50-token responses and is the value
    reported for Tülu 3's length-normalised DPO (not read in the Hitchhiker's Guide itself).
    Rewards are logged as β·ρ̄, the quantities the loss compares (TRL's ``sigmoid_norm`` logs β·ρ).
    """
    mean_c, mean_r = _mean_log_ratios(logps)
    r_c, r_r = params.beta * mean_c, params.beta * mean_r
    return LossOutput(-F.logsigmoid(r_c - r_r), reward_metrics(r_c, r_r, logps))


# ---------------------------------------------------------------------------------------------
# RPO
# ---------------------------------------------------------------------------------------------


@dataclass
class RPOParams:
    beta: float = param(0.01, BETA_HELP)
    eta: float = param(0.005, "η: weight of the NLL (token mean) of the chosen response")
    eta_times_beta: bool = param(False, "multiply the NLL weight by β as well (η·β instead of η)")

    def __post_init__(self) -> None:
        require_beta(self.beta)
        require_non_negative(self.eta, "eta")
        require_bool(self.eta_times_beta, "eta_times_beta")


def rpo_loss(logps: PairLogps, params: RPOParams) -> LossOutput:
    """RPO (Liu et al. 2024, "Provably Mitigating Overoptimization in RLHF"): DPO + η·NLL(yw).

    NLL(yw) = −ℓ(yw)/|yw|, the token-mean cross-entropy of the chosen response of each pair.
    Defaults are TRL's reproduction (``loss_type=["sigmoid", "sft"]``, ``loss_weights=[1, 0.005]``,
    β = 0.01). TRL averages the SFT term over all chosen tokens of the batch; here it is a per-pair
    token mean. Whether the paper's weight is η or η·β is unverified: ``eta_times_beta`` switches.
    Not TRL's ``rpo_alpha``, which belongs to Iterative Reasoning Preference Optimization.
    """
    r_c, r_r = implicit_rewards(logps, params.beta)
    nll = -logps.chosen / logps.chosen_len.clamp(min=1)
    weight = params.eta * params.beta if params.eta_times_beta else params.eta
    losses = -F.logsigmoid(r_c - r_r) + weight * nll
    metrics = reward_metrics(r_c, r_r, logps)
    metrics["rpo/nll"] = nll.detach()
    return LossOutput(losses, metrics)


# ---------------------------------------------------------------------------------------------
# DPOP
# ---------------------------------------------------------------------------------------------


@dataclass
class DPOPParams:
    beta: float = param(0.1, BETA_HELP)
    lam: float = param(50.0, "λ: penalty on the chosen log-prob falling below the reference's")

    def __post_init__(self) -> None:
        require_beta(self.beta)
        require_non_negative(self.lam, "lam")


def dpop_loss(logps: PairLogps, params: DPOPParams) -> LossOutput:
    """DPO-Positive (Smaug, Pal et al. 2024): −log σ(β(Δ − λ·max(0, ℓref(yw) − ℓ(yw)))).

    The penalty is zero while the chosen response is at least as likely as under the reference,
    so DPOP equals DPO there. Summed log-probs.
    """
    r_c, r_r = implicit_rewards(logps, params.beta)
    penalty = torch.relu(logps.ref_chosen - logps.chosen)
    losses = -F.logsigmoid(r_c - r_r - params.beta * params.lam * penalty)
    metrics = reward_metrics(r_c, r_r, logps)
    metrics["dpop/penalty"] = penalty.detach()
    return LossOutput(losses, metrics)


# ---------------------------------------------------------------------------------------------
# γ-DPO
# ---------------------------------------------------------------------------------------------


@dataclass
class GammaDPOParams:
    beta: float = param(0.1, BETA_HELP)
    gamma: float = param(1.0, "γ: weight of the reference log-ratio (1 = DPO, 0 = no reference)")

    def __post_init__(self) -> None:
        require_beta(self.beta)
        require_non_negative(self.gamma, "gamma")


def gamma_dpo_loss(logps: PairLogps, params: GammaDPOParams) -> LossOutput:
    """γ-DPO (Chen et al. 2024, "Preference Learning Algorithms Do Not Learn Preference Rankings"):
    −log σ(β[(ℓ(yw) − ℓ(yl)) − γ(ℓref(yw) − ℓref(yl))]). γ = 1 is DPO; the paper gives no default,
    so the default is 1 and γ is meant to be set. Rewards are logged as β(ℓ − γ·ℓref)."""
    r_c = params.beta * (logps.chosen - params.gamma * logps.ref_chosen)
    r_r = params.beta * (logps.rejected - params.gamma * logps.ref_rejected)
    return LossOutput(-F.logsigmoid(r_c - r_r), reward_metrics(r_c, r_r, logps))


# ---------------------------------------------------------------------------------------------
# f-DPO
# ---------------------------------------------------------------------------------------------


def _exp_clamped(x: torch.Tensor) -> torch.Tensor:
    """e^x with x clamped to ≤ 80 (≤ 11 in float16) so the value stays finite, as TRL does."""
    return torch.exp(x.clamp(max=11.0 if x.dtype == torch.float16 else 80.0))


def _f_dpo_output(score_c: torch.Tensor, score_r: torch.Tensor, logps: PairLogps, beta: float) -> LossOutput:
    """−log σ(β(s_c − s_r)); rewards are logged as β·s, the scores compared (TRL logs β·ρ for every divergence)."""
    r_c, r_r = beta * score_c, beta * score_r
    return LossOutput(-F.logsigmoid(r_c - r_r), reward_metrics(r_c, r_r, logps))


def f_dpo_reverse_kl_loss(logps: PairLogps, params: DPOParams) -> LossOutput:
    """f-DPO, reverse KL: score s(ρ) = ρ, which is DPO."""
    return _f_dpo_output(*_log_ratios(logps), logps, params.beta)


def f_dpo_forward_kl_loss(logps: PairLogps, params: DPOParams) -> LossOutput:
    """f-DPO, forward KL: f′(u) = 1 − 1/u, score s(ρ) = −e^{−ρ} (constant dropped; TRL keeps 1 − e^{−ρ}).

    The exponent −ρ is clamped to ≤ 80, as for the α-divergence, so a very unlikely response gives a
    finite score (TRL leaves this one unclamped).
    """
    rho_c, rho_r = _log_ratios(logps)
    return _f_dpo_output(-_exp_clamped(-rho_c), -_exp_clamped(-rho_r), logps, params.beta)


def f_dpo_js_loss(logps: PairLogps, params: DPOParams) -> LossOutput:
    """f-DPO, Jensen-Shannon: f′(u) = log(2u/(1 + u)), score s(ρ) = log σ(ρ) (log 2 dropped)."""
    rho_c, rho_r = _log_ratios(logps)
    return _f_dpo_output(F.logsigmoid(rho_c), F.logsigmoid(rho_r), logps, params.beta)


@dataclass
class FDPOAlphaParams:
    beta: float = param(0.1, BETA_HELP)
    alpha: float = param(0.5, "α in (0, 1): the α-divergence's exponent (→ 0: reverse KL; → 1: forward KL)")

    def __post_init__(self) -> None:
        require_beta(self.beta)
        require(math.isfinite(self.alpha) and 0 < self.alpha < 1, "alpha",
                f"must be strictly between 0 and 1, got {self.alpha}")


def f_dpo_alpha_loss(logps: PairLogps, params: FDPOAlphaParams) -> LossOutput:
    """f-DPO, α-divergence (paper form f′(u) = (1 − u^{−α})/α): score s(ρ) = (1 − e^{−αρ})/α.

    α → 0 gives ρ (reverse KL, DPO); α → 1 gives 1 − e^{−ρ} (forward KL). TRL writes the same score
    with a = 1 − α (``f_alpha_divergence_coef``, default 0.5, the same as this α's default). The
    exponent −αρ is clamped to ≤ 80 (≤ 11 in float16), as TRL does.
    """
    rho_c, rho_r = _log_ratios(logps)
    a = params.alpha
    score_c = (1.0 - _exp_clamped(-a * rho_c)) / a
    score_r = (1.0 - _exp_clamped(-a * rho_r)) / a
    return _f_dpo_output(score_c, score_r, logps, params.beta)


# ---------------------------------------------------------------------------------------------
# LD-DPO
# ---------------------------------------------------------------------------------------------


@dataclass
class LDDPOParams:
    beta: float = param(0.1, BETA_HELP)
    alpha: float = param(0.5, "α in [0, 1]: weight of the tokens past the shorter response's end (1 = DPO)")
    desensitize_reference: bool = param(True, "down-weight the reference's tokens past l_p as the policy's (true: "
                                              "TRL >= 0.29's ld_alpha, policy = reference gives log 2) or only the "
                                              "policy's (false: TRL 0.18-0.28's ld_alpha)")

    def __post_init__(self) -> None:
        require_beta(self.beta)
        require_fraction(self.alpha, "alpha")
        require_bool(self.desensitize_reference, "desensitize_reference")


def _desensitized(tokens: torch.Tensor, shared: torch.Tensor, alpha: float) -> torch.Tensor:
    """Σ_{t<shared} tokens_t + α·Σ_{t≥shared} tokens_t per row; tokens (B, L), shared (B,)."""
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    in_prefix = positions.unsqueeze(0) < shared.unsqueeze(1)
    prefix = (tokens * in_prefix).sum(dim=1)
    return prefix + alpha * (tokens.sum(dim=1) - prefix)


def ld_dpo_loss(logps: PairLogps, params: LDDPOParams) -> LossOutput:
    """LD-DPO (Liu et al. 2024, "Length Desensitization in Direct Preference Optimization").

    With l_p = min(|yw|, |yl|), the length the two responses share (the "public" part), each
    response's log-prob becomes ℓ' = Σ_{t≤l_p} ℓ_t + α·Σ_{t>l_p} ℓ_t: the tokens past l_p (the
    "verbose" part; only the longer response of a pair has any) count α times. DPO is applied to
    ℓ'. α = 1 is DPO. ``desensitize_reference`` says whose log-probs are rewritten:

    - true (default): the policy's and the reference's alike, ρ' = ℓ' − ℓ'ref. This is TRL's
      ``ld_alpha`` from TRL 0.29 on (TRL 1.16 checked: its reference forward splits the per-token
      log-probs at the same l_p and weights the tail by the same α). Policy = reference gives
      ρ' = 0 for both responses and the loss log 2, as for DPO.
    - false: the policy's only, ρ' = ℓ' − ℓref with the reference summed over all its tokens. This
      is TRL's ``ld_alpha`` in TRL 0.18 to 0.28, where the reference forward skipped the weighting.
      At policy = reference the longer response gets ρ' = −(1 − α)·Σ_{t>l_p} ℓ_t ≥ 0, a reward for
      its extra length before any training, so the loss is not log 2.

    Which of the two the paper means was not verified in the authors' code. The paper tunes α per
    model; the default 0.5 is a middle value, not a number read in the paper.
    Rewards are logged from ρ' (as TRL); ``logps/*`` are the plain sums (TRL logs ℓ' there).
    Needs "tokens": the (B, L) per-token fields (the reference's too when ``desensitize_reference``).
    """
    fields = (logps.chosen_tokens, logps.rejected_tokens, logps.ref_chosen_tokens, logps.ref_rejected_tokens)
    if any(t is None for t in fields[:2]) or (params.desensitize_reference and any(t is None for t in fields[2:])):
        raise ValueError("ld-dpo needs per-token log-probs for policy and reference (needs 'tokens')")
    shared = torch.minimum(logps.chosen_len, logps.rejected_len)
    chosen, rejected = (_desensitized(t, shared, params.alpha) for t in fields[:2])
    if params.desensitize_reference:
        ref_chosen, ref_rejected = (_desensitized(t, shared, params.alpha) for t in fields[2:])
    else:
        ref_chosen, ref_rejected = logps.ref_chosen, logps.ref_rejected
    r_c = params.beta * (chosen - ref_chosen)
    r_r = params.beta * (rejected - ref_rejected)
    return LossOutput(-F.logsigmoid(r_c - r_r), reward_metrics(r_c, r_r, logps))


# ---------------------------------------------------------------------------------------------
# WPO
# ---------------------------------------------------------------------------------------------


@dataclass
class WPOParams:
    beta: float = param(0.1, BETA_HELP)
    clamp_weight: bool = param(True, "cap each pair's weight at 1 (TRL up to 0.28 did; 0.29 and later do not)")

    def __post_init__(self) -> None:
        require_beta(self.beta)
        require_bool(self.clamp_weight, "clamp_weight")


def wpo_loss(logps: PairLogps, params: WPOParams) -> LossOutput:
    """WPO (Zhou et al. 2024, "Weighted Preference Optimization"): the DPO loss of each pair times a
    detached weight w = exp(m(yw) + m(yl)), with m(y) = (ℓ(y) − Σ_t log Σ_v π(v)²)/|y| the token mean
    of the "aligned" log-probs (Eq. 2; ``*_sqmass`` holds Σ_t log Σ_v π(v)²).

    TRL's ``use_weighting`` computes the same m(y); TRL up to 0.28 then took min(1, e^{m(yw)+m(yl)}),
    TRL 0.29 and later (1.16 checked) multiply e^{m(yw)}·e^{m(yl)} with no cap. ``clamp_weight``
    (default on) chooses; false is TRL 1.16's form.
    Needs "sqmass".
    """
    if logps.chosen_sqmass is None or logps.rejected_sqmass is None:
        raise ValueError("wpo needs Σ_t log Σ_v π(v)² per response (needs 'sqmass')")
    with torch.no_grad():
        m_c = (logps.chosen - logps.chosen_sqmass) / logps.chosen_len.clamp(min=1)
        m_r = (logps.rejected - logps.rejected_sqmass) / logps.rejected_len.clamp(min=1)
        weight = torch.exp(m_c + m_r)
        if params.clamp_weight:
            weight = weight.clamp(max=1.0)
    r_c, r_r = implicit_rewards(logps, params.beta)
    metrics = reward_metrics(r_c, r_r, logps)
    metrics["wpo/weight"] = weight
    return LossOutput(weight * -F.logsigmoid(r_c - r_r), metrics)


# ---------------------------------------------------------------------------------------------
# BVPO
# ---------------------------------------------------------------------------------------------


@dataclass
class BVPOParams:
    beta: float = param(0.1, BETA_HELP)
    alpha: float = param(0.5, "α in [0, 1]: weight of the trace pairs' mean loss (1 − α: empty-trace pairs)")

    def __post_init__(self) -> None:
        require_beta(self.beta)
        require_fraction(self.alpha, "alpha")


def bvpo_loss(logps: PairLogps, params: BVPOParams) -> LossOutput:
    """BVPO (§1.14, "From Noisy Traces to Stable Gradients"): α·L_DPO(trace) + (1 − α)·L_DPO(empty).

    The loop averages the per-pair losses over all pairs. To make that average the α-mixture of the
    two sets' means, each pair's DPO loss is scaled by α/f (trace pair, ``group`` = 1) or
    (1 − α)/(1 − f) (empty-trace pair, ``group`` = 0), where f = ``state["trace_fraction"]`` is the
    fraction of trace pairs in the training set, set by the training loop (0.5 if absent). Over an
    epoch: mean = f·(α/f)·mean_trace + (1 − f)·((1 − α)/(1 − f))·mean_empty. The paper's closed-form
    α is not implemented; α is a hyperparameter. Needs "group".
    """
    if logps.group is None:
        raise ValueError("bvpo needs the pair set of each pair (needs 'group')")
    group = logps.group
    if not bool(((group == 0) | (group == 1)).all()):
        raise ValueError("bvpo: group must be 1 (trace pair) or 0 (empty-trace pair)")
    f = float(logps.state.get("trace_fraction", 0.5))
    if not (math.isfinite(f) and 0 < f < 1):
        raise ValueError(f"bvpo: state['trace_fraction'] must be strictly between 0 and 1, got {f}")
    trace = torch.full_like(logps.chosen, params.alpha / f).detach()
    empty = torch.full_like(logps.chosen, (1.0 - params.alpha) / (1.0 - f)).detach()
    weight = torch.where(group == 1, trace, empty)
    r_c, r_r = implicit_rewards(logps, params.beta)
    metrics = reward_metrics(r_c, r_r, logps)
    metrics["bvpo/weight"] = weight
    return LossOutput(weight * -F.logsigmoid(r_c - r_r), metrics)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

IPO_SPEC = register(LossSpec(
    name="ipo", fn=ipo_loss, shape="pair", params=IPOParams, needs_reference=True, reduction="mean",
    paper="Azar et al. 2023, A General Theoretical Paradigm to Understand Learning from Human Preferences",
    summary="(Δ̄ − 1/(2τ))², Δ̄ = token-mean log-ratio of chosen minus rejected, τ = beta",
))
register(LossSpec(
    name="hinge", fn=hinge_loss, shape="pair", params=DPOParams, needs_reference=True,
    paper="Liu et al. 2023, Statistical Rejection Sampling Improves Preference Optimization (hinge-norm)",
    summary="max(0, 1 − β·(ρ_chosen − ρ_rejected))",
))
register(LossSpec(
    name="ln-dpo", fn=ln_dpo_loss, shape="pair", params=LNDPOParams, needs_reference=True, reduction="mean",
    paper="Ahrabian et al. 2024, The Hitchhiker's Guide to Human Alignment with *PO",
    summary="−log σ(β·(ρ̄_chosen − ρ̄_rejected)), ρ̄ = token-mean log-ratio",
))
register(LossSpec(
    name="rpo", fn=rpo_loss, shape="pair", params=RPOParams, needs_reference=True, reduction="sum+mean",
    paper="Liu et al. 2024, Provably Mitigating Overoptimization in RLHF: Your SFT Loss is Implicitly an "
          "Adversarial Regularizer",
    summary="−log σ(βΔ) + η·NLL(chosen), NLL = token-mean negative log-likelihood",
))
register(LossSpec(
    name="dpop", fn=dpop_loss, shape="pair", params=DPOPParams, needs_reference=True,
    paper="Pal et al. 2024, Smaug: Fixing Failure Modes of Preference Optimisation with DPO-Positive",
    summary="−log σ(β(Δ − λ·max(0, ℓref(chosen) − ℓ(chosen))))",
))
register(LossSpec(
    name="gamma-dpo", fn=gamma_dpo_loss, shape="pair", params=GammaDPOParams, needs_reference=True,
    paper="Chen et al. 2024, Preference Learning Algorithms Do Not Learn Preference Rankings",
    summary="−log σ(β[(ℓ(chosen) − ℓ(rejected)) − γ(ℓref(chosen) − ℓref(rejected))])",
))
_F_DPO_PAPER = ("Wang et al. 2023, Beyond Reverse KL: Generalizing Direct Preference Optimization with "
                "Diverse Divergence Constraints")
register(LossSpec(
    name="f-dpo-reverse-kl", fn=f_dpo_reverse_kl_loss, shape="pair", params=DPOParams, needs_reference=True,
    paper=_F_DPO_PAPER, summary="−log σ(β(ρ_chosen − ρ_rejected)): reverse KL, the same as DPO",
))
register(LossSpec(
    name="f-dpo-forward-kl", fn=f_dpo_forward_kl_loss, shape="pair", params=DPOParams, needs_reference=True,
    paper=_F_DPO_PAPER, summary="−log σ(β(e^{−ρ_rejected} − e^{−ρ_chosen})): forward KL",
))
register(LossSpec(
    name="f-dpo-js", fn=f_dpo_js_loss, shape="pair", params=DPOParams, needs_reference=True,
    paper=_F_DPO_PAPER, summary="−log σ(β(log σ(ρ_chosen) − log σ(ρ_rejected))): Jensen-Shannon",
))
register(LossSpec(
    name="f-dpo-alpha", fn=f_dpo_alpha_loss, shape="pair", params=FDPOAlphaParams, needs_reference=True,
    paper=_F_DPO_PAPER, summary="−log σ(β(s(ρ_chosen) − s(ρ_rejected))), s(ρ) = (1 − e^{−αρ})/α",
))
register(LossSpec(
    name="ld-dpo", fn=ld_dpo_loss, shape="pair", params=LDDPOParams, needs_reference=True,
    needs=frozenset({"tokens"}),
    paper="Liu et al. 2024, Length Desensitization in Direct Preference Optimization",
    summary="DPO on ℓ' = Σ_{t≤l_p} ℓ_t + α·Σ_{t>l_p} ℓ_t, l_p = min(|chosen|, |rejected|)",
))
register(LossSpec(
    name="wpo", fn=wpo_loss, shape="pair", params=WPOParams, needs_reference=True, reduction="sum+mean",
    needs=frozenset({"sqmass"}),
    paper="Zhou et al. 2024, WPO: Enhancing RLHF with Weighted Preference Optimization",
    summary="w·(−log σ(βΔ)), w = min(1, exp(m(chosen) + m(rejected))), m = mean_t log π(y_t)/Σ_v π(v)²",
))
register(LossSpec(
    name="bvpo", fn=bvpo_loss, shape="pair", params=BVPOParams, needs_reference=True,
    needs=frozenset({"group"}),
    paper="From Noisy Traces to Stable Gradients: Bias-Variance Optimized Preference Optimization for "
          "Aligning Large Reasoning Models",
    summary="α·mean DPO(trace pairs) + (1 − α)·mean DPO(empty-trace pairs), by weights α/f and (1−α)/(1−f)",
))
register(LossSpec(
    name="dove", fn=dpo_loss, shape="joint", params=DPOParams, needs_reference=True,
    paper="Bansal et al. 2024, Comparing Bad Apples to Good Oranges: Aligning Large Language Models via "
          "Joint Preference Optimization",
    summary="−log σ(β(ρ(chosen|x_chosen) − ρ(rejected|x_rejected))): DPO on pairs whose prompts may differ",
))
