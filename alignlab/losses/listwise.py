"""Listwise losses: a prompt with a list of responses, ordered best first.

Inputs are ``ListLogps``, all (B, N): ``logps`` summed over response tokens, ``lengths``,
``scores`` ψ (higher is better, non-increasing along a row), ``mask`` (True on real items; a list
may be shorter than N, the padding comes last). Every loss reads only the real items: a padded
item changes neither the loss nor its gradient. Output: (B,) losses, one per list.

Scores. The reference-based losses use s_i = β·(log πθ(y_i) − log πref(y_i)). PRO uses no
reference and scores with the token mean s_k = log πθ(y_k)/|y_k|.

PRO (Song et al. 2024, "Preference Ranking Optimization for Human Alignment"), from the
authors' code: with T_ki = ψ_k − ψ_i for i > k and T_kk = max_{i>k} T_ki,

    L = Σ_{k<n} [ log(ε + e^{s_k·T_kk} + Σ_{i>k} e^{s_i·T_ki}) − s_k·T_kk ]
        + w·(n − 1)²·(−log πθ(y_1))                 (summed log-prob of the best item)

n is the list's own length, ε = 1e-10. ``use_scores=False`` sets T ≡ 1 (lists with ranks but
no scores); then the first part is the Plackett–Luce NLL of the list order over token-mean
scores. Careful: with ``use_scores=True``, a list whose scores are all equal (no rewards given)
has T ≡ 0, and its ranking term is the constant Σ_k log(ε + n − k + 1) with no gradient; data
without rewards want ``use_scores=False``. The SFT weight w defaults to 0.05, the value in the authors' HH and summarisation
training scripts; their argparse default of 2 is not what their runs used, and because the SFT
term is a summed log-prob (tens to hundreds of nats) a weight of 2 would drown the ranking term.

LiPO-λ (Liu et al. 2024, "LiPO: Listwise Preference Optimization through Learning-to-Rank")
[S: secondary summaries, no official code]:

    L = −Σ_{ψ_i > ψ_j} Δ_ij · log σ(s_i − s_j)
    Δ_ij = |G_i − G_j| · |1/D(τ_i) − 1/D(τ_j)|,  G_i = 2^{ψ_i} − 1,  D(τ) = ln(1 + τ)

τ_i is the 1-based rank of item i under the current s (descending, no gradient; ties broken by
list position). The scores are used as labels ψ as given. Only differences of G enter, so the
−1 cancels and a negative G (ψ < 0, e.g. scores made from ranks as −rank) is harmless; but 2^ψ
is not shift-invariant: adding c to every ψ scales all Δ by 2^c. ``normalize_scores=True``
min–max scales each list's ψ to [0, 1] first, which removes that dependence. A log base 2 in D,
as in some learning-to-rank code, would only scale every Δ by ln 2. β = 0.05 [U].

ListMLE (Plackett–Luce NLL of the given order), ListNet (cross-entropy between softmax(ψ) and
softmax(s)) and all-pairs DPO (−Σ_{ψ_i > ψ_j} log σ(s_i − s_j), a sum over pairs, not a mean)
are the learning-to-rank baselines of the LiPO paper. With two items, ListMLE and all-pairs DPO
are exactly DPO. ListMLE needs a strict order (its registry entry refuses ties); the others
accept ties (tied items form no pair; ListNet gives them equal target mass).

Metrics, per list: ``rewards/best`` and ``rewards/worst`` (s of the first and last real item),
``rewards/margins`` (their difference) and ``rewards/accuracies`` (the share of pairs with
ψ_i > ψ_j that s orders the same way; 0 for a list without pairs). For PRO, s is the token-mean
log-prob.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from alignlab.losses.params import param, require_beta, require_bool, require_non_negative
from alignlab.losses.registry import LossSpec, register
from alignlab.losses.types import ListLogps, LossOutput


def _real(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x with the padded items set to 0 (so garbage there cannot leak into sums or gradients)."""
    return torch.where(mask, x, torch.zeros_like(x))


def _implicit_rewards(inputs: ListLogps, beta: float) -> torch.Tensor:
    """s = β·(logps − ref), (B, N), zero on padded items."""
    if inputs.ref is None:
        raise ValueError("this listwise loss needs the reference log-probs (ListLogps.ref)")
    return _real(beta * (inputs.logps - inputs.ref), inputs.mask)


def _better_pairs(inputs: ListLogps) -> torch.Tensor:
    """(B, N, N) bool: [b, i, j] is True when items i and j are real and ψ_i > ψ_j."""
    m = inputs.mask
    psi = _real(inputs.scores, m)
    return m[:, :, None] & m[:, None, :] & (psi[:, :, None] > psi[:, None, :])


def _list_metrics(s: torch.Tensor, inputs: ListLogps) -> dict[str, torch.Tensor]:
    s = s.detach()
    m = inputs.mask
    last = (m.sum(dim=1) - 1).clamp(min=0)
    best = s[:, 0]
    worst = s.gather(1, last[:, None]).squeeze(1)
    pairs = _better_pairs(inputs)
    right = (pairs & (s[:, :, None] > s[:, None, :])).sum(dim=(1, 2))
    total = pairs.sum(dim=(1, 2))
    accuracy = right.to(s.dtype) / total.clamp(min=1).to(s.dtype)
    return {
        "rewards/best": best,
        "rewards/worst": worst,
        "rewards/margins": best - worst,
        "rewards/accuracies": accuracy,
    }


def _plackett_luce_nll(s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_k [log Σ_{m ≥ k, real} e^{s_m} − s_k] over real k: the NLL of the list order. (B,)"""
    n = s.shape[1]
    idx = torch.arange(n, device=s.device)
    # Row k of the (N, N) table lists the items still in the race at position k (m ≥ k, real);
    # the diagonal is always kept so that a padded row stays finite (it is masked out after).
    remaining = (idx[None, :] >= idx[:, None])[None] & (mask[:, None, :] | torch.eye(n, dtype=torch.bool, device=s.device))
    table = s[:, None, :].expand(-1, n, -1).masked_fill(~remaining, float("-inf"))
    terms = torch.logsumexp(table, dim=2) - s
    return _real(terms, mask).sum(dim=1)


# ----------------------------------------------------------------------------------------- PRO


@dataclass
class PROParams:
    sft_weight: float = param(0.05, "w: weight of the SFT term on the best response (multiplied by (n−1)²)")
    use_scores: bool = param(True, "use the score differences as temperatures T; false sets T ≡ 1 "
                                   "(Plackett–Luce over token-mean log-probs)")
    eps: float = param(1e-10, "ε added inside each stage's log, as in the authors' code")

    def __post_init__(self) -> None:
        require_non_negative(self.sft_weight, "sft_weight")
        require_bool(self.use_scores, "use_scores")
        require_non_negative(self.eps, "eps")


def pro_loss(inputs: ListLogps, params: PROParams) -> LossOutput:
    m = inputs.mask
    s = _real(inputs.logps / inputs.lengths.clamp(min=1), m)  # token-mean log-probs
    n = s.shape[1]
    idx = torch.arange(n, device=s.device)
    # later[b, k, i]: i comes after k in the list and both are real.
    later = (idx[None, :] > idx[:, None])[None] & m[:, :, None] & m[:, None, :]
    if params.use_scores:
        psi = _real(inputs.scores, m).to(s.dtype)
        temp = psi[:, :, None] - psi[:, None, :]  # T_ki = ψ_k − ψ_i
    else:
        temp = torch.ones_like(later, dtype=s.dtype)
    active = later.any(dim=2)  # stages k with at least one item after them
    temp_kk = temp.masked_fill(~later, float("-inf")).amax(dim=2)
    temp_kk = torch.where(active, temp_kk, torch.zeros_like(temp_kk))
    pos = s * temp_kk  # s_k·T_kk, (B, N)
    neg = (s[:, None, :] * temp).masked_fill(~later, float("-inf"))  # s_i·T_ki, (B, N, N)
    lse = torch.logsumexp(torch.cat([pos[:, :, None], neg], dim=2), dim=2)
    if params.eps > 0:
        lse = torch.logaddexp(lse, torch.full_like(lse, math.log(params.eps)))
    stages = torch.where(active, lse - pos, torch.zeros_like(lse))
    ranking = stages.sum(dim=1)
    n_items = m.sum(dim=1).to(s.dtype)
    sft = params.sft_weight * (n_items - 1).clamp(min=0) ** 2 * -_real(inputs.logps, m)[:, 0]
    metrics = _list_metrics(s, inputs)
    metrics["loss/ranking"] = ranking.detach()
    metrics["loss/sft"] = sft.detach()
    return LossOutput(ranking + sft, metrics)


# ---------------------------------------------------------------------------------------- LiPO


@dataclass
class LiPOParams:
    beta: float = param(0.05, "β: s = β·log(π/π_ref)")
    normalize_scores: bool = param(False, "min–max scale each list's scores to [0, 1] before the gain 2^ψ − 1")

    def __post_init__(self) -> None:
        require_beta(self.beta)
        require_bool(self.normalize_scores, "normalize_scores")


def lipo_lambda_weights(s: torch.Tensor, inputs: ListLogps, normalize_scores: bool = False) -> torch.Tensor:
    """Δ_ij = |G_i − G_j|·|1/ln(1+τ_i) − 1/ln(1+τ_j)| on pairs with ψ_i > ψ_j, else 0. (B, N, N), no grad."""
    m = inputs.mask
    s = s.detach()
    n = s.shape[1]
    # τ: 1-based rank among the real items by s, descending; ties keep list order, padding last.
    order = torch.argsort(s.masked_fill(~m, float("-inf")), dim=1, descending=True, stable=True)
    ranks = torch.arange(1, n + 1, device=s.device, dtype=s.dtype).expand_as(s)
    tau = torch.empty_like(s).scatter_(1, order, ranks)
    psi = _real(inputs.scores, m).to(s.dtype)
    if normalize_scores:
        lo = psi.masked_fill(~m, float("inf")).amin(dim=1, keepdim=True)
        hi = psi.masked_fill(~m, float("-inf")).amax(dim=1, keepdim=True)
        span = hi - lo
        psi = _real((psi - lo) / span.masked_fill(span <= 0, 1.0), m)  # a list of ties has no pairs anyway
    gain = torch.pow(2.0, psi) - 1
    inv_discount = 1 / torch.log1p(tau)
    delta = (gain[:, :, None] - gain[:, None, :]).abs() * (inv_discount[:, :, None] - inv_discount[:, None, :]).abs()
    return torch.where(_better_pairs(inputs), delta, torch.zeros_like(delta))


def lipo_loss(inputs: ListLogps, params: LiPOParams) -> LossOutput:
    s = _implicit_rewards(inputs, params.beta)
    weights = lipo_lambda_weights(s, inputs, params.normalize_scores)
    pair_losses = -F.logsigmoid(s[:, :, None] - s[:, None, :])
    losses = (weights * pair_losses).sum(dim=(1, 2))
    return LossOutput(losses, _list_metrics(s, inputs))


# ------------------------------------------------------------------- ListMLE, ListNet, all-pairs


@dataclass
class ListBetaParams:
    beta: float = param(0.1, "β: s = β·log(π/π_ref)")

    def __post_init__(self) -> None:
        require_beta(self.beta)


def listmle_loss(inputs: ListLogps, params: ListBetaParams) -> LossOutput:
    s = _implicit_rewards(inputs, params.beta)
    return LossOutput(_plackett_luce_nll(s, inputs.mask), _list_metrics(s, inputs))


def listnet_loss(inputs: ListLogps, params: ListBetaParams) -> LossOutput:
    m = inputs.mask
    s = _implicit_rewards(inputs, params.beta)
    psi = inputs.scores.to(s.dtype).masked_fill(~m, float("-inf"))
    target = torch.softmax(psi, dim=1)  # 0 on padded items
    log_p = torch.log_softmax(s.masked_fill(~m, float("-inf")), dim=1)
    losses = -(target * _real(log_p, m)).sum(dim=1)
    return LossOutput(losses, _list_metrics(s, inputs))


def all_pairs_dpo_loss(inputs: ListLogps, params: ListBetaParams) -> LossOutput:
    s = _implicit_rewards(inputs, params.beta)
    pair_losses = -F.logsigmoid(s[:, :, None] - s[:, None, :])
    losses = torch.where(_better_pairs(inputs), pair_losses, torch.zeros_like(pair_losses)).sum(dim=(1, 2))
    return LossOutput(losses, _list_metrics(s, inputs))


register(LossSpec(
    name="pro", fn=pro_loss, shape="ranked", params=PROParams, needs_reference=False, reduction="sum+mean",
    paper="Song et al. 2024, Preference Ranking Optimization for Human Alignment",
    summary="Σ_k [log(ε + e^{s_k T_kk} + Σ_{i>k} e^{s_i T_ki}) − s_k T_kk] + w(n−1)²·(−log π(y_best)); "
            "s = token-mean log-prob, T_ki = ψ_k − ψ_i",
))
register(LossSpec(
    name="lipo", fn=lipo_loss, shape="ranked", params=LiPOParams, needs_reference=True,
    paper="Liu et al. 2024, LiPO: Listwise Preference Optimization through Learning-to-Rank",
    summary="−Σ_{ψi>ψj} Δ_ij·log σ(s_i − s_j), s = βρ, Δ_ij = |G_i − G_j|·|1/D(τ_i) − 1/D(τ_j)| (LiPO-λ)",
))
register(LossSpec(
    name="listmle", fn=listmle_loss, shape="ranked", params=ListBetaParams, needs_reference=True,
    strict_order=True,
    paper="Xia et al. 2008, Listwise Approach to Learning to Rank (as a baseline in LiPO, Liu et al. 2024)",
    summary="−Σ_k [s_k − log Σ_{m≥k} e^{s_m}], s = βρ: Plackett–Luce NLL of the list order",
))
register(LossSpec(
    name="listnet", fn=listnet_loss, shape="ranked", params=ListBetaParams, needs_reference=True,
    paper="Cao et al. 2007, Learning to Rank: From Pairwise Approach to Listwise Approach (as a baseline in LiPO)",
    summary="−Σ_i softmax(ψ)_i·log softmax(s)_i, s = βρ",
))
register(LossSpec(
    name="all-pairs-dpo", fn=all_pairs_dpo_loss, shape="ranked", params=ListBetaParams, needs_reference=True,
    paper="Liu et al. 2024, LiPO: Listwise Preference Optimization through Learning-to-Rank (DPO on all pairs)",
    summary="−Σ_{ψi>ψj} log σ(s_i − s_j), s = βρ (a sum over pairs)",
))
