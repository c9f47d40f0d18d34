"""Ranking accuracy and idealized ranking accuracy of a policy on preference pairs.

Chen et al., 2024, "Preference Learning Algorithms Do Not Learn Preference Rankings" (ALGORITHMS.md
§8.1; formulas read in the paper and its code). With ℓ(y) = log π(y|x) summed over the response
tokens and ℓ̄(y) = ℓ(y)/|y|:

- ranking accuracy, per pair ``R = 1[ℓθ(y_w) ≥ ℓθ(y_l)]`` (summed) and
  ``R̄ = 1[ℓ̄θ(y_w) ≥ ℓ̄θ(y_l)]`` (length-normalised): does the policy itself give the preferred
  response the higher likelihood? A tie counts as correct (the paper's ≥).
- idealized ranking accuracy, the ranking accuracy of the exact minimiser of the DPO/RLHF objective
  with reference πref and temperature β, had it learnt the data's preference probabilities
  perfectly: ``R* = 1[(πref(y_w)/πref(y_l)) · (α/(1 − α))^{1/β} > 1]``, in logs
  ``1[ℓref(y_w) − ℓref(y_l) + (1/β)·log(α/(1 − α)) > 0]``; the length-normalised version uses
  ℓ̄ref. α is the fraction of raters who preferred y_w. Pairs without it count as unanimous, and a
  side that no rater chose gets ε (default 1e-3, as in the paper's code) in place of its zero:
  α = 1 gives odds 1/ε = 1000, α = 0 gives ε.
- alignment gap ``R* − R`` (and ``R̄* − R̄``), for each β of the sweep (default 0.01, 0.1, 1, 5, 10,
  the paper's).

Beside them, for comparison, the **implicit-reward accuracy**
``1[(ℓθ − ℓref)(y_w) > (ℓθ − ℓref)(y_l)]``: the share of pairs whose DPO implicit reward
β·(ℓθ − ℓref) is higher for y_w, which training logs as ``rewards/accuracies``. It is a different
quantity: it asks whether training moved y_w up relative to y_l, not whether the policy ranks y_w
above y_l; a policy can score 1.0 on it and rank most pairs wrongly when the reference did.

All functions here are pure (tensors in, tensors or numbers out); ``eval/pairs.py`` computes the
log-probs and ``alignlab eval ranking`` runs both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from alignlab.eval.pairs import PairLogps

BETAS = (0.01, 0.1, 1.0, 5.0, 10.0)
EPS = 1e-3
IMPLICIT_NOTE = ("implicit-reward accuracy: share of pairs with (logp - logp_ref)(chosen) > (logp - logp_ref)"
                 "(rejected), what training logs as rewards/accuracies; not ranking accuracy")


def ranking_correct(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Per pair 1.0 where the chosen response's log-prob is at least the rejected one's, else 0.0."""
    return (chosen >= rejected).double()


def log_odds(alpha: Sequence[float | None], eps: float = EPS) -> torch.Tensor:
    """log(α/(1 − α)) per pair, α the fraction of raters preferring the chosen response; None
    means unanimous (α = 1). A side with no rater gets ``eps`` instead of 0."""
    if not 0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    out = []
    for a in alpha:
        a = 1.0 if a is None else float(a)
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"a fraction of raters must be in [0, 1], got {a}")
        out.append(math.log(a if a > 0 else eps) - math.log(1 - a if a < 1 else eps))
    return torch.tensor(out, dtype=torch.float64)


def idealized_correct(ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, odds_log: torch.Tensor,
                      beta: float) -> torch.Tensor:
    """Per pair 1.0 where the ideal policy πref·(preference odds)^{1/β} ranks the chosen response
    strictly higher: ``ℓref(y_w) − ℓref(y_l) + log_odds/β > 0``."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return ((ref_chosen - ref_rejected) + odds_log / beta > 0).double()


def implicit_reward_correct(policy: PairLogps, reference: PairLogps) -> torch.Tensor:
    """Per pair 1.0 where the implicit reward (ℓθ − ℓref) of the chosen response is strictly higher."""
    return ((policy.chosen - reference.chosen) > (policy.rejected - reference.rejected)).double()


def _mean(values: torch.Tensor) -> float:
    return float(values.mean())


def ranking_report(policy: PairLogps, reference: PairLogps, alpha: Sequence[float | None],
                   betas: Sequence[float] = BETAS, eps: float = EPS, same_model: bool = False) -> dict:
    """Every number of the module docstring, averaged over the pairs, and per pair (``per_pair``).

    ``same_model``: the reference is the policy itself (R* is then the idealized accuracy of a
    policy trained from it); the implicit-reward accuracy, zero margins throughout, is left out."""
    n = len(policy.chosen)
    if n == 0 or len(reference.chosen) != n or len(alpha) != n:
        raise ValueError(f"need as many pairs under the policy, the reference and alpha, got {n}, "
                         f"{len(reference.chosen)}, {len(alpha)}")
    odds = log_odds(alpha, eps)
    r_sum = ranking_correct(policy.chosen, policy.rejected)
    r_mean = ranking_correct(policy.chosen_mean, policy.rejected_mean)
    report: dict = {
        "pairs": n,
        "ranking_accuracy": {"summed": _mean(r_sum), "length_normalized": _mean(r_mean)},
        "reference_ranking_accuracy": {
            "summed": _mean(ranking_correct(reference.chosen, reference.rejected)),
            "length_normalized": _mean(ranking_correct(reference.chosen_mean, reference.rejected_mean))},
        "ties": {"summed": int((policy.chosen == policy.rejected).sum()),
                 "length_normalized": int((policy.chosen_mean == policy.rejected_mean).sum())},
        "idealized_ranking_accuracy": {},
        "alignment_gap": {},
        "alpha": {"from_data": sum(a is not None for a in alpha), "unanimous": sum(a is None for a in alpha),
                  "eps": eps},
    }
    ideal_by_beta = {}
    for beta in betas:
        ideal_sum = idealized_correct(reference.chosen, reference.rejected, odds, beta)
        ideal_mean = idealized_correct(reference.chosen_mean, reference.rejected_mean, odds, beta)
        key = f"{beta:g}"
        ideal_by_beta[key] = (ideal_sum, ideal_mean)
        report["idealized_ranking_accuracy"][key] = {"summed": _mean(ideal_sum), "length_normalized": _mean(ideal_mean)}
        report["alignment_gap"][key] = {"summed": _mean(ideal_sum) - _mean(r_sum),
                                        "length_normalized": _mean(ideal_mean) - _mean(r_mean)}
    implicit = None if same_model else implicit_reward_correct(policy, reference)
    if implicit is not None:
        report["implicit_reward_accuracy"] = _mean(implicit)
        report["implicit_reward_accuracy_is"] = IMPLICIT_NOTE
    report["per_pair"] = [
        {"policy_chosen": float(policy.chosen[i]), "policy_rejected": float(policy.rejected[i]),
         "reference_chosen": float(reference.chosen[i]), "reference_rejected": float(reference.rejected[i]),
         "chosen_tokens": int(policy.chosen_tokens[i]), "rejected_tokens": int(policy.rejected_tokens[i]),
         "alpha": alpha[i], "ranking_correct": bool(r_sum[i]), "ranking_correct_length_normalized": bool(r_mean[i]),
         **({"implicit_reward_correct": bool(implicit[i])} if implicit is not None else {}),
         "idealized_correct": {k: bool(s[i]) for k, (s, _) in ideal_by_beta.items()}}
        for i in range(n)]
    return report
