"""Advantages, returns and KL estimates for online policy-gradient RL (ALGORITHMS.md 6.3-6.5, 6.8).

Everything here is computed once per optimizer step, on the whole step's batch (gathered over
processes), *before* that batch is split into micro-batches: group and batch statistics must see
every sample of the step, and the loss then treats the results as constants. All functions are
pure torch, compute in the dtype they are given (float64 stays float64), and return detached
tensors of the input's shape unless said otherwise.

Shapes: ``B`` sequences (completions), ``P`` prompts with ``G`` samples each (``B = P·G``),
``T`` completion positions. Masks ``mask_BT`` are 1 on a completion's tokens and 0 on padding;
completions are right-padded (token t of a completion at column t).

Sequence-level advantages (one number per completion):

- ``group_advantages``: GRPO (Shao et al. 2024, "DeepSeekMath"), A_i = (r_i − mean_G r)/(std + ε),
  with the std of the group, of the batch, or none (Dr. GRPO: Liu et al. 2025, "Understanding
  R1-Zero-Like Training"), as TRL 1.16's ``scale_rewards`` = "group" / "batch" / "none".
- ``gdpo_advantages``: GDPO (group reward-decoupled normalisation), TRL 1.16's
  ``multi_objective_aggregation="normalize_then_sum"``: each reward term normalised within its group
  as GRPO's reward is, the weighted sum of those, divided by its std over the batch.
- ``gpg_advantages``: GPG (Chu et al. 2025): the group mean as baseline, scaled by the batch's
  share of samples with a non-zero reward.
- ``rloo_advantages``: RLOO (Ahmadian et al. 2024, "Back to Basics"), A_i = r_i − mean_{j≠i} r_j.
- ``remax_advantages``: ReMax (Li et al. 2023), A_i = r_i − r(greedy response to the same prompt).
- ``opo_advantages``: OPO (Hao et al. 2025), A_i = r_i − Σ_j |y_j|·r_j / Σ_j |y_j| (length-weighted).
- ``passk_advantages``: pass@k (Tang et al. 2025), A_i = max(0, r_i − max_{j≠i} r_j), over the std.

Token-level advantages (one number per completion token):

- ``kl_estimate``: Schulman's k1, k2, k3 estimators of KL(π‖π_ref) per token.
- ``token_rewards``: −β·KL_t on every token plus the sequence score on the last token.
- ``discounted_returns``: G_t = r_t + γ·G_{t+1}.
- ``reinforce_pp_advantages``: REINFORCE++ (Hu 2025, "REINFORCE++"), whitened returns, no critic.
- ``gae``: generalized advantage estimation (Schulman et al. 2016) with a critic's values.
- ``whiten``: masked mean/variance normalisation over all valid tokens of the batch.
"""

from __future__ import annotations

from typing import Literal

import torch

Scale = Literal["group", "batch", "none"]
KLEstimator = Literal["k1", "k2", "k3"]

GRPO_EPS = 1e-4  # TRL 1.16 grpo_trainer: advantages / (std + 1e-4)
PASSK_EPS = 1e-6  # verl core_algos.compute_grpo_passk_outcome_advantage: epsilon=1e-6
WHITEN_EPS = 1e-8  # OpenRLHF experience_maker: rsqrt(max(var, 1e-8))


def _as_float(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x)
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def _group_index(rewards: torch.Tensor, group_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Flattened rewards (B,), each one's group index in [0, n_groups) (B,), and n_groups.

    (P, G) rewards: row p is group p. (B,) rewards: ``group_ids`` (B,) says which samples share a
    prompt; ids may be any integers, in any order, and groups may differ in size."""
    if rewards.dim() == 2:
        if group_ids is not None:
            raise ValueError("rewards of shape (P, G) are already grouped by row; give group_ids only with (B,) rewards")
        n_groups, size = rewards.shape
        index = torch.arange(n_groups, device=rewards.device).repeat_interleave(size)
        return rewards.reshape(-1), index, n_groups
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be (B,) with group_ids or (P, G), got shape {tuple(rewards.shape)}")
    if group_ids is None:
        raise ValueError("rewards of shape (B,) need group_ids (B,) saying which samples answer the same prompt")
    if group_ids.shape != rewards.shape:
        raise ValueError(f"group_ids {tuple(group_ids.shape)} must have the shape of rewards {tuple(rewards.shape)}")
    _, index = torch.unique(group_ids, return_inverse=True)
    return rewards, index, int(index.max()) + 1 if index.numel() else 0


def _group_sum(x: torch.Tensor, index: torch.Tensor, n_groups: int) -> torch.Tensor:
    return torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, index, x)


def _centred(r: torch.Tensor, index: torch.Tensor, n_groups: int, weight: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """r − mean of its group (B,), the mean weighted by ``weight`` (B,) where given (OPO), and each
    sample's group size (B,).

    The mean is taken of r − (group minimum) and the minimum added back, so a group of equal
    rewards gives exactly 0 (a plain sum/G can be off by one rounding step)."""
    low = torch.full((n_groups,), float("inf"), dtype=r.dtype, device=r.device)
    low = low.scatter_reduce(0, index, r, reduce="amin")
    shifted = r - low[index]
    counts = _group_sum(torch.ones_like(r), index, n_groups)
    if weight is None:
        return shifted - (_group_sum(shifted, index, n_groups) / counts)[index], counts[index]
    mean = _group_sum(weight * shifted, index, n_groups) / _group_sum(weight, index, n_groups)
    return shifted - mean[index], counts[index]


def _group_std(centred: torch.Tensor, counts: torch.Tensor, index: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Each sample's group's unbiased (n − 1) std (B,) from the centred rewards; 0 for a group of one."""
    sq = _group_sum(centred * centred, index, n_groups)[index]
    return torch.where(counts > 1, sq / (counts - 1).clamp(min=1), torch.zeros_like(sq)).sqrt()


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor | None = None, *, scale: Scale = "group",
                     eps: float = GRPO_EPS) -> torch.Tensor:
    """GRPO advantages: each reward minus its group's mean, divided by a std plus ε.

    ``rewards``: (P, G), one row per prompt, or (B,) with ``group_ids`` (B,). Returns the same shape.

    - ``scale="group"``: A_i = (r_i − mean_g)/(std_g + ε), std over the sample's group (GRPO paper;
      TRL ``scale_rewards="group"``, its default).
    - ``scale="batch"``: A_i = (r_i − mean_g)/(std_batch + ε): still the *group* mean, but the std of
      all B rewards of the batch, not of the centred values (TRL ``"batch"``, from "PPO Lite").
    - ``scale="none"``: A_i = r_i − mean_g (Dr. GRPO; TRL ``"none"``).

    The std is TRL 1.16's: the unbiased (Bessel-corrected, divide by n − 1) standard deviation, and ε
    (1e-4) is added to the std, not to the variance. A group of one sample has advantage 0 (TRL: its
    std is undefined and the NaN advantage is set to 0; with G = 1 it sets the std to 0). A group
    whose rewards are all equal has advantage exactly 0. Advantages of a group sum to 0 (up to
    rounding) for "group" and "none"; "batch" scales every group by the same number, so they do too.

    Call it on the whole optimizer step's rewards: "batch" needs every reward of the step.
    """
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    rewards = _as_float(rewards).detach()
    r, index, n_groups = _group_index(rewards, group_ids)
    centred, counts = _centred(r, index, n_groups)
    if scale == "group":
        advantages = centred / (_group_std(centred, counts, index, n_groups) + eps)
    elif scale == "batch":
        std = r.std(unbiased=True) if r.numel() > 1 else r.new_zeros(())
        advantages = centred / (std + eps)
    else:
        advantages = centred
    return advantages.reshape(rewards.shape)


def gdpo_advantages(components_PGK: torch.Tensor, weights_K, eps: float = GRPO_EPS) -> torch.Tensor:
    """Advantages (P, G) from K reward terms normalised one by one, as TRL 1.16's
    ``multi_objective_aggregation="normalize_then_sum"`` (GDPO):

        Â_k = group_advantages(r_k, scale="group")          each term within its group: (r − mean_g)/(std_g + ε)
        s   = Σ_k w_k · Â_k
        A   = s / (std_batch(s) + ε)                         the unbiased std over all P·G completions

    ``components_PGK`` (P, G, K): each completion's raw value of each term (before its weight);
    ``weights_K``: the terms' weights. A term that ties within a group adds 0 to that group, so the
    group's advantage is decided by the terms that differ there, each at its own scale: a term of
    large spread cannot drown one of small spread, as it does when the weighted sum is normalised
    (GRPO's "sum_then_normalize"). TRL also subtracts the batch mean of s before dividing; that
    mean is 0 by construction (every Â_k sums to 0 over each group), so it is left out here, and a
    group whose every term tied keeps advantage exactly 0 (TRL's differs from this by the rounding
    of a mean of 0, about 1e-17). With one term this is GRPO's advantage divided by its batch std."""
    comps = _as_float(components_PGK).detach()
    if comps.dim() != 3:
        raise ValueError(f"components must be (P, G, K), got shape {tuple(comps.shape)}")
    w = torch.as_tensor(weights_K, dtype=comps.dtype, device=comps.device)
    if w.shape != (comps.shape[-1],):
        raise ValueError(f"{w.numel()} weights for {comps.shape[-1]} reward terms")
    normalised = torch.stack([group_advantages(comps[..., k], scale="group", eps=eps)
                              for k in range(comps.shape[-1])], -1)
    total = (normalised * w).sum(-1)
    std = total.std(unbiased=True) if total.numel() > 1 else total.new_zeros(())
    return total / (std + eps)


def rloo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor | None = None) -> torch.Tensor:
    """REINFORCE leave-one-out: A_i = r_i − (1/(G−1))·Σ_{j≠i} r_j over the sample's group.

    Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from
    Human Feedback in LLMs"; TRL's RLOOTrainer. ``rewards``: (P, G) or (B,) with ``group_ids`` (B,);
    returns the same shape. Equivalently A_i = G/(G−1)·(r_i − mean_G r), which is how it is computed
    (so equal rewards give exactly 0). The advantages of a group sum to 0. A group of one sample has
    no baseline and gets 0. RLOO's sequence-level KL penalty (ALGORITHMS.md 6.4, TRL RLOO's
    r_i − β·Σ_t(ℓold,t − ℓref,t)) is folded into ``rewards`` by the caller before this.
    """
    rewards = _as_float(rewards).detach()
    r, index, n_groups = _group_index(rewards, group_ids)
    centred, counts = _centred(r, index, n_groups)
    advantages = torch.where(counts > 1, centred * counts / (counts - 1).clamp(min=1), torch.zeros_like(centred))
    return advantages.reshape(rewards.shape)


def remax_advantages(rewards: torch.Tensor, greedy_rewards: torch.Tensor) -> torch.Tensor:
    """ReMax: A_i = r_i − r(greedy response to the same prompt).

    Li et al. 2023, "ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method for
    Aligning Large Language Models". ``rewards``: (B,) with ``greedy_rewards`` (B,) (the baseline of
    each sample's prompt), or (P, G) with ``greedy_rewards`` (P,). Returns the shape of ``rewards``.
    """
    rewards, greedy = _as_float(rewards).detach(), _as_float(greedy_rewards).detach()
    if rewards.dim() == 2 and greedy.dim() == 1:
        greedy = greedy.unsqueeze(-1)
    if greedy.shape != rewards.shape and not (rewards.dim() == 2 and greedy.shape == (rewards.shape[0], 1)):
        raise ValueError(f"greedy_rewards {tuple(greedy_rewards.shape)} does not match rewards {tuple(rewards.shape)}")
    return rewards - greedy


def opo_advantages(rewards: torch.Tensor, lengths: torch.Tensor, group_ids: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """OPO's optimal baseline: A_i = r_i − b, b = Σ_j |y_j|·r_j / Σ_j |y_j| over the sample's group.

    Hao et al. 2025, "On-Policy RL with Optimal Reward Baseline" (arXiv 2505.23585); verl's
    ``compute_opo_outcome_advantage`` (``adv_estimator=opo``). |y_j| is completion j's length in
    tokens, the tokens its advantage trains (verl: ``response_mask.sum(-1)``); no std scaling.
    ``rewards`` and ``lengths``: (P, G), or (B,) with ``group_ids`` (B,); returns the shape of
    ``rewards``. With equal lengths b is the group's mean (GRPO without scaling, Dr. GRPO).

    The weighted mean is taken of r − (group minimum) and the minimum added back, so a group of
    equal rewards gives exactly 0. A group whose lengths are all 0 (nothing to train) weighs its
    samples equally instead of dividing 0 by 0. A group of one sample has b = r and advantage 0;
    verl instead sets its baseline to 0 (A = r, as its GRPO and RLOO do for a group of one), which
    alignlab never meets in training: a run with one sample per prompt is refused.
    """
    rewards = _as_float(rewards).detach()
    lengths = torch.as_tensor(lengths, device=rewards.device).detach()
    if lengths.shape != rewards.shape:
        raise ValueError(f"lengths {tuple(lengths.shape)} must have the shape of rewards {tuple(rewards.shape)}")
    if bool((lengths < 0).any()):
        raise ValueError("lengths must be >= 0 (tokens per completion)")
    r, index, n_groups = _group_index(rewards, group_ids)
    weight = lengths.reshape(-1).to(r.dtype)
    total = _group_sum(weight, index, n_groups)[index]
    weight = torch.where(total > 0, weight, torch.ones_like(weight))
    return _centred(r, index, n_groups, weight)[0].reshape(rewards.shape)


def gpg_advantages(rewards: torch.Tensor, group_ids: torch.Tensor | None = None) -> torch.Tensor:
    """GPG's advantage (Chu et al. 2025, "GPG: A Simple and Strong Reinforcement Learning Baseline
    for Model Reasoning", arXiv 2504.02546; verl's ``adv_estimator=gpg``, ``f_norm`` 1):

        A_i = α·(r_i − mean_g r),   α = B / max(1, #{i : r_i ≠ 0})

    B the batch's samples. α scales the batch's gradient up by the share of samples that scored at
    all (the paper's correction for a batch in which few samples carry a signal). ``rewards``: (P,
    G) or (B,) with ``group_ids``; call it on the whole step's batch (α is the batch's). A group of
    equal rewards has advantage exactly 0 (the mean taken around the group minimum); a group of
    one has 0, where verl's baseline for it is 0 (A = α·r): alignlab refuses G = 1."""
    rewards = _as_float(rewards).detach()
    r, index, n_groups = _group_index(rewards, group_ids)
    centred, _ = _centred(r, index, n_groups)
    alpha = r.numel() / max(1, int((r != 0).sum()))
    return (alpha * centred).reshape(rewards.shape)


def passk_advantages(rewards: torch.Tensor, group_ids: torch.Tensor | None = None, *, scale: Scale = "group",
                     eps: float = PASSK_EPS) -> torch.Tensor:
    """Pass@k: only a group's best sample gets an advantage, its margin over the second best.

    Tang et al. 2025, "Optimizing Language Models for Inference Time Objectives using
    Reinforcement Learning" (arXiv 2503.19595), the leave-one-out advantage of the objective
    max_i r_i over the group's k = G samples; verl's ``compute_grpo_passk_outcome_advantage``
    (``adv_estimator=grpo_passk``):

        A_i = max(r) − max_{j≠i} r_j = max(0, r_i − max_{j≠i} r_j)

    which is r_max − r_second_max for the best sample and 0 for every other. When the best reward
    is shared (a tie at the top, or all rewards equal) every advantage of the group is 0.
    ``scale="group"`` divides by the group's std plus ε: the unbiased (n − 1) std of its rewards
    and ε = 1e-6 (verl's ``norm_adv_by_std_in_grpo`` = True, its default, and its ``epsilon``);
    ``scale="none"`` keeps the margin (``norm_adv_by_std_in_grpo`` = False). ``rewards``: (P, G),
    or (B,) with ``group_ids`` (B,); returns the same shape. A group of one sample has no second
    best and gets 0 (verl raises; alignlab refuses a run with one sample per prompt).
    """
    if scale not in ("group", "none"):
        raise ValueError(f"scale must be 'group' or 'none', got {scale!r}")
    rewards = _as_float(rewards).detach()
    r, index, n_groups = _group_index(rewards, group_ids)
    empty = torch.full((n_groups,), float("-inf"), dtype=r.dtype, device=r.device)
    best = empty.scatter_reduce(0, index, r, reduce="amax")[index]
    is_best = r == best
    n_best = _group_sum(is_best.to(r.dtype), index, n_groups)[index]
    below = torch.where(is_best, torch.full_like(r, float("-inf")), r)
    second = empty.scatter_reduce(0, index, below, reduce="amax")[index]
    winner = is_best & (n_best == 1) & (second > float("-inf"))
    advantages = torch.where(winner, best - torch.where(winner, second, best), torch.zeros_like(r))
    if scale == "group":
        advantages = advantages / (_group_std(*_centred(r, index, n_groups), index, n_groups) + eps)
    return advantages.reshape(rewards.shape)


def kl_estimate(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: KLEstimator = "k3",
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token estimates of KL(π‖π_ref) from samples of π (J. Schulman, "Approximating KL
    Divergence", 2020). With u = ref_logps − logps (log π_ref/π at the sampled token):

        k1 = −u            (unbiased, can be negative)
        k2 = u²/2          (biased, ≥ 0)
        k3 = e^u − u − 1   (unbiased, ≥ 0; computed as expm1(u) − u)

    ``logps``, ``ref_logps``: (B, T) (any equal shapes). Returns their shape, zero where ``mask`` is
    0 when a mask is given. Gradients flow through ``logps`` (GRPO puts β·k3 in the loss); detach
    the inputs to use the estimate as a reward (PPO, REINFORCE++ use k1 of the sampling policy).
    OpenRLHF clamps its estimate to [−10, 10]; this does not.
    """
    u = ref_logps - logps
    if estimator == "k1":
        kl = -u
    elif estimator == "k2":
        kl = 0.5 * u * u
    elif estimator == "k3":
        kl = torch.expm1(u) - u
    else:
        raise ValueError(f"estimator must be 'k1', 'k2' or 'k3', got {estimator!r}")
    if mask is not None:
        kl = torch.where(mask.bool(), kl, torch.zeros_like(kl))
    return kl


def last_token_index(mask_BT: torch.Tensor) -> torch.Tensor:
    """(B,) column of each row's last valid token; −1 for a row with none."""
    T = mask_BT.shape[-1]
    positions = torch.arange(T, device=mask_BT.device).expand_as(mask_BT)
    return torch.where(mask_BT.bool(), positions, torch.full_like(positions, -1)).amax(dim=-1)


def token_rewards(scores: torch.Tensor, mask_BT: torch.Tensor, kl_BT: torch.Tensor | None = None,
                  beta: float = 0.0) -> torch.Tensor:
    """Per-token rewards r_t = −β·KL_t, plus the sequence's score on its last valid token.

    The RLHF reward shaping of PPO (Ouyang et al. 2022; ALGORITHMS.md 6.5) and REINFORCE++, as in
    OpenRLHF's ``compute_reward``. ``scores``: (B,), ``mask_BT``: (B, T), ``kl_BT``: (B, T) per-token KL
    estimates (``kl_estimate`` of the sampling policy against the reference, usually k1). Returns
    (B, T), zero on padding. A row with no valid token gets all zeros (its score has nowhere to go).
    """
    scores = _as_float(scores).detach()
    mask = mask_BT.bool()
    dtype = scores.dtype if kl_BT is None else torch.promote_types(scores.dtype, kl_BT.dtype)
    rewards = torch.zeros(mask.shape, dtype=dtype, device=scores.device)
    if kl_BT is not None and beta != 0.0:
        rewards = torch.where(mask, -beta * kl_BT.detach().to(dtype), rewards)
    last = last_token_index(mask)
    rows = torch.nonzero(last >= 0).squeeze(-1)
    rewards[rows, last[rows]] += scores[rows].to(dtype)
    return rewards


def discounted_returns(rewards_BT: torch.Tensor, mask_BT: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Return-to-go G_t = r_t + γ·G_{t+1} over each row's valid tokens (B, T); 0 on padding.

    γ = 1 (the default, as in REINFORCE++ and OpenRLHF) sums the rewards from t to the end.
    """
    mask = mask_BT.to(rewards_BT.dtype)
    rewards = rewards_BT.detach() * mask
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return returns * mask


def whiten_stats(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, population variance) of a flat tensor of valid values: what ``whiten`` normalises by.
    Pass every process's valid values, concatenated in rank order, to whiten a batch split over
    processes exactly as one process would."""
    x = values.detach().reshape(-1)
    if x.numel() == 0:
        zero = torch.zeros((), dtype=x.dtype)
        return zero, zero
    mean = x.sum() / x.numel()
    return mean, ((x - mean) ** 2).sum() / x.numel()


def whiten(values_BT: torch.Tensor, mask_BT: torch.Tensor, *, center: bool = True, scale: bool = True,
           eps: float = WHITEN_EPS, stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """(x − mean)/std over all valid tokens of the batch (B, T); 0 on padding.

    mean = Σ m·x / Σ m and var = Σ m·(x − mean)² / Σ m (the biased, population variance), and the
    scale is rsqrt(max(var, eps)): OpenRLHF's advantage normalisation for REINFORCE++ and GAE.
    ``center=False`` keeps the mean (x·rstd); ``scale=False`` only subtracts it (OpenRLHF's
    ``no_std_norm``). The statistics are of the tensor given, so pass the whole optimizer step's
    batch, or give ``stats`` (``whiten_stats`` of the whole batch) to whiten a part of it.
    OpenRLHF leaves (0 − mean)·rstd on padding; here padding is 0 (losses mask it anyway).
    """
    mask = mask_BT.bool()
    x = values_BT.detach()
    if stats is None:
        if not mask.any():
            return torch.zeros_like(x)
        stats = whiten_stats(x[mask])
    mean, var = (s.to(x.dtype) for s in stats)
    out = x - mean if center else x
    if scale:
        out = out * torch.rsqrt(var.clamp(min=eps))
    return torch.where(mask, out, torch.zeros_like(out))


def reinforce_pp_advantages(scores: torch.Tensor, mask_BT: torch.Tensor, kl_BT: torch.Tensor | None = None, *,
                            beta: float = 0.0, gamma: float = 1.0,
                            normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ advantages and returns, both (B, T).

    Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models";
    OpenRLHF ``advantage.estimator="reinforce"``:

        r_t = −β·KL_t + score·[t = last valid token]     (``token_rewards``)
        G_t = Σ_{s≥t} γ^{s−t} r_s                         (``discounted_returns``, γ = 1 by default)
        A_t = whiten(G)_t over every valid token of the batch  (``whiten``)

    ``scores``: (B,) sequence rewards; ``kl_BT``: (B, T) per-token KL estimates of the sampling
    policy against the reference (OpenRLHF's default is k1: ℓold,t − ℓref,t). Returns (A, G), zero on
    padding; ``normalize=False`` returns A = G. REINFORCE++-baseline (OpenRLHF
    ``"reinforce_baseline"``) is this with scores already centred per prompt
    (``group_advantages(scores, ..., scale="none")``). Call on the whole step's batch.
    """
    returns = discounted_returns(token_rewards(scores, mask_BT, kl_BT, beta), mask_BT, gamma)
    advantages = whiten(returns, mask_BT) if normalize else returns.clone()
    return advantages, returns


OTB_EPS = 1e-8


def otb_energy(logps_BT: torch.Tensor, sum_pi_sq_BT: torch.Tensor) -> torch.Tensor:
    """OTB's per-token energy ‖s_t‖² = 1 − 2·π_t + Σ_v π_v² (B, T): π_t the sampled token's
    probability, Σ_v π_v² the squared probability mass of the step's whole distribution (the squared
    norm of the logits' score function, ∂ log π_t/∂z = e_t − π)."""
    return 1 - 2 * logps_BT.detach().exp() + sum_pi_sq_BT.detach()


def optimal_token_baseline(returns_BT: torch.Tensor, energy_BT: torch.Tensor, mask_BT: torch.Tensor, group: int,
                           *, zero_tail: bool = True, eps: float = OTB_EPS) -> torch.Tensor:
    """Advantages A_t = G_t − B*_t with the optimal token baseline (B, T), rows prompt-major,
    ``group`` per prompt.

    The Optimal Token Baseline (OTB, arXiv 2602.07078), as verl's
    ``adv_estimator=optimal_token_baseline`` computes it: with W_t = Σ_{j≤t} ‖s_j‖² a completion's energy up to
    token t (``otb_energy``, times ρ̄_j² under an importance-sampling correction), each prompt's
    baseline at position t is

        B*_t = Σ_i G_t^(i)·W_t^(i)·m_t^(i) / (Σ_i W_t^(i)·m_t^(i) + ε)

    over the prompt's completions i that reach position t (m the mask). A prompt with one
    completion has no baseline (A = G). ``zero_tail`` (verl's ``handle_zero_tail``): where one
    completion is strictly the longest of its group, its positions past the second longest, where it
    alone would set the baseline to its own return, get baseline 0 instead. No scaling follows.
    Returns 0 on padding."""
    mask = mask_BT.to(returns_BT.dtype)
    G = returns_BT.detach() * mask
    W = (energy_BT.detach().to(returns_BT.dtype) * mask).cumsum(-1)
    B, T = G.shape
    P = B // group
    Gp, Wp, mp = (x.reshape(P, group, T) for x in (G, W, mask))
    baseline = ((Gp * Wp * mp).sum(1) / ((Wp * mp).sum(1) + eps)).unsqueeze(1).expand(P, group, T).clone()
    if group == 1:
        baseline.zero_()
    elif zero_tail:
        lengths = mp.sum(-1)  # (P, G)
        top2 = lengths.topk(2, dim=1).values
        for p in torch.nonzero(top2[:, 0] > top2[:, 1]).reshape(-1).tolist():
            i = int(lengths[p].argmax())
            baseline[p, i, int(top2[p, 1]):] = 0.0
    return (G - baseline.reshape(B, T)) * mask


def gae(rewards_BT: torch.Tensor, values_BT: torch.Tensor, mask_BT: torch.Tensor, *, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over right-padded completions; returns (advantages, returns).

    Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
    Estimation"; as OpenRLHF ``get_advantages_and_returns`` (PPO, ALGORITHMS.md 6.5: γ = 1, λ = 0.95):

        δ_t = r_t + γ·V_{t+1} − V_t,   V = 0 after the last valid token
        A_t = δ_t + γλ·A_{t+1}
        R_t = A_t + V_t                 (the value target)

    ``rewards_BT`` (``token_rewards``), ``values_BT`` (the critic's values of the sampled states,
    detached) and ``mask_BT``: (B, T). Rewards and values on padding are ignored (treated as 0), so
    the last valid token bootstraps from 0. Both outputs are (B, T), detached, zero on padding; the
    advantages are usually whitened next (``whiten``) over the step's batch.
    """
    mask = mask_BT.to(rewards_BT.dtype)
    rewards = rewards_BT.detach() * mask
    values = values_BT.detach().to(rewards.dtype) * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask
