"""Likelihood displacement: how the log-probs of the chosen and rejected responses move in training.

Razin et al., 2024, "Unintentional Unalignment: Likelihood Displacement in Direct Preference
Optimization" (ALGORITHMS.md §8.2). From a starting model θ0 to a trained one θ, per pair:

    Δℓ(y_w) = ℓθ(y_w) − ℓθ0(y_w)      (the "preferred log-prob change")
    Δℓ(y_l) = ℓθ(y_l) − ℓθ0(y_l)

with ℓ summed over the response tokens. Displacement is Δℓ(y_w) < 0: training widened the margin
Δℓ(y_w) − Δℓ(y_l) while pushing the preferred response down too. ``displacement`` reports the means
and the share of pairs whose chosen (and rejected) log-prob fell; over training it is followed
through a run's saved models (``alignlab.training.saved.run_models``).
"""

from __future__ import annotations

from alignlab.eval.pairs import PairLogps


def displacement(start: PairLogps, end: PairLogps) -> dict:
    """Means over the pairs of Δℓ(y_w), Δℓ(y_l) and the margin change Δℓ(y_w) − Δℓ(y_l), the share
    of pairs whose chosen (rejected) log-prob fell, and the mean log-probs under ``end``."""
    n = len(start.chosen)
    if n == 0 or len(end.chosen) != n:
        raise ValueError(f"need the same pairs under both models, got {n} and {len(end.chosen)}")
    d_chosen = end.chosen - start.chosen
    d_rejected = end.rejected - start.rejected
    return {
        "pairs": n,
        "chosen_logp": float(end.chosen.mean()),
        "rejected_logp": float(end.rejected.mean()),
        "chosen_change": float(d_chosen.mean()),
        "rejected_change": float(d_rejected.mean()),
        "margin_change": float((d_chosen - d_rejected).mean()),
        "chosen_fell": float((d_chosen < 0).double().mean()),
        "rejected_fell": float((d_rejected < 0).double().mean()),
    }
