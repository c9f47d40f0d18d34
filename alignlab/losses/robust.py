"""Pairwise losses for noisy or soft preference labels.

Notation as in ALGORITHMS.md §0: ρ(y) = log πθ(y|x) − log πref(y|x) summed over response tokens,
h = β(ρ(yw) − ρ(yl)), σ the sigmoid. Inputs are ``PairLogps`` of B pairs, each field (B,); every
loss returns (B,) per-pair losses and (B,) detached metrics.

- cdpo (conservative DPO, label smoothing ε): −(1 − ε)·log σ(h) − ε·log σ(−h).
- rdpo (Chowdhury et al. 2024, flip rate ε known): [−(1 − ε)·log σ(h) + ε·log σ(−h)] / (1 − 2ε).
  Unbiased: (1 − ε)·L(h) + ε·L(−h) = −log σ(h), the clean DPO loss. It can be negative.
- soft-preference (OSP's soft-preference cross-entropy, strength p per pair):
  −[p·log σ(h) + (1 − p)·log σ(−h)]. p = 1 is DPO; a constant p = 1 − ε is cDPO.
- lcpo (latent collective preference optimisation; a reconstruction, ALGORITHMS.md §1.12 [U]): EM
  over "is this label right", around any pairwise loss ℓ. ``lcpo_spec(base, name)`` builds it:
    P_i = e^{−ℓ(h_i)} / (e^{−ℓ(h_i)} + e^{−ℓ(−h_i)}) = σ(ℓ(−h_i) − ℓ(h_i)), ℓ(−h) = the base loss on
          ``inputs.swapped()`` (σ(h) for DPO);
    E-step: w_i = (1 − ε)P_i / ((1 − ε)P_i + ε(1 − P_i)) = σ(ℓ(−h_i) − ℓ(h_i) + log((1 − ε)/ε)), detached;
    M-step: loss_i = w_i·ℓ(h_i) + (1 − w_i)·ℓ(−h_i), and after each optimizer step
            ε ← clamp(Σ(1 − w_i) / Σ 1, noise_min, noise_max) (the mean posterior of "label wrong").
  ε lives in the loss state: ``inputs.state["noise"]`` (a float), started at ``noise_init``. The
  update schedule (once per optimizer step, over that step's pairs) and the ε start are assumptions.
  Registered as "lcpo" (around DPO) and "lcpo-ipo" (around IPO).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from alignlab.losses.dpo import DPOParams, dpo_loss, implicit_rewards, reward_metrics
from alignlab.losses.dpo_family import IPO_SPEC
from alignlab.losses.logistic import smoothed_logistic
from alignlab.losses.params import BETA_HELP, param, require, require_below_half, require_beta
from alignlab.losses.registry import LossSpec, register
from alignlab.losses.types import LossOutput, PairLogps


def _require_flip_rate(epsilon: float) -> None:
    require(math.isfinite(epsilon) and 0 <= epsilon < 0.5, "epsilon",
            f"must be in [0, 0.5) (a label flip rate below one half), got {epsilon}")


# ---------------------------------------------------------------------------------------------
# cDPO and rDPO
# ---------------------------------------------------------------------------------------------


@dataclass
class CDPOParams:
    beta: float = param(0.1, BETA_HELP)
    epsilon: float = param(0.1, "ε in [0, 0.5): label smoothing, the assumed chance that a label is flipped")

    def __post_init__(self) -> None:
        require_beta(self.beta)
        _require_flip_rate(self.epsilon)


def cdpo_loss(logps: PairLogps, params: CDPOParams) -> LossOutput:
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences"):
    −(1 − ε)·log σ(h) − ε·log σ(−h), ε = ``epsilon``, default 0.1 (a method of its own here); ε = 0 is DPO.

    TRL: up to 0.28, DPOTrainer's ``label_smoothing`` (default 0) turned ``loss_type="sigmoid"`` into
    this loss. From 0.29 on (TRL 1.16 checked) ``sigmoid`` ignores ``label_smoothing`` and is plain
    DPO whatever its value; TRL 1.16 reads ``label_smoothing`` only for ``robust`` (rDPO's flip rate),
    ``exo_pair`` (EXO's ε), ``aot`` and ``aot_unpaired``, and has no cDPO loss type. Its ``aot`` with
    one pair per batch computes this same formula (sorting one value changes nothing), which is how
    tests/losses/test_trl_parity.py compares the two.
    """
    r_c, r_r = implicit_rewards(logps, params.beta)
    h = r_c - r_r
    losses = smoothed_logistic(h, params.epsilon)
    return LossOutput(losses, reward_metrics(r_c, r_r, logps))


@dataclass
class RDPOParams:
    beta: float = param(0.1, BETA_HELP)
    epsilon: float = param(0.1, "ε in [0, 0.5): the known rate at which preference labels are flipped")

    def __post_init__(self) -> None:
        require_beta(self.beta)
        _require_flip_rate(self.epsilon)


def rdpo_loss(logps: PairLogps, params: RDPOParams) -> LossOutput:
    """Robust DPO (Chowdhury et al. 2024; TRL ``loss_type="robust"``):
    [−(1 − ε)·log σ(h) + ε·log σ(−h)] / (1 − 2ε).

    An unbiased estimate of the clean DPO loss when each label is flipped with probability ε; it can
    be negative, and the sign of the ε term is the opposite of cDPO's. Defaults β = 0.1, ε = 0.1.
    """
    r_c, r_r = implicit_rewards(logps, params.beta)
    h = r_c - r_r
    eps = params.epsilon
    losses = (-(1.0 - eps) * F.logsigmoid(h) + eps * F.logsigmoid(-h)) / (1.0 - 2.0 * eps)
    return LossOutput(losses, reward_metrics(r_c, r_r, logps))


# ---------------------------------------------------------------------------------------------
# Soft preference (OSP)
# ---------------------------------------------------------------------------------------------


@dataclass
class SoftPreferenceParams:
    beta: float = param(0.1, BETA_HELP)

    def __post_init__(self) -> None:
        require_beta(self.beta)


def soft_preference_loss(logps: PairLogps, params: SoftPreferenceParams) -> LossOutput:
    """Soft-preference cross-entropy (OSP, "Online Self-Preferring Language Models"):
    −[p·log σ(h) + (1 − p)·log σ(−h)], with p = ``strength`` the pair's preference strength.

    The data gives p in [0.5, 1]; any p in [0, 1] is a valid target and is accepted, anything else
    (or NaN) raises ValueError. How OSP pairs self-generated responses and derives p is not part of
    the loss and is unverified. Needs "strength".
    """
    p = logps.strength
    if p is None:
        raise ValueError("soft-preference needs a preference strength per pair (needs 'strength')")
    if not bool((torch.isfinite(p) & (p >= 0) & (p <= 1)).all()):
        raise ValueError("soft-preference: strength must be a finite number in [0, 1] for every pair")
    r_c, r_r = implicit_rewards(logps, params.beta)
    h = r_c - r_r
    p = p.to(h.dtype)
    losses = -(p * F.logsigmoid(h) + (1.0 - p) * F.logsigmoid(-h))
    metrics = reward_metrics(r_c, r_r, logps)
    metrics["soft/strength"] = p.detach()
    return LossOutput(losses, metrics)


# ---------------------------------------------------------------------------------------------
# LCPO: an EM wrapper around any pairwise loss
# ---------------------------------------------------------------------------------------------


def _noise_fields() -> list[tuple[str, type, dataclasses.Field]]:
    return [
        ("noise_init", float, param(0.1, "LCPO: label noise rate ε at the start of training")),
        ("noise_min", float, param(0.0, "LCPO: lower bound of the estimated noise rate ε")),
        ("noise_max", float, param(0.49, "LCPO: upper bound of the estimated noise rate ε (below 0.5)")),
        ("estimate_noise", bool, param(True, "LCPO: re-estimate ε after every step (the M-step); false keeps "
                                             "ε = noise_init, a known noise rate")),
    ]


def _check_noise_params(params) -> None:
    for name in ("noise_init", "noise_min", "noise_max"):
        require_below_half(getattr(params, name), name)
    require(params.noise_min <= params.noise_max, "noise_min",
            f"must be <= noise_max ({params.noise_max}), got {params.noise_min}")
    require(params.noise_min <= params.noise_init <= params.noise_max, "noise_init",
            f"must lie in [noise_min, noise_max] = [{params.noise_min}, {params.noise_max}], "
            f"got {params.noise_init}")


def lcpo_weights(loss_fwd: torch.Tensor, loss_swapped: torch.Tensor, noise: float) -> torch.Tensor:
    """E-step: the posterior that each label is right, detached, (B,).

    P = σ(ℓ(−h) − ℓ(h)) and w = (1 − ε)P / ((1 − ε)P + ε(1 − P)) = σ(ℓ(−h) − ℓ(h) + log((1 − ε)/ε)).
    ε = 0 gives w = 1 (every label trusted); ε = 1 gives w = 0.
    """
    if not (math.isfinite(noise) and 0 <= noise <= 1):
        raise ValueError(f"lcpo: state['noise'] must be a number in [0, 1], got {noise}")
    with torch.no_grad():
        if noise == 0:
            return torch.ones_like(loss_fwd)
        if noise == 1:
            return torch.zeros_like(loss_fwd)
        prior = math.log1p(-noise) - math.log(noise)
        return torch.sigmoid(loss_swapped - loss_fwd + prior)


def lcpo_spec(base: LossSpec, name: str) -> LossSpec:
    """An LCPO version of a pairwise loss ``base`` (not registered; pass it to ``register``).

    The params class inherits the base's fields and adds ``noise_init``, ``noise_min``,
    ``noise_max``; the base's own checks still run. The state is ``{"noise": ε}``; ``stats`` are
    ``noise_sum`` = Σ(1 − w) and ``count`` = B, and ``update_state`` sets
    ε = clamp(noise_sum / count, noise_min, noise_max).

    ℓ(−h) is the base loss on the swapped pair, whole: for a base with an SFT term (CPO, SimPO
    with ``sft_weight``) that term then falls on the other response, so under "the label is wrong"
    the model imitates the response that was really preferred, and P_i includes the difference of
    the two NLL terms. This follows the loss-to-probability mapping literally; it is a choice.
    """
    if base.shape not in ("pair", "joint"):
        raise ValueError(f"lcpo wraps pairwise losses; '{base.name}' has data shape '{base.shape}'")
    if base.init_state is not None:
        raise ValueError(f"lcpo cannot wrap the stateful loss '{base.name}'")
    base_params = base.params
    base_check = getattr(base_params, "__post_init__", None)

    def __post_init__(self) -> None:
        if base_check is not None:
            base_check(self)
        _check_noise_params(self)

    params_cls = dataclasses.make_dataclass(
        "LCPO" + base_params.__name__,
        _noise_fields(),
        bases=(base_params,),
        namespace={
            "__post_init__": __post_init__,
            "__doc__": f"{base_params.__name__} plus LCPO's label-noise rate bounds.",
        },
    )
    params_cls.__module__ = __name__

    def loss_fn(inputs: PairLogps, params) -> LossOutput:
        noise = float(inputs.state.get("noise", params.noise_init))
        forward = base.fn(inputs, params)
        swapped = base.fn(inputs.swapped(), params)
        weight = lcpo_weights(forward.losses, swapped.losses, noise)
        losses = weight * forward.losses + (1.0 - weight) * swapped.losses
        metrics = dict(forward.metrics)
        metrics["lcpo/weight"] = weight
        stats = {
            "noise_sum": (1.0 - weight).sum(),
            "count": torch.tensor(float(weight.numel()), dtype=weight.dtype, device=weight.device),
        }
        return LossOutput(losses, metrics, stats)

    def init_state(params) -> dict[str, float]:
        return {"noise": float(params.noise_init)}

    def update_state(state: dict[str, float], stats: dict, params) -> dict[str, float]:
        count = float(stats.get("count", 0.0))
        if count <= 0 or not params.estimate_noise:
            return dict(state)
        noise = float(stats["noise_sum"]) / count
        return {**state, "noise": min(max(noise, params.noise_min), params.noise_max)}

    return LossSpec(
        name=name, fn=loss_fn, shape=base.shape, params=params_cls, needs_reference=base.needs_reference,
        reduction=base.reduction, normalize=base.normalize, needs=base.needs,
        paper=f"Latent Collective Preference Optimization (EM over label noise), around {base.name}",
        summary=f"w·ℓ(h) + (1 − w)·ℓ(−h), ℓ = {base.name}; w = posterior that the label is right, "
                "noise rate ε re-estimated each step",
        init_state=init_state, update_state=update_state,
    )


# The DPO spec to wrap; built here (not looked up) so this module does not depend on the order in
# which the package registers its losses.
_DPO_BASE = LossSpec(
    name="dpo", fn=dpo_loss, shape="pair", params=DPOParams, needs_reference=True,
    paper="Rafailov et al. 2023, Direct Preference Optimization",
)

register(LossSpec(
    name="cdpo", fn=cdpo_loss, shape="pair", params=CDPOParams, needs_reference=True,
    paper="Mitchell 2023, A Note on DPO with Noisy Preferences & Relationship to IPO",
    summary="−(1 − ε)·log σ(h) − ε·log σ(−h), h = β(ρ_chosen − ρ_rejected)",
))
register(LossSpec(
    name="rdpo", fn=rdpo_loss, shape="pair", params=RDPOParams, needs_reference=True,
    paper="Chowdhury et al. 2024, Provably Robust DPO: Aligning Language Models with Noisy Feedback",
    summary="[−(1 − ε)·log σ(h) + ε·log σ(−h)] / (1 − 2ε): unbiased for the clean DPO loss",
))
register(LossSpec(
    name="soft-preference", fn=soft_preference_loss, shape="pair", params=SoftPreferenceParams,
    needs_reference=True, needs=frozenset({"strength"}),
    paper="Zhai et al. 2024, Online Self-Preferring Language Models",
    summary="−[p·log σ(h) + (1 − p)·log σ(−h)], p = per-pair preference strength",
))
LCPO_SPEC = register(lcpo_spec(_DPO_BASE, "lcpo"))
LCPO_IPO_SPEC = register(lcpo_spec(IPO_SPEC, "lcpo-ipo"))
