"""The per-token policy losses other than PPO's clip, the importance-sampling weights against the
sampler, and the guards against stale samples: the pieces ``policy_gradient.py`` assembles.

Notation as there: ℓ_t = log πθ(y_t | x, y_<t), ℓold_t the policy that sampled the batch as the
trainer recomputes it, c_t = exp(ℓ_t − ℓold_t) (or GSPO's sequence ratio), m_t the completion mask, A
the advantage (per sequence, broadcast to its tokens, or per token). PPO's clipped surrogate is
−min(c_t·A, clip(c_t, 1 − ε_low, 1 + ε_high)·A) (``clipped_surrogate``).

Two other surrogates take the clipped one's place (``surrogate``), as TRL 1.16's loss types of
the same names:

    "cispo"  L_t = −sg(min(c_t, C))·A·ℓ_t        (MiniMax-M1, arXiv 2506.13585; C = ``cispo_max``, the
                                                  one-sided cap of ScaleRL and TRL, MiniMax-M1's 1 + ε_high)
    "sapo"   L_t = −(4/τ)·σ(τ(c_t − 1))·A,  τ = τ_pos if A > 0 else τ_neg   (SAPO, arXiv 2511.20347)

    "vespo"  L_t = −sg(φ(w_i))·A·ℓ_t,  φ(w) = e^λ·w^k·e^{−λw},  w_i = Π_t c_t (× the sampler's token
             weights when on), k, λ by the sign of A   (VESPO, arXiv 2602.10693; ``vespo_weights``)

and one that replaces the whole sequence's loss, as verl's ``geo_mean`` policy loss:

    "gmpo"   ℓ_i = −Ā_i · exp( Σ_t m_t·g_t / Σ_t m_t ),  g_t = s_t·min(s_t·d_t, s_t·clamp(d_t, −ε_low, ε_high)),
             d_t = ℓ_t − ℓold_t, s_t = sign(A_t), Ā_i = Σ_t m_t·A_t / Σ_t m_t
             (Geometric-Mean Policy Optimization, Zhao et al. 2025, arXiv 2507.20673; ``gmpo_surrogate``)

GMPO maximises the geometric mean of the token ratios, each clipped in log space (ε 0.4 in the
paper and verl's recipe: ratios within e^{±0.4}): a token whose log-ratio is past the bound on the
side its advantage pushes stops contributing gradient, as in PPO. The loss is one value per
sequence (shape (B, 1)); "seq_mean_token_mean" aggregation gives exactly ℓ_i, as verl's mean over
sequences. With the sampler's token weights on, the sequence is weighted by their geometric mean
(a weight of 0, masked, makes it 0), as verl.

Two that keep a trust region on the change of the sampled token's probability itself, as verl's
``dppo_tv`` and ``dppo_kl`` policy losses (Divergence Proximal Policy Optimization, "Rethinking the
Trust Region in LLM Reinforcement Learning", arXiv 2602.04879), with p_t = e^{ℓ_t}, p̂_t = e^{ℓold_t}:

    "dppo_tv", "dppo_kl"   L_t = −A·sg(min(c_t, C))·ℓ_t·v_t,   v_t = 1 inside the trust region, else 0
        TV: v_t = [p_t − p̂_t ≤ ε_high] where A > 0, [p_t − p̂_t ≥ −ε_low] elsewhere
        KL: v_t = [KL_b ≤ ε_high or p_t ≤ p̂_t] where A > 0, [KL_b ≤ ε_low or p_t ≥ p̂_t] elsewhere,
            KL_b = p̂·(ℓold − ℓ) + (1 − p̂)·log((1 − p̂ + 1e-8)/(1 − p + 1e-8)), the binary KL
    (C = ``dppo_ratio_cap``; the log-ratio clamped to ±20 first, as verl). On-policy (c = 1, v = 1)
    the gradient is the policy gradient −A·∇ℓ; a token whose probability has left the region in the
    direction its advantage pushes stops contributing, whatever its ratio.

"pg" is the plain policy gradient L_t = −A·ℓ_t, without a ratio (REINFORCE; GPG, Chu et al. 2025,
verl's ``gpg`` policy loss): on-policy its gradient is the clip's, off-policy nothing bounds it.
"dro" adds a quadratic penalty on each token's log-ratio in place of a clip, as verl's ``dro``
policy loss (Direct Reward Optimization's squared log-ratio regulariser; ``dro_surrogate``):

    "dro"    L_t = −(A·ℓ_t − ½·β·(ℓ_t − ℓold_t)²)       (β = ``dro_beta``, which verl leaves unset)

Its gradient −A + β·(ℓ_t − ℓold_t) is the policy gradient's on-policy and pulls a token back
towards the sampling policy by as much as it has moved since.

Two that act on the tokens whose log-prob and advantage covary most over the step (Cui et al.
2025, "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models", arXiv
2505.22617; verl's ``clip_cov`` and ``kl_cov`` policy losses), with cov_t = (A_t − Ā)(ℓ_t − ℓ̄), the
means over the step's completion tokens, and the selection s_t ∈ {0, 1} given (``cov_selected``):

    "clip_cov"  L_t = −min(c_t·A, clip(c_t)·A)·(1 − s_t)    s: ⌊r·N⌋ (at least 1) tokens drawn at
                random among those with lb < cov_t < ub that the clip leaves unclipped
    "kl_cov"    L_t = −c_t·A + s_t·κ·|ℓ_t − ℓold_t|           s: the ⌊r·N⌋ (at least 1) tokens of
                largest cov_t; no clip (as verl's)

(N the step's completion tokens, r = ``cov_ratio``, κ = ``kl_cov_coef``). The selection is the
step's, over every process's completions (``training/forward/policy_gradient.py``), so no split of
the step changes it; verl selects within each micro-batch. With one update per round (ℓold = ℓ)
KL-Cov's penalty |ℓ − ℓold| and its gradient are 0 (|x| has gradient 0 at 0): it acts from the
second update of a round on.

CISPO keeps every token's gradient, weighted by the capped ratio (sg: no gradient through it);
SAPO's sigmoid gate has gradient −4σ(1−σ)·c·A·∇ℓ, the policy gradient at c = 1, fading smoothly
away from it; VESPO's weight is 1 at w = 1 and falls off on both sides, faster for a sequence far
from its sampler. All are 0 with their gradient where A = 0. The KL term and the sampler weight w_t
apply to them as to the clipped one.

Truncated importance sampling (rollout/trainer mismatch: a vLLM or low-precision sampler draws the
tokens, the trainer recomputes ℓold). As TRL 1.16 ``vllm_importance_sampling_mode`` with
``vllm_importance_sampling_clip_max``/``clip_min`` (``is_clip_max``/``is_clip_min`` here, default
3.0/None as TRL), with d_t = m_t·(ℓold_t − ℓsampler_t):

    token_truncate:     w_t = clamp(e^{d_t}, C_min, C_max)               (Yao et al. 2025, TIS)
    token_mask:         w_t = e^{d_t}, or 0 where it is outside [C_min, C_max]
    sequence_truncate:  w_i = clamp(e^{Σ_t d_t}, C_min, C_max)           (one weight per sequence)
    sequence_mask:      w_i = e^{Σ_t d_t}, or 0 outside [C_min, C_max]

``token_truncate`` with no C_min is the brief's min(e^{ℓold − ℓsampler}, C). The sequence weight is the
product of the token ratios (a sum of log-ratios, not GSPO's mean). The weight is a constant (no
gradient) and multiplies the surrogate only, not the KL term, as in TRL; VESPO takes the token
weights into its sequence weight instead (and refuses the sequence modes, as TRL does).

Two guards against stale samples, as TRL 1.16 has them: ``delta`` (INTELLECT-2, arXiv 2505.07291)
caps the first term's ratio, −min(min(c, δ)·A, clip(c)·A), so a token with A < 0 cannot push
without bound; ``off_policy_mask`` (DeepSeek-V3.2, arXiv 2512.02556) leaves out of the policy
term a completion with A < 0 whose mean token log-ratio of the sampler to the policy exceeds the
threshold (``off_policy_keep``). Both act per token or per completion, so no split of a step
changes them.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch

ISMode = Literal["off", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]
IS_MODES = get_args(ISMode)


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float,
                      delta: float | None = None) -> torch.Tensor:
    """−min(c·A, clip(c, 1 − ε_low, 1 + ε_high)·A), elementwise with broadcasting.

    Where the clipped term is the smaller one the loss is constant in c, so its gradient is 0: a
    token with A > 0 and c > 1 + ε_high, or A < 0 and c < 1 − ε_low, stops pushing. ``delta``
    (INTELLECT-2's two-sided clipping) puts min(c, δ) in the first term, so a token with A < 0 and
    c > δ also stops (its loss −δ·A instead of growing with c)."""
    first = ratio if delta is None else ratio.clamp(max=delta)
    return -torch.minimum(first * advantages, ratio.clamp(1 - eps_low, 1 + eps_high) * advantages)


def off_policy_keep(logps: torch.Tensor, behaviour_logps: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """DeepSeek-V3.2's off-policy sequence mask (arXiv 2512.02556, eq. 9; TRL 1.16
    ``get_off_policy_mask``): 1 to keep, 0 to leave a completion out, (B, 1) (or (B, T) for
    per-token advantages). Kept: A ≥ 0, or the mean over its tokens of ℓbehaviour_t − ℓ_t (a
    sample estimate of KL(behaviour ‖ current)) at most ``threshold``; a NaN behaviour log-prob
    counts 0. Detached."""
    with torch.no_grad():
        kl = torch.where(mask, torch.nan_to_num(behaviour_logps - logps, nan=0.0), torch.zeros_like(logps))
        mean_kl = kl.sum(dim=-1, keepdim=True) / mask.sum(dim=-1, keepdim=True).clamp(min=1).to(kl.dtype)
        return ((advantages >= 0) | (mean_kl <= threshold)).to(logps.dtype)


def cispo_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, logps: torch.Tensor, cap: float,
                    floor: float | None = None) -> torch.Tensor:
    """CISPO: −sg(min(c, cap))·A·ℓ, elementwise with broadcasting (MiniMax-M1, arXiv 2506.13585);
    with ``floor`` the weight is clamp(c, floor, cap), MiniMax-M1's two-sided form (verl's ``cispo``:
    floor 1 − ε_low, cap 1 + ε_high).

    The ratio is a constant weight (no gradient through it), so every token keeps its gradient
    −min(c, cap)·A·∇ℓ, where the clipped surrogate drops the gradient of a clipped token; on-policy
    (c = 1) that is the clipped surrogate's gradient −A·∇ℓ, though the loss value is −A·ℓ, not −A."""
    return -ratio.detach().clamp(min=floor, max=cap) * advantages * logps


def sapo_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, tau_pos: float, tau_neg: float) -> torch.Tensor:
    """SAPO: −(4/τ)·σ(τ(c − 1))·A, τ = τ_pos where A > 0, else τ_neg (Soft Adaptive Policy
    Optimization, arXiv 2511.20347). Its gradient −4σ(1 − σ)·c·A·∇ℓ is the plain policy gradient at c = 1
    (σ = 1/2) and fades smoothly as c leaves 1 on either side, faster for the larger τ (by default
    τ_neg: the gates of negative advantages close faster)."""
    tau = torch.where(advantages > 0, ratio.new_tensor(tau_pos), ratio.new_tensor(tau_neg))  # in the ratio's dtype
    return -torch.sigmoid(tau * (ratio - 1)) * (4 / tau) * advantages


def vespo_weights(token_log_ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                  sampler_weights: torch.Tensor | None, k_pos: float, lambda_pos: float, k_neg: float,
                  lambda_neg: float) -> torch.Tensor:
    """VESPO's weight φ(w) = e^λ·w^k·e^{−λw} (φ(1) = 1) of each sequence's ratio w, detached: (B, 1)
    for one advantage per sequence, (B, T) for per-token ones (k, λ by each advantage's sign).

    log w = Σ_t m_t·clamp(ℓ_t − ℓold_t, ±20) + Σ_t clamp(log ω_t, log 1e-8, 20) (ω_t the token
    importance weights against the sampler, when on), clamped to [log 1e-8, 20]; k, λ are the
    ``_pos`` ones where A ≥ 0, else the ``_neg`` ones; a φ that overflows counts 0. These are the
    steps of TRL 1.16's ``get_gamma_weights``. ``token_log_ratio`` (B, T) is 0 on padding."""
    floor = math.log(1e-8)
    with torch.no_grad():
        log_w = torch.where(mask, token_log_ratio.clamp(-20.0, 20.0), torch.zeros_like(token_log_ratio))
        log_w = log_w.sum(dim=-1, keepdim=True)
        if sampler_weights is not None:
            log_w = log_w + sampler_weights.log().clamp(floor, 20.0).sum(dim=-1, keepdim=True)
        log_w = log_w.clamp(floor, 20.0)
        positive = advantages >= 0
        k = torch.where(positive, log_w.new_tensor(k_pos), log_w.new_tensor(k_neg))
        lam = torch.where(positive, log_w.new_tensor(lambda_pos), log_w.new_tensor(lambda_neg))
        phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))
        return phi.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def dro_surrogate(logps: torch.Tensor, token_log_ratio: torch.Tensor, advantages: torch.Tensor, beta: float
                  ) -> torch.Tensor:
    """DRO's per-token loss −(A·ℓ − ½β(ℓ − ℓold)²) (see the module docstring), from the token
    log-ratios ℓ − ℓold (0 on padding, so that no padding value reaches the square's gradient)."""
    return -(advantages * logps - 0.5 * beta * token_log_ratio.square())


def dppo_surrogate(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, divergence: str,
                   eps_low: float, eps_high: float, cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DPPO's per-token loss −A·sg(min(c, cap))·ℓ·sg(v) and its trust-region flags v (1 inside), both
    (B, T) (see the module docstring; ``divergence`` "tv" or "kl"). ``advantages`` (B, 1) or (B, T)."""
    with torch.no_grad():
        ratio = torch.exp((logps - old_logps).clamp(-20.0, 20.0)).clamp(max=cap)
        p, p_old = logps.exp(), old_logps.exp()
        if divergence == "tv":
            up, down = p - p_old <= eps_high, p - p_old >= -eps_low
        else:
            binary_kl = p_old * (old_logps - logps) + (1 - p_old) * torch.log((1 - p_old + 1e-8) / (1 - p + 1e-8))
            up, down = (binary_kl <= eps_high) | (p <= p_old), (binary_kl <= eps_low) | (p >= p_old)
        inside = torch.where(advantages > 0, up, down).to(logps.dtype)
    return -advantages * ratio * logps * inside, inside


def gmpo_surrogate(token_log_ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, eps_low: float,
                   eps_high: float, sampler_weights: torch.Tensor | None = None) -> torch.Tensor:
    """GMPO's loss of each sequence, (B, 1): −Ā·exp(mean_t g_t) (see the module docstring; verl's
    ``geo_mean`` policy loss). ``token_log_ratio`` (B, T): d_t = ℓ_t − ℓold_t (0 on padding);
    ``advantages`` (B, 1) or (B, T); ``sampler_weights`` (B, T): the token importance weights
    against the sampler, whose geometric mean over the sequence's tokens multiplies its loss
    (detached). A sequence without tokens has loss 0.

    Gradient: where A_t > 0 and d_t > ε_high, or A_t < 0 and d_t < −ε_low, g_t is the constant
    bound; elsewhere g_t = d_t. So ∂ℓ_i/∂ℓ_t = −Ā_i·r_i/|y_i| on the tokens left unclipped, r_i =
    exp(mean_t g_t), and 0 on the clipped ones."""
    adv = advantages.expand(mask.shape)
    sign = torch.sign(adv)
    clamped = token_log_ratio.clamp(-eps_low, eps_high)
    g = sign * torch.minimum(sign * token_log_ratio, sign * clamped)
    count = mask.sum(dim=-1, keepdim=True).clamp(min=1).to(g.dtype)
    zero = torch.zeros_like(g)
    ratio = torch.exp(torch.where(mask, g, zero).sum(dim=-1, keepdim=True) / count)
    mean_adv = torch.where(mask, adv, zero).sum(dim=-1, keepdim=True) / count
    loss = -mean_adv * ratio
    if sampler_weights is not None:
        logw = torch.where(mask, sampler_weights.detach().expand(mask.shape).log(), zero.detach())
        loss = loss * torch.exp(logw.sum(dim=-1, keepdim=True) / count)
    return loss


def importance_weights(old_logps: torch.Tensor, sampler_logps: torch.Tensor, mask: torch.Tensor, mode: ISMode,
                       clip_max: float | None = 3.0, clip_min: float | None = None) -> torch.Tensor:
    """Truncated/masked importance-sampling weights of the trainer's ℓold against the sampler's
    log-probs, detached: (B, T) for the token modes, (B, 1) for the sequence modes (see the module
    docstring). d_t = m_t·(ℓold_t − ℓsampler_t); a NaN sampler log-prob counts as d_t = 0 (as TRL)."""
    if mode not in IS_MODES or mode == "off":
        raise ValueError(f"importance-sampling mode must be one of {IS_MODES[1:]}, got {mode!r}")
    d = torch.where(mask.bool(), old_logps.detach() - sampler_logps.detach(), torch.zeros_like(old_logps))
    d = torch.nan_to_num(d, nan=0.0)
    if mode.startswith("sequence"):
        d = d.sum(dim=-1, keepdim=True)
    w = torch.exp(d)
    if mode.endswith("truncate"):
        return w if clip_min is None and clip_max is None else w.clamp(min=clip_min, max=clip_max)
    low = -math.inf if clip_min is None else clip_min
    high = math.inf if clip_max is None else clip_max
    return torch.where((w < low) | (w > high), torch.zeros_like(w), w)
