"""Pairwise preference losses with a reference model, beyond DPO: EXO, NCA, BCO-pair, SPPO-hard,
AOT (paired and unpaired), APO-zero/down and DiscoPOP.

Every loss takes a ``PairLogps`` of B pairs (log-probs summed over response tokens, policy and
reference) and returns a (B,) per-example loss. Notation, per pair (all (B,)):

    ρ_w = ℓθ(y_w) − ℓref(y_w),  ρ_l = ℓθ(y_l) − ℓref(y_l),  r = β·ρ (implicit reward),
    h = β·(ρ_w − ρ_l) (the DPO margin),  σ = sigmoid.

Formulas (checked against the ``loss_type`` branches of Hugging Face TRL's ``dpo_trainer.py``, and
run beside TRL 1.16's code by tests/losses/test_trl_parity.py; constants that do not change
gradients are kept as TRL has them):

- ``exo`` — Ji et al. 2024, "Towards Efficient Exact Optimization of Language Model Alignment"
  (EXO-pref, eq. 16; TRL ``exo_pair``). With q = σ(h), the reverse KL from the model's pair
  distribution (q, 1 − q) to the smoothed label distribution (1 − ε, ε):
  ``L = q·(log q − log(1 − ε)) + (1 − q)·(log(1 − q) − log ε)``, ε = 1e-3.
- ``nca`` — Chen et al. 2024, "Noise Contrastive Alignment of Language Models with Explicit
  Rewards" (TRL ``nca_pair``): ``L = −log σ(r_w) − ½·log σ(−r_w) − ½·log σ(−r_l)``.
- ``bco-pair`` — Jung et al. 2024, "Binary Classifier Optimization for Large Language Model
  Alignment" (TRL ``bco_pair``): ``L = −log σ(r_w − δ) − log σ(−(r_l − δ))``, δ the reward shift.
- ``sppo-hard`` — Wu et al. 2024, "Self-Play Preference Optimization for Language Model Alignment"
  (eq. 4.7 with hard probabilities P(y_w ≻ π) = 1, P(y_l ≻ π) = 0 and η = 1/β; TRL ``sppo_hard``):
  ``L = (ρ_w − 1/(2β))² + (ρ_l + 1/(2β))²``.
- ``aot`` / ``aot-unpaired`` — Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via
  Optimal Transport" (TRL ``aot`` / ``aot_unpaired``). The batch is treated as a sample of a
  distribution and sorted: ``aot`` compares the sorted policy log-ratios ℓθ(y_w) − ℓθ(y_l) with the
  sorted reference log-ratios; ``aot-unpaired`` compares the sorted ρ_w with the sorted ρ_l. With
  d_(i) the difference of the i-th smallest values: ``L_i = −(1 − ε)·log σ(β·d_(i)) − ε·log σ(−β·d_(i))``.
- ``apo-zero`` / ``apo-down`` — D'Oosterlinck et al. 2024, "Anchored Preference Optimization and
  Contrastive Revisions" (eqs. 7 and 8; TRL ``apo_zero`` / ``apo_down``):
  zero: ``L = 1 − σ(r_w) + σ(r_l)``; down: ``L = σ(r_w) + 1 − σ(r_w − r_l)``.
- ``discopop`` — Lu et al. 2024, "Discovering Preference Optimization Algorithms with and for Large
  Language Models" (log-ratio modulated loss, eq. 5; TRL ``discopop``): with m = σ(h/τ),
  ``L = (1 − m)·(−log σ(h)) + m·e^{−h}``, τ = 0.05.

Batch dependence: ``aot`` and ``aot-unpaired`` depend on the whole micro-batch through the sort, so
(unlike every other loss here) they are not invariant to how an optimizer step is split into
micro-batches or processes; the i-th loss belongs to the i-th quantile, not to pair i. A larger
micro-batch gives a finer quantile match; with one pair per micro-batch both reduce to DPO.

Reward shift of ``bco-pair``: the BCO paper subtracts δ, a running mean of all rewards seen in
training. TRL's ``bco_pair`` did so up to 0.28 (it folded the current batch's mean into a running
mean of batch means before the loss); from 0.29 on (1.16 checked) it has no δ. Here δ is
loss state: each call reports the sum and count of its 2B rewards (``stats``), the loop adds them
over the step, and ``update_state`` folds the totals into the running mean, so the δ used in a step
is the mean of every reward of the previous steps (weighted per reward, not per batch). At step 0
the policy is the reference, all rewards are 0 and δ = 0 is exact. ``reward_shift=False`` gives
TRL 1.16's form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from alignlab.losses.dpo import implicit_rewards, reward_metrics
from alignlab.losses.logistic import smoothed_logistic
from alignlab.losses.params import (
    param,
    require,
    require_below_half,
    require_beta,
    require_bool,
    require_positive,
)
from alignlab.losses.registry import LossSpec, register
from alignlab.losses.types import LossOutput, PairLogps


# ---------------------------------------------------------------------------------------------- EXO
@dataclass
class EXOParams:
    beta: float = param(0.1, "β: scale of the log-ratio margin (TRL default; the EXO paper's β_r is 0.1)")
    epsilon: float = param(1e-3, "ε: probability the smoothed label puts on the rejected response "
                                 "(TRL's recommended EXO value)")

    def __post_init__(self) -> None:
        require_beta(self.beta)
        require(math.isfinite(self.epsilon) and 0.0 < self.epsilon < 0.5, "epsilon",
                f"must be in (0, 0.5) (log ε appears in the loss), got {self.epsilon}")


def exo_loss(logps: PairLogps, params: EXOParams) -> LossOutput:
    """EXO-pref: KL((σ(h), σ(−h)) ‖ (1 − ε, ε)). (B,) per pair; its minimum 0 is at σ(h) = 1 − ε."""
    r_chosen, r_rejected = implicit_rewards(logps, params.beta)
    h = r_chosen - r_rejected
    eps = params.epsilon
    losses = (torch.sigmoid(h) * (F.logsigmoid(h) - math.log1p(-eps))
              + torch.sigmoid(-h) * (F.logsigmoid(-h) - math.log(eps)))
    return LossOutput(losses, reward_metrics(r_chosen, r_rejected, logps))


# ---------------------------------------------------------------------------------------------- NCA
@dataclass
class NCAParams:
    beta: float = param(0.1, "β: reward scale r = β·ρ (TRL default; the NCA paper's reproduction uses 0.01)")

    def __post_init__(self) -> None:
        require_beta(self.beta)


def nca_loss(logps: PairLogps, params: NCAParams) -> LossOutput:
    """NCA for pairs: −log σ(r_w) − ½ log σ(−r_w) − ½ log σ(−r_l). (B,) per pair."""
    r_chosen, r_rejected = implicit_rewards(logps, params.beta)
    losses = -F.logsigmoid(r_chosen) - 0.5 * F.logsigmoid(-r_chosen) - 0.5 * F.logsigmoid(-r_rejected)
    return LossOutput(losses, reward_metrics(r_chosen, r_rejected, logps))


# ----------------------------------------------------------------------------------------- BCO-pair
@dataclass
class BCOPairParams:
    beta: float = param(0.1, "β: reward scale r = β·ρ (TRL default; the BCO paper's reproduction uses 0.01)")
    reward_shift: bool = param(True, "subtract δ, the running mean of all rewards of previous steps "
                                     "(BCO paper; TRL >= 0.29 has no shift: set false to match it)")

    def __post_init__(self) -> None:
        require_beta(self.beta)
        require_bool(self.reward_shift, "reward_shift")


def bco_pair_init_state(params: BCOPairParams) -> dict[str, float]:
    return {"delta": 0.0, "count": 0.0}


def bco_pair_update_state(state: dict[str, float], stats: dict, params: BCOPairParams) -> dict[str, float]:
    """Fold one step's reward totals into the running mean δ (an exact mean over all rewards so far)."""
    n = float(stats["reward_count"])
    if n <= 0:
        return dict(state)
    count = float(state.get("count", 0.0)) + n
    delta = float(state.get("delta", 0.0))
    delta += (float(stats["reward_sum"]) - n * delta) / count
    return {"delta": delta, "count": count}


def bco_pair_loss(logps: PairLogps, params: BCOPairParams) -> LossOutput:
    """−log σ(r_w − δ) − log σ(−(r_l − δ)), (B,) per pair; δ = state["delta"] (a constant) or 0.

    ``stats``: reward_sum (Σ of the 2B rewards r_w and r_l, detached) and reward_count (2B).
    """
    r_chosen, r_rejected = implicit_rewards(logps, params.beta)
    delta = float(logps.state.get("delta", 0.0)) if params.reward_shift else 0.0
    losses = -F.logsigmoid(r_chosen - delta) - F.logsigmoid(-(r_rejected - delta))
    metrics = reward_metrics(r_chosen, r_rejected, logps)
    metrics["bco/delta"] = torch.full_like(losses, delta).detach()
    stats = {
        "reward_sum": (r_chosen + r_rejected).detach().sum(),
        "reward_count": torch.tensor(2.0 * losses.numel(), dtype=losses.dtype, device=losses.device),
    }
    return LossOutput(losses, metrics, stats)


# ---------------------------------------------------------------------------------------- SPPO-hard
@dataclass
class SPPOParams:
    beta: float = param(0.1, "β = 1/η (TRL default): the chosen log-ratio is pulled to +1/(2β), "
                             "the rejected one to −1/(2β)")

    def __post_init__(self) -> None:
        require_beta(self.beta)


def sppo_hard_loss(logps: PairLogps, params: SPPOParams) -> LossOutput:
    """(ρ_w − 1/(2β))² + (ρ_l + 1/(2β))², (B,) per pair. Metrics use the rewards β·ρ."""
    r_chosen, r_rejected = implicit_rewards(logps, params.beta)
    target = 0.5 / params.beta
    rho_w = logps.chosen - logps.ref_chosen
    rho_l = logps.rejected - logps.ref_rejected
    losses = (rho_w - target) ** 2 + (rho_l + target) ** 2
    return LossOutput(losses, reward_metrics(r_chosen, r_rejected, logps))


# ---------------------------------------------------------------------------------------------- AOT
@dataclass
class AOTParams:
    beta: float = param(0.1, "β: scale of the quantile margins (TRL default; the paper adds no other)")
    label_smoothing: float = param(0.0, "ε: weight of the flipped logistic term, in [0, 0.5)")

    def __post_init__(self) -> None:
        require_beta(self.beta)
        require_below_half(self.label_smoothing, "label_smoothing")


def aot_loss(logps: PairLogps, params: AOTParams) -> LossOutput:
    """AOT, paired: sort the policy log-ratios ℓθ(y_w) − ℓθ(y_l) and the reference ones separately
    over the batch, d_(i) = i-th smallest policy − i-th smallest reference, loss_i = smoothed −log σ(β·d_(i)).

    Depends on the whole micro-batch (see the module docstring); losses[i] is the i-th quantile's loss.
    """
    r_chosen, r_rejected = implicit_rewards(logps, params.beta)
    policy_sorted, _ = torch.sort(logps.chosen - logps.rejected, dim=0)
    ref_sorted, _ = torch.sort(logps.ref_chosen - logps.ref_rejected, dim=0)
    losses = smoothed_logistic(params.beta * (policy_sorted - ref_sorted), params.label_smoothing)
    return LossOutput(losses, reward_metrics(r_chosen, r_rejected, logps))


def aot_unpaired_loss(logps: PairLogps, params: AOTParams) -> LossOutput:
    """AOT, unpaired: sort ρ_w and ρ_l separately over the batch, d_(i) = i-th smallest ρ_w − i-th
    smallest ρ_l, loss_i = smoothed −log σ(β·d_(i)): the distribution of chosen log-ratios should
    dominate that of rejected ones. Depends on the whole micro-batch (see the module docstring).
    """
    r_chosen, r_rejected = implicit_rewards(logps, params.beta)
    chosen_sorted, _ = torch.sort(logps.chosen - logps.ref_chosen, dim=0)
    rejected_sorted, _ = torch.sort(logps.rejected - logps.ref_rejected, dim=0)
    losses = smoothed_logistic(params.beta * (chosen_sorted - rejected_sorted), params.label_smoothing)
    return LossOutput(losses, reward_metrics(r_chosen, r_rejected, logps))


# ---------------------------------------------------------------------------------------------- APO
@dataclass
class APOParams:
    beta: float = param(0.1, "β: reward scale r = β·ρ (the APO paper's value)")

    def __post_init__(self) -> None:
        require_beta(self.beta)


def apo_zero_loss(logps: PairLogps, params: APOParams) -> LossOutput:
    """APO-zero: 1 − σ(r_w) + σ(r_l), (B,). Raises the chosen likelihood and lowers the rejected
    one, each anchored at the reference; use when the chosen answers beat the model's own."""
    r_chosen, r_rejected = implicit_rewards(logps, params.beta)
    losses = 1.0 - torch.sigmoid(r_chosen) + torch.sigmoid(r_rejected)
    return LossOutput(losses, reward_metrics(r_chosen, r_rejected, logps))


def apo_down_loss(logps: PairLogps, params: APOParams) -> LossOutput:
    """APO-down: σ(r_w) + 1 − σ(r_w − r_l), (B,). Lowers both likelihoods, the rejected one more;
    use when the model already beats the chosen answers."""
    r_chosen, r_rejected = implicit_rewards(logps, params.beta)
    losses = torch.sigmoid(r_chosen) + 1.0 - torch.sigmoid(r_chosen - r_rejected)
    return LossOutput(losses, reward_metrics(r_chosen, r_rejected, logps))


# ----------------------------------------------------------------------------------------- DiscoPOP
@dataclass
class DiscoPOPParams:
    beta: float = param(0.1, "β: scale of the margin h = β·(ρ_w − ρ_l) (TRL default; the paper uses 0.05)")
    tau: float = param(0.05, "τ: temperature of the mixing weight σ(h/τ) (the paper's value)")

    def __post_init__(self) -> None:
        require_beta(self.beta)
        require_positive(self.tau, "tau")


def discopop_loss(logps: PairLogps, params: DiscoPOPParams) -> LossOutput:
    """Log-ratio modulated loss: (1 − σ(h/τ))·(−log σ(h)) + σ(h/τ)·e^{−h}, (B,) per pair.

    e^{−h} overflows for h below about −709 (float64) or −88 (float32), where (for τ near its
    default) its weight σ(h/τ) has long underflowed to 0; the exponent is clamped just below the
    overflow so that 0·∞ cannot produce NaN.
    """
    r_chosen, r_rejected = implicit_rewards(logps, params.beta)
    h = r_chosen - r_rejected
    mix = torch.sigmoid(h / params.tau)
    max_exp = math.log(torch.finfo(h.dtype).max) - 1.0
    losses = (1.0 - mix) * -F.logsigmoid(h) + mix * torch.exp((-h).clamp(max=max_exp))
    return LossOutput(losses, reward_metrics(r_chosen, r_rejected, logps))


register(LossSpec(
    name="exo", fn=exo_loss, shape="pair", params=EXOParams, needs_reference=True,
    paper="Ji et al. 2024, Towards Efficient Exact Optimization of Language Model Alignment",
    summary="σ(h)(log σ(h) − log(1−ε)) + σ(−h)(log σ(−h) − log ε), h = β(ρ_w − ρ_l)",
))
register(LossSpec(
    name="nca", fn=nca_loss, shape="pair", params=NCAParams, needs_reference=True,
    paper="Chen et al. 2024, Noise Contrastive Alignment of Language Models with Explicit Rewards",
    summary="−log σ(βρ_w) − ½ log σ(−βρ_w) − ½ log σ(−βρ_l)",
))
register(LossSpec(
    name="bco-pair", fn=bco_pair_loss, shape="pair", params=BCOPairParams, needs_reference=True,
    paper="Jung et al. 2024, Binary Classifier Optimization for Large Language Model Alignment",
    summary="−log σ(βρ_w − δ) − log σ(−(βρ_l − δ)), δ = running mean of past rewards",
    init_state=bco_pair_init_state, update_state=bco_pair_update_state,
))
register(LossSpec(
    name="sppo-hard", fn=sppo_hard_loss, shape="pair", params=SPPOParams, needs_reference=True,
    paper="Wu et al. 2024, Self-Play Preference Optimization for Language Model Alignment",
    summary="(ρ_w − 1/(2β))² + (ρ_l + 1/(2β))²",
))
register(LossSpec(
    name="aot", fn=aot_loss, shape="pair", params=AOTParams, needs_reference=True,
    paper="Melnyk et al. 2024, Distributional Preference Alignment of LLMs via Optimal Transport",
    summary="−log σ(β·(sorted policy log-ratios − sorted reference log-ratios)), over the micro-batch",
))
register(LossSpec(
    name="aot-unpaired", fn=aot_unpaired_loss, shape="pair", params=AOTParams, needs_reference=True,
    paper="Melnyk et al. 2024, Distributional Preference Alignment of LLMs via Optimal Transport",
    summary="−log σ(β·(sorted ρ_w − sorted ρ_l)), over the micro-batch",
))
register(LossSpec(
    name="apo-zero", fn=apo_zero_loss, shape="pair", params=APOParams, needs_reference=True,
    paper="D'Oosterlinck et al. 2024, Anchored Preference Optimization and Contrastive Revisions",
    summary="1 − σ(βρ_w) + σ(βρ_l)",
))
register(LossSpec(
    name="apo-down", fn=apo_down_loss, shape="pair", params=APOParams, needs_reference=True,
    paper="D'Oosterlinck et al. 2024, Anchored Preference Optimization and Contrastive Revisions",
    summary="σ(βρ_w) + 1 − σ(β(ρ_w − ρ_l))",
))
register(LossSpec(
    name="discopop", fn=discopop_loss, shape="pair", params=DiscoPOPParams, needs_reference=True,
    paper="Lu et al. 2024, Discovering Preference Optimization Algorithms with and for Large Language Models",
    summary="(1 − σ(h/τ))·(−log σ(h)) + σ(h/τ)·e^{−h}, h = β(ρ_w − ρ_l)",
))
