"""The policy-gradient surrogates of online RL (GRPO, DAPO, Dr. GRPO, GSPO, LUSPO, CISPO, SAPO, VESPO, GMPO,
PPO), per example.

ALGORITHMS.md 6.3, 6.5 and 6.8. Notation: ℓ_t = log πθ(y_t | x, y_<t) (``logps``), ℓold_t the
policy that sampled the batch as the trainer recomputes it (``old_logps``), m_t the completion mask,
A the advantage (per sequence, broadcast to its tokens, or per token).

Per token (Schulman et al. 2017, "Proximal Policy Optimization Algorithms"; asymmetric clipping
from DAPO, Yu et al. 2025):

    c_t  = exp(ℓ_t − ℓold_t)                                          ratio_level="token"
    c_t  = s_i = exp(Σ_t m_t(ℓ_t − ℓold_t) / Σ_t m_t)  for every t of i  ratio_level="sequence" (GSPO)
    L_t  = −min(c_t·A, clip(c_t, 1 − ε_low, 1 + ε_high)·A) · w_t  +  β·k3_t [· c_t]

w_t is the truncated importance-sampling weight against the sampler (below, 1 when off); k3_t =
e^u − u − 1 with u = ℓref_t − ℓ_t is the KL penalty toward the reference (β = 0: none), multiplied
by c_t when ``kl_ratio_weight`` (TRL's ``use_bias_correction_kl``). An entropy bonus adds
−η·H_t, H_t = −Σ_v πθ(v | x, y_<t) log πθ(v | x, y_<t) the policy's entropy where token t is
predicted (η = ``entropy_coef``; verl's ``entropy_coeff``, aggregated as the policy term, as verl
and OpenRLHF do; its gradient flows through every logit of the position, ``logprobs._TargetLogps``).

The other surrogates (``surrogate``: CISPO, SAPO, VESPO, GMPO, Clip-Cov, KL-Cov and the plain
policy gradient), the truncated importance-sampling weights against the sampler and the two guards
against stale samples are in ``surrogates.py``, with their formulas.

GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"): one ratio per sequence, the
geometric mean of its token ratios, clipped at sequence level (the paper uses ε of order 3e-4 to
4e-4). Its gradient is TRL 1.16's ``importance_sampling_level="sequence"``: nothing is detached, so
∇s_i = s_i · (1/|y_i|) Σ_t ∇ℓ_t, and an unclipped sequence's surrogate has gradient
−A_i·s_i·mean_t ∇ℓ_t. With ``aggregation="seq_mean_token_mean"`` the per-example loss is exactly
GSPO's −min(s_i·A_i, clip(s_i)·A_i); the token-summing aggregations weight it by |y_i| (TRL warns
about that combination; it is allowed here too).

High-entropy tokens only (Wang et al. 2025, "Beyond the 80/20 Rule", arXiv 2506.01939; TRL's
``top_entropy_quantile`` ρ): ``token_keep`` multiplies each token's policy term (and entropy bonus)
by [H_t ≥ τ], τ the (1 − ρ) quantile of the step's token entropies (the forward computes it before
the step's backward passes, ``training/forward/policy_gradient.py``); the KL term stays on every
token, and the units do not change, as in TRL.

Truncated completions (DAPO's overlong filtering; TRL ``mask_truncated_completions``): a per-sequence
flag ``truncated`` zeros the sequence's mask, so it adds nothing to the loss and, under "token_mean",
no units.

Aggregation and the step's normaliser
-------------------------------------
The loss returns one value per example, ℓ_i, and ``units(mode, mask)`` one count per example, u_i.
The training loop (``alignlab/training/loop.py``) sums ℓ_i over every micro-batch and process of the
optimizer step and divides by U = Σ u_i over the whole step's batch, counted before any backward:

    "token_mean"           ℓ_i = Σ_t m L_t,           u_i = Σ_t m   → Σ_{i,t} m L / Σ_{i,t} m   (DAPO;
                                                                       TRL's default loss_type "dapo")
    "seq_mean_token_mean"  ℓ_i = Σ_t m L_t / Σ_t m,   u_i = 1       → mean_i of token means     (GRPO paper;
                                                                       TRL "grpo")
    "seq_mean_token_sum"   ℓ_i = Σ_t m L_t,           u_i = 1       → mean_i of token sums      (LUSPO;
                                                                       TRL "luspo", verl seq-mean-token-sum)
    "constant"             ℓ_i = Σ_t m L_t / L_max,   u_i = 1       → Σ_{i,t} m L / (N·L_max)   (Dr. GRPO;
                                                                       TRL "dr_grpo", L_max = max_completion_length)

Why no split of the step changes the update. Let the step's N examples be split in any way into
micro-batches b and processes p (each example in exactly one part). ℓ_i is computed from example
i's own tensors only (its log-probs, mask, advantages and hyperparameters; advantages are computed
once for the whole step beforehand and enter as constants), and so is u_i. So

    Σ_p Σ_{b on p} Σ_{i ∈ b} ℓ_i / U  =  Σ_{i=1..N} ℓ_i / U,     U = Σ_{i=1..N} u_i,

the same number for every split: the parts are a partition of 1..N, and a sum over a partition is
the sum over the whole. U is a constant (a count, fixed before the backward passes), so by
linearity of the gradient Σ_b ∇(Σ_{i∈b} ℓ_i / U) = ∇(Σ_i ℓ_i / U): accumulating micro-batch gradients
gives the gradient of the whole-step objective. Across processes the loop scales each process's
loss by the world size W and DistributedDataParallel averages: (1/W)·Σ_p W·g_p = Σ_p g_p, the same
sum. ∎ The argument needs both halves to be per-example: TRL's "bnpo" divides by the *local*
micro-batch's token count, a normaliser that depends on the split (Σ_b Σ_{i∈b} ℓ_i / U_b ≠ Σ_i ℓ_i / U
unless every U_b is equal), so alignlab deliberately does not offer it as an aggregation mode.

PPO (ALGORITHMS.md 6.5): ``ppo_loss`` adds vf_coef × the clipped value loss 0.5·max((V − R)²,
(V_clip − R)²), V_clip = Vold + clamp(V − Vold, −ε_v, ε_v) (OpenRLHF ``ValueLoss``), aggregated the
same way as the policy term so the two share the units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from alignlab.losses.params import param, require, require_non_negative, require_positive
from alignlab.losses.surrogates import (
    IS_MODES,
    ISMode,
    cispo_surrogate,
    clipped_surrogate,
    dppo_surrogate,
    dro_surrogate,
    gmpo_surrogate,
    importance_weights,
    off_policy_keep,
    sapo_surrogate,
    vespo_weights,
)
from alignlab.losses.types import LossOutput

Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "constant"]
RatioLevel = Literal["token", "sequence"]
Surrogate = Literal["clip", "cispo", "sapo", "vespo", "gmpo", "clip_cov", "kl_cov", "pg", "dppo_tv", "dppo_kl",
                    "dro"]

AGGREGATIONS = get_args(Aggregation)
RATIO_LEVELS = get_args(RatioLevel)
SURROGATES = get_args(Surrogate)
COV_SURROGATES = ("clip_cov", "kl_cov")
DPPO_SURROGATES = ("dppo_tv", "dppo_kl")
# the surrogates that need one ratio per token, and why (the end of their error message)
_TOKEN_RATIO_ONLY = {
    **dict.fromkeys(("vespo", "gmpo"), "which makes each sequence's ratio from its token ratios itself"),
    **dict.fromkeys(COV_SURROGATES, "which selects tokens"),
    **dict.fromkeys(DPPO_SURROGATES, "whose trust region is on each token's probability"),
    "dro": "whose penalty is on each token's log-ratio",
}


# ------------------------------------------------------------------------------------- inputs


@dataclass
class PolicyGradientInputs:
    """A batch of B sampled completions, right-padded to T positions.

    ``logps`` (B, T): the current policy's per-token log-probs (with gradient). ``mask`` (B, T): 1 on
    completion tokens, 0 on padding. ``advantages``: (B,) per sequence or (B, T) per token.
    ``old_logps`` (B, T): the sampling policy's log-probs as the trainer computes them; None means
    on-policy (ℓold = ℓ detached, every ratio 1). ``ref_logps`` (B, T): the reference's, needed when
    β > 0. ``sampler_logps`` (B, T): the sampler's own log-probs (vLLM), needed for importance-sampling
    correction. ``truncated`` (B,) bool: completions cut at the length limit. ``entropy`` (B, T):
    per-token policy entropies, logged, and (with their gradient) the entropy bonus's
    (``entropy_coef``). ``token_keep`` (B, T) bool: the tokens that keep their policy term and
    entropy bonus (``top_entropy_quantile``; None: all). ``cov_selected`` (B, T) bool: the step's
    tokens of high covariance, for the "clip_cov" and "kl_cov" surrogates. For PPO, ``values`` (B, T) (with
    gradient), ``old_values`` (B, T) and ``returns`` (B, T).
    """

    logps: torch.Tensor
    mask: torch.Tensor
    advantages: torch.Tensor
    old_logps: torch.Tensor | None = None
    ref_logps: torch.Tensor | None = None
    sampler_logps: torch.Tensor | None = None
    truncated: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    token_keep: torch.Tensor | None = None
    cov_selected: torch.Tensor | None = None
    values: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    returns: torch.Tensor | None = None


@dataclass
class PolicyGradientParams:
    eps_low: float = param(0.2, "ε_low: the ratio is clipped below at 1 − ε_low (TRL `epsilon`)")
    eps_high: float = param(0.2, "ε_high: the ratio is clipped above at 1 + ε_high (DAPO's clip-higher: 0.28; "
                                 "TRL `epsilon_high`)")
    ratio_level: RatioLevel = param("token", "'token': one ratio per token (PPO/GRPO); 'sequence': one ratio "
                                             "per sequence, exp of the mean token log-ratio (GSPO)")
    beta: float = param(0.0, "β: weight of the per-token k3 KL penalty toward the reference (0: no reference)")
    kl_ratio_weight: bool = param(False, "multiply the KL term by the policy ratio (TRL `use_bias_correction_kl`)")
    entropy_coef: float = param(0.0, "entropy bonus: the loss subtracts entropy_coef × each token's policy entropy, "
                                     "aggregated as the policy term (verl `entropy_coeff`, OpenRLHF "
                                     "`--entropy_loss_coef`; 0: none; below 0: entropy minimisation); with "
                                     "adaptive_entropy, the starting coefficient")
    top_entropy_quantile: float = param(1.0, "ρ: only the top ρ share of the step's completion tokens by policy "
                                             "entropy keep their policy term (and entropy bonus), the step's "
                                             "(1 − ρ) quantile of entropy the cut (Wang et al. 2025, Beyond the 80/20 "
                                             "Rule: 0.2; TRL `top_entropy_quantile`; 1: every token)")
    adaptive_entropy: bool = param(False, "adaptive entropy control (Skywork-OR1; TRL `use_adaptive_entropy`): after "
                                          "each step the coefficient rises by entropy_coef_delta when the step's mean "
                                          "token entropy is at most entropy_target, else falls by it, within "
                                          "[entropy_coef_min, entropy_coef_max]; it applies only while the last "
                                          "step's entropy is at most the target")
    entropy_target: float = param(0.2, "adaptive_entropy: the mean token entropy (nats) below which the bonus applies "
                                       "(TRL default 0.2)")
    entropy_coef_delta: float = param(0.005, "adaptive_entropy: the coefficient's change per step (TRL default 0.005)")
    entropy_coef_min: float = param(0.0, "adaptive_entropy: the coefficient's lower bound (TRL default 0)")
    entropy_coef_max: float = param(1.0, "adaptive_entropy: the coefficient's upper bound (TRL default 1)")
    aggregation: Aggregation = param("token_mean", "how token losses become the step's loss: 'token_mean' (DAPO), "
                                                   "'seq_mean_token_mean' (GRPO), 'seq_mean_token_sum' (LUSPO), "
                                                   "'constant' (Dr. GRPO)")
    surrogate: Surrogate = param("clip", "the per-token policy loss: 'clip' (PPO's clipped ratio), 'cispo' (the "
                                         "capped ratio as a constant weight on A·log π, MiniMax-M1), 'sapo' (a "
                                         "sigmoid gate in place of the clip, SAPO), 'vespo' (a Gamma-shaped weight "
                                         "of the sequence's ratio on A·log π, VESPO), 'gmpo' (the geometric mean "
                                         "of the token ratios, each clipped in log space to [−eps_low, eps_high], "
                                         "times the sequence's mean advantage, GMPO; not with the per-token "
                                         "advantages of reinforce++ and ppo), 'clip_cov' (the clip, with the "
                                         "gradient of a few high-covariance tokens cut, Clip-Cov), 'kl_cov' (the "
                                         "unclipped ratio, with |log π − log π_old| on the tokens of highest "
                                         "covariance, KL-Cov), 'pg' (the plain policy gradient −A·log π, no "
                                         "ratio: GPG, REINFORCE), 'dppo_tv' / 'dppo_kl' (the capped ratio as a "
                                         "constant weight on A·log π, 0 where the token's probability moved "
                                         "past eps_low / eps_high in total variation or binary KL, DPPO), 'dro' "
                                         "(−A·log π plus ½·dro_beta·(log π − log π_old)², no clip, verl's dro)")
    dro_beta: float | None = param(None, "dro: β of the penalty ½β(log π − log π_old)² on each token (verl's "
                                         "dro_beta, which has no default: give it with surrogate 'dro')")
    dppo_ratio_cap: float = param(1e4, "dppo_tv / dppo_kl: the cap C on the ratio weight min(ratio, C) (verl's "
                                       "clip_ratio_c; 10000 in its DPPO recipe)")
    cispo_max: float = param(5.0, "CISPO's cap on the ratio: the weight is min(ratio, cispo_max) (ScaleRL's ε_max; "
                                  "TRL `epsilon_high` with loss_type cispo, 5 as TRL recommends)")
    cispo_min: float | None = param(None, "CISPO's floor on the ratio weight, clamp(ratio, cispo_min, cispo_max): "
                                          "MiniMax-M1's two-sided form, as verl's cispo (cispo_min 0.8 with "
                                          "cispo_max 1.2 is its default clip_ratio 0.2); None: no floor, as TRL")
    sapo_tau_pos: float = param(1.0, "SAPO's gate temperature where the advantage is > 0 (TRL default 1.0)")
    sapo_tau_neg: float = param(1.05, "SAPO's gate temperature where the advantage is <= 0 (TRL default 1.05)")
    delta: float | None = param(None, "two-sided clipping (INTELLECT-2): the unclipped ratio of the 'clip' surrogate "
                                      "is capped at delta, bounding what a token with A < 0 can push (TRL `delta`; "
                                      "set it above 1 + eps_high, where it is dual-clip PPO, verl's clip_ratio_c; "
                                      "None: off)")
    off_policy_mask: float | None = param(None, "off-policy sequence masking (DeepSeek-V3.2): a completion with A < 0 "
                                                "whose mean per-token log π_sampler − log π exceeds this is left "
                                                "out of the policy loss (TRL `off_policy_mask_threshold`; None: off)")
    cov_ratio: float = param(2e-4, "clip_cov / kl_cov: the share of the step's completion tokens selected by their "
                                   "covariance of log-prob and advantage (verl's clip_cov_ratio and kl_cov_ratio, "
                                   "2e-4)")
    clip_cov_lb: float = param(1.0, "clip_cov: tokens with covariance above this may be selected (verl 1.0)")
    clip_cov_ub: float = param(5.0, "clip_cov: tokens with covariance below this may be selected (verl 5.0)")
    kl_cov_coef: float = param(0.1, "kl_cov: κ, the weight of |log π − log π_old| on the selected tokens (verl's "
                                    "ppo_kl_coef, 0.1)")
    vespo_k_pos: float = param(2.0, "VESPO's power k where the advantage is >= 0: φ(w) = e^λ·w^k·e^(−λw) (TRL 2.0)")
    vespo_lambda_pos: float = param(3.0, "VESPO's decay λ where the advantage is >= 0 (TRL default 3.0)")
    vespo_k_neg: float = param(3.0, "VESPO's power k where the advantage is < 0 (TRL default 3.0)")
    vespo_lambda_neg: float = param(2.0, "VESPO's decay λ where the advantage is < 0 (TRL default 2.0)")
    max_completion_length: int | None = param(None, "L_max of 'constant' aggregation: per-example loss = sum / L_max "
                                                    "(None: a training run's max_new_tokens)")
    is_mode: ISMode = param("off", "importance-sampling correction against the sampler's log-probs: 'off', "
                                   "'token_truncate', 'token_mask', 'sequence_truncate', 'sequence_mask' (TRL names)")
    is_clip_max: float | None = param(3.0, "C_max of the importance-sampling correction (TRL default 3.0)")
    is_clip_min: float | None = param(None, "C_min of the importance-sampling correction (None: no lower bound)")
    mask_truncated: bool = param(False, "drop completions flagged as truncated from the loss (DAPO)")

    def __post_init__(self) -> None:
        require(self.ratio_level in RATIO_LEVELS, "ratio_level", f"must be one of {RATIO_LEVELS}, got {self.ratio_level!r}")
        require(self.aggregation in AGGREGATIONS, "aggregation", f"must be one of {AGGREGATIONS}, got "
                f"{self.aggregation!r} (the local token mean 'bnpo' depends on how the step is split)")
        require(self.is_mode in IS_MODES, "is_mode", f"must be one of {IS_MODES}, got {self.is_mode!r}")
        require(self.surrogate in SURROGATES, "surrogate", f"must be one of {SURROGATES}, got {self.surrogate!r}")
        require_positive(self.cispo_max, "cispo_max")
        if self.cispo_min is not None:
            require(0 <= self.cispo_min < self.cispo_max, "cispo_min",
                    f"must be in [0, cispo_max) ({self.cispo_min} with cispo_max {self.cispo_max})")
        require_positive(self.sapo_tau_pos, "sapo_tau_pos")
        require_positive(self.sapo_tau_neg, "sapo_tau_neg")
        if self.delta is not None:
            require(math.isfinite(self.delta) and self.delta > 1, "delta",
                    f"must be > 1, got {self.delta}: a cap at or below 1 takes the gradient of every token with "
                    "A > 0 at the ratio 1 of a round's first update (INTELLECT-2 sets it above 1 + eps_high)")
            require(self.surrogate == "clip", "delta", f"caps the clipped surrogate's ratio; surrogate "
                    f"'{self.surrogate}' has no such ratio")
        if self.off_policy_mask is not None:
            require_non_negative(self.off_policy_mask, "off_policy_mask")
        require_non_negative(self.vespo_k_pos, "vespo_k_pos")
        require_non_negative(self.vespo_k_neg, "vespo_k_neg")
        require_positive(self.vespo_lambda_pos, "vespo_lambda_pos")
        require_positive(self.vespo_lambda_neg, "vespo_lambda_neg")
        require_positive(self.dppo_ratio_cap, "dppo_ratio_cap")
        if self.surrogate == "dro":
            require(self.dro_beta is not None, "dro_beta", "surrogate 'dro' needs its penalty's β, e.g. dro_beta 0.1 "
                    "(verl gives no default)")
            require_positive(self.dro_beta, "dro_beta")
        else:
            require(self.dro_beta is None, "dro_beta", f"is the penalty of surrogate 'dro'; surrogate "
                    f"'{self.surrogate}' has none")
        if self.surrogate in _TOKEN_RATIO_ONLY:
            require(self.ratio_level == "token", "ratio_level", f"must be 'token' with surrogate '{self.surrogate}', "
                    f"{_TOKEN_RATIO_ONLY[self.surrogate]}")
        if self.surrogate in ("vespo", "gmpo"):
            require(not self.is_mode.startswith("sequence"), "is_mode", "must be 'off' or a token mode with surrogate "
                    f"'{self.surrogate}', which folds the token weights into its sequence weight")
        require_positive(self.eps_low, "eps_low")
        if self.surrogate != "gmpo":  # GMPO's bounds are on the log-ratio: e^−ε_low > 0 for any ε_low
            require(self.eps_low < 1, "eps_low",
                    f"must be < 1 (the lower clip bound 1 − ε_low must be > 0), got {self.eps_low}")
        require_positive(self.eps_high, "eps_high")
        require_non_negative(self.beta, "beta")
        require(math.isfinite(self.entropy_coef), "entropy_coef", f"must be a finite number, got {self.entropy_coef}")
        require(0.0 < self.cov_ratio <= 1.0, "cov_ratio", f"must be in (0, 1], got {self.cov_ratio}")
        require(self.clip_cov_lb < self.clip_cov_ub, "clip_cov_lb", f"must be below clip_cov_ub "
                f"({self.clip_cov_lb} >= {self.clip_cov_ub})")
        require_non_negative(self.kl_cov_coef, "kl_cov_coef")
        require(0.0 <= self.top_entropy_quantile <= 1.0, "top_entropy_quantile",
                f"must be in [0, 1], got {self.top_entropy_quantile}")
        require_non_negative(self.entropy_target, "entropy_target")
        require_non_negative(self.entropy_coef_delta, "entropy_coef_delta")
        require(math.isfinite(self.entropy_coef_min) and math.isfinite(self.entropy_coef_max)
                and self.entropy_coef_min <= self.entropy_coef_max, "entropy_coef_min",
                f"must be finite and at most entropy_coef_max ({self.entropy_coef_min} > {self.entropy_coef_max})")
        require(self.max_completion_length is None or (isinstance(self.max_completion_length, int)
                                                         and self.max_completion_length > 0),
                "max_completion_length", f"must be a positive integer, got {self.max_completion_length!r}")
        for name in ("is_clip_max", "is_clip_min"):
            value = getattr(self, name)
            if value is not None:
                require_positive(value, name)
        if self.is_clip_max is not None and self.is_clip_min is not None:
            require(self.is_clip_min <= self.is_clip_max, "is_clip_min", "must not exceed is_clip_max")


@dataclass
class PPOParams(PolicyGradientParams):
    vf_coef: float = param(0.1, "weight of the value loss in the total (ALGORITHMS.md 6.5: 0.1)")
    value_clip: float | None = param(0.2, "ε_v: the value may move at most this far from the old value (None: "
                                          "unclipped)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require_non_negative(self.vf_coef, "vf_coef")
        if self.value_clip is not None:
            require_positive(self.value_clip, "value_clip")


# --------------------------------------------------------------------------------- the pieces


def effective_mask(mask: torch.Tensor, truncated: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) bool mask with the rows of truncated completions (``truncated`` (B,) bool) zeroed."""
    mask = mask.bool()
    if truncated is not None:
        mask = mask & ~truncated.bool().reshape(-1, 1)
    return mask


def units(mode: Aggregation, mask: torch.Tensor, truncated: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example units of the step's denominator, (B,) float64: the example's valid tokens for
    "token_mean", 1 for the others. ``truncated`` (B,) gives the tokens of
    flagged rows no units (pass it exactly when ``mask_truncated`` is on). The loop divides the
    step's summed per-example losses by the sum of these over the whole step."""
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; one of {AGGREGATIONS}")
    mask = effective_mask(mask, truncated)
    if mode == "token_mean":
        return mask.sum(dim=-1).to(torch.float64)
    return torch.ones(mask.shape[0], dtype=torch.float64, device=mask.device)


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: Aggregation,
              max_completion_length: int | None = None) -> torch.Tensor:
    """Per-example losses (B,) from per-token losses (B, T) (or (B, 1), broadcast over the tokens):
    Σ_t m·L for "token_mean" and "seq_mean_token_sum" (which differ in their units), Σ_t m·L / Σ_t m
    for "seq_mean_token_mean" (0 for a row with no tokens), Σ_t m·L / L_max for "constant". Padding never contributes, even if it holds inf/NaN."""
    mask = mask.bool()
    per_token = per_token.expand(mask.shape)
    summed = torch.where(mask, per_token, torch.zeros_like(per_token)).sum(dim=-1)
    if mode == "token_mean":
        return summed
    if mode == "seq_mean_token_mean":
        return summed / mask.sum(dim=-1).clamp(min=1).to(summed.dtype)
    if mode == "seq_mean_token_sum":
        return summed
    if mode == "constant":
        if max_completion_length is None or max_completion_length <= 0:
            raise ValueError("'constant' aggregation needs max_completion_length > 0")
        return summed / max_completion_length
    raise ValueError(f"unknown aggregation {mode!r}; one of {AGGREGATIONS}")


def log_ratio(logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor, level: RatioLevel) -> torch.Tensor:
    """log c: (B, T) ℓ − ℓold for "token" (0 on padding), or (B, 1) Σ_t m(ℓ − ℓold) / max(Σ_t m, 1)
    for "sequence" (GSPO's log s_i; the gradient flows into every token's ℓ)."""
    mask = mask.bool()
    diff = torch.where(mask, logps - old_logps, torch.zeros_like(logps))
    if level == "token":
        return diff
    if level == "sequence":
        return (diff.sum(dim=-1) / mask.sum(dim=-1).clamp(min=1).to(diff.dtype)).unsqueeze(-1)
    raise ValueError(f"unknown ratio level {level!r}; one of {RATIO_LEVELS}")


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               clip: float | None = 0.2) -> torch.Tensor:
    """Per-token clipped value loss 0.5·max((V − R)², (V_clip − R)²), V_clip = Vold + clamp(V − Vold, ±ε_v).

    PPO's value clipping as in OpenRLHF ``ValueLoss`` (and the PPO of "Secrets of RLHF", ALGORITHMS.md
    6.5); ``clip=None`` gives 0.5·(V − R)². All (B, T); aggregate it like the policy loss."""
    unclipped = (values - returns) ** 2
    if clip is None:
        return 0.5 * unclipped
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * torch.maximum(unclipped, (clipped_values - returns) ** 2)


def _token_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-example mean over valid tokens (B,), detached; 0 for a row with none."""
    x = x.detach().expand(mask.shape)
    return (torch.where(mask, x, torch.zeros_like(x)).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)).to(x.dtype)


# ---------------------------------------------------------------------------------- the losses


def _policy_terms(inputs: PolicyGradientInputs, params: PolicyGradientParams) -> tuple[torch.Tensor, torch.Tensor,
                                                                                       dict[str, torch.Tensor]]:
    """Per-token policy losses (B, T), the effective mask (B, T) and per-example metrics."""
    logps = inputs.logps
    truncated = inputs.truncated if params.mask_truncated else None
    mask = effective_mask(inputs.mask, truncated)
    old = logps.detach() if inputs.old_logps is None else inputs.old_logps.detach()
    adv = inputs.advantages.detach().to(logps.dtype)
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1)

    metrics: dict[str, torch.Tensor] = {}
    w = None
    if params.is_mode != "off":
        if inputs.sampler_logps is None:
            raise ValueError(f"is_mode={params.is_mode!r} needs sampler_logps (the sampler's per-token log-probs)")
        w = importance_weights(old, inputs.sampler_logps, mask, params.is_mode, params.is_clip_max, params.is_clip_min)
        metrics["is_weight/mean"] = _token_mean(w, mask)

    token_log_ratio = log_ratio(logps, old, mask, params.ratio_level)
    ratio = torch.exp(token_log_ratio)  # (B, T) or (B, 1)
    if params.surrogate == "cispo":
        per_token = cispo_surrogate(ratio, adv, logps, params.cispo_max, params.cispo_min)
    elif params.surrogate == "sapo":
        per_token = sapo_surrogate(ratio, adv, params.sapo_tau_pos, params.sapo_tau_neg)
    elif params.surrogate == "vespo":  # the sampler's weights go into the sequence weight, not on top of it
        phi = vespo_weights(token_log_ratio, adv, mask, w, params.vespo_k_pos, params.vespo_lambda_pos,
                            params.vespo_k_neg, params.vespo_lambda_neg)
        per_token = -phi * adv * logps
        metrics["vespo/phi"] = _token_mean(phi, mask)
        w = None
    elif params.surrogate in COV_SURROGATES:
        if inputs.cov_selected is None:
            raise ValueError(f"surrogate {params.surrogate!r} needs cov_selected (the step's high-covariance tokens)")
        selected = (inputs.cov_selected.bool() & mask).to(logps.dtype)
        if params.surrogate == "clip_cov":
            per_token = clipped_surrogate(ratio, adv, params.eps_low, params.eps_high) * (1 - selected)
        else:
            per_token = -ratio * adv + selected * params.kl_cov_coef * token_log_ratio.abs()
        metrics["cov/selected"] = _token_mean(selected, mask)
    elif params.surrogate == "pg":  # no ratio: the gradient of the samples' log-likelihood weighted by A
        per_token = -adv * logps
    elif params.surrogate == "dro":
        per_token = dro_surrogate(logps, token_log_ratio, adv, params.dro_beta)
    elif params.surrogate in DPPO_SURROGATES:
        per_token, inside = dppo_surrogate(logps, old, adv, params.surrogate.removeprefix("dppo_"), params.eps_low,
                                           params.eps_high, params.dppo_ratio_cap)
    elif params.surrogate == "gmpo":  # the sampler's weights go into the sequence's weight
        per_token = gmpo_surrogate(token_log_ratio, adv, mask, params.eps_low, params.eps_high, w)
        w = None
    else:
        per_token = clipped_surrogate(ratio, adv, params.eps_low, params.eps_high, params.delta)
    if params.off_policy_mask is not None:  # against the sampler's log-probs where given, else the old policy's
        behaviour = old if inputs.sampler_logps is None else inputs.sampler_logps.detach()
        keep = off_policy_keep(logps, behaviour, adv, mask, params.off_policy_mask)
        per_token = per_token * keep
        metrics["off_policy_masked"] = _token_mean(1 - keep, mask)
    if inputs.token_keep is not None:  # the high-entropy tokens (``top_entropy_quantile``)
        per_token = per_token * inputs.token_keep.to(per_token.dtype)
    if w is not None:
        per_token = per_token * w

    if params.beta != 0.0:
        if inputs.ref_logps is None:
            raise ValueError("beta > 0 needs ref_logps (the reference model's per-token log-probs)")
        # u is masked before the exponential so that padding (which may hold inf) gives no NaN gradient.
        u = torch.where(mask, inputs.ref_logps.detach() - logps, torch.zeros_like(logps))
        kl = torch.expm1(u) - u
        if params.kl_ratio_weight:
            kl = kl * ratio
        per_token = per_token + params.beta * kl
        metrics["kl"] = _token_mean(kl, mask)
    if params.entropy_coef != 0.0:
        if inputs.entropy is None or (logps.requires_grad and not inputs.entropy.requires_grad):
            raise ValueError("entropy_coef != 0 needs the policy's per-token entropy with its gradient")
        bonus_mask = mask if inputs.token_keep is None else mask & inputs.token_keep.bool()
        per_token = per_token - params.entropy_coef * torch.where(bonus_mask, inputs.entropy, torch.zeros_like(logps))

    if params.surrogate in ("clip", "clip_cov"):
        low = (ratio < 1 - params.eps_low) & (adv < 0)
        high = (ratio > 1 + params.eps_high) & (adv > 0)
    elif params.surrogate == "gmpo":  # its bounds are on the log-ratio
        low = (token_log_ratio < -params.eps_low) & (adv < 0)
        high = (token_log_ratio > params.eps_high) & (adv > 0)
    elif params.surrogate in DPPO_SURROGATES:  # out of the trust region (verl's pg_clipfrac, split by sign)
        low = (inside == 0) & (adv < 0)
        high = (inside == 0) & (adv > 0)
    else:  # CISPO caps the weight above (counted where A > 0, as TRL's cispo_clip_ratio); SAPO, VESPO: no clip
        cispo = params.surrogate == "cispo"
        high = (ratio > params.cispo_max) & (adv > 0) if cispo else torch.zeros_like(ratio > 0)
        low = (ratio < params.cispo_min) & (adv < 0) if cispo and params.cispo_min is not None \
            else torch.zeros_like(high)
    metrics["clip/low"] = _token_mean(low.to(logps.dtype), mask)
    metrics["clip/high"] = _token_mean(high.to(logps.dtype), mask)
    metrics["ratio/mean"] = _token_mean(ratio, mask)
    metrics["advantages"] = _token_mean(adv, mask)
    if inputs.entropy is not None:
        metrics["entropy"] = _token_mean(inputs.entropy, mask)
    _count_rows(metrics, mask)
    return per_token.expand(mask.shape), mask, metrics


def _count_rows(metrics: dict[str, torch.Tensor], mask: torch.Tensor) -> None:
    """Each token-mean metric averaged over the completions that have a token in the loss: a
    completion that ``mask_truncated`` leaves out counts 0 (``_count/<name>``, ``LossOutput``), not
    as a ratio, clip share or advantage of 0."""
    rows = (mask.sum(dim=-1) > 0).to(torch.float64)
    for name in [k for k in metrics if not k.startswith("_")]:
        metrics[f"_count/{name}"] = rows


def zero_advantage_is_free(params: PolicyGradientParams) -> bool:
    """Whether a completion whose advantages are all 0 has loss exactly 0 and no gradient under
    ``policy_gradient_loss`` with ``params``, so that leaving it out of the forward pass (while
    still counting its units) gives the same update. Every token's surrogate is then 0 for any
    ratio c (−min(c·0, clip(c)·0); CISPO's −sg(min(c, C))·0·ℓ; SAPO's −(4/τ)σ(·)·0; VESPO's
    −sg(φ)·0·ℓ with φ finite; GMPO's −0·exp(0), every g_t = sign(0)·… = 0; Clip-Cov's clipped
    one times (1 − s); the plain policy gradient's −0·ℓ), times w,
    provided the importance weight w is finite (no correction, or one capped at ``is_clip_max``)
    and no term without the advantage is added: β = 0 (no KL term), no entropy bonus (nor adaptive entropy
    control, which may turn one on) and no KL-Cov or DRO penalty (½β(ℓ − ℓold)² moves the token
    from μ's second update on, whatever A). PPO's value loss is such a term (``PPOParams``: never free)."""
    if isinstance(params, PPOParams):
        return False
    return params.beta == 0.0 and params.entropy_coef == 0.0 and not params.adaptive_entropy \
        and params.surrogate not in ("kl_cov", "dro") \
        and (params.is_mode == "off" or params.is_clip_max is not None)


def policy_gradient_loss(inputs: PolicyGradientInputs, params: PolicyGradientParams) -> LossOutput:
    """The policy surrogate (``params.surrogate``: clipped, CISPO or SAPO; + β·k3), one loss per example
    (B,), aggregated by ``params.aggregation``.

    Divide the step's summed losses by the step's sum of ``units(params.aggregation, mask, truncated)``.
    Metrics (per example, detached, over the example's valid tokens): ``clip/low`` and ``clip/high``
    (fraction of tokens whose ratio is clipped on the side the advantage pushes, as TRL's
    ``clip_ratio/low_mean``/``high_mean``; under CISPO ``clip/high`` is the fraction capped where A > 0,
    TRL's ``cispo_clip_ratio``, and under SAPO both are 0), ``ratio/mean``, ``advantages``, ``kl`` (β > 0),
    ``is_weight/mean`` (importance-sampling correction on), ``entropy`` (when given). TRL logs global
    token means; the loop averages these per-example values over examples.
    """
    per_token, mask, metrics = _policy_terms(inputs, params)
    losses = aggregate(per_token, mask, params.aggregation, params.max_completion_length)
    return LossOutput(losses, metrics)


def ppo_loss(inputs: PolicyGradientInputs, params: PPOParams) -> LossOutput:
    """PPO: the clipped policy surrogate plus vf_coef × the clipped value loss, per example (B,).

    Both terms are aggregated with ``params.aggregation`` (the same units). ``inputs.values`` carries
    the critic's gradient; ``old_values`` and ``returns`` (``advantages.gae``) are constants. Metrics as
    ``policy_gradient_loss`` plus ``policy_loss``, ``value_loss`` (per example, aggregated the same
    way) and ``value/clip`` (fraction of tokens where the clipped value error was the larger one)."""
    if inputs.values is None or inputs.old_values is None or inputs.returns is None:
        raise ValueError("ppo_loss needs values, old_values and returns")
    per_token, mask, metrics = _policy_terms(inputs, params)
    old_values, returns = inputs.old_values.detach(), inputs.returns.detach()
    v_loss = value_loss(inputs.values, old_values, returns, params.value_clip)
    policy = aggregate(per_token, mask, params.aggregation, params.max_completion_length)
    value = aggregate(v_loss, mask, params.aggregation, params.max_completion_length)
    if params.value_clip is not None:
        clipped_values = old_values + (inputs.values.detach() - old_values).clamp(-params.value_clip, params.value_clip)
        used_clip = (clipped_values - returns) ** 2 > (inputs.values.detach() - returns) ** 2
        metrics["value/clip"] = _token_mean(used_clip.to(per_token.dtype), mask)
        _count_rows(metrics, mask)
    metrics["policy_loss"] = policy.detach()
    metrics["value_loss"] = value.detach()
    return LossOutput(policy + params.vf_coef * value, metrics)
