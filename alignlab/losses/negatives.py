"""Alignment from negative samples only: Distributional Dispreference Optimization (D2O).

Duan et al. 2024, "Negating Negatives: Alignment without Human Positive Samples via
Distributional Dispreference Optimization". Each prompt x comes with one dispreferred response
y_l and K responses y_1..y_K sampled from the reference (SFT) model. With
ρ(y) = log πθ(y|x) − log πref(y|x), summed over response tokens:

    L = −log σ( (β/K)·Σ_i ρ(y_i) − α·ρ(y_l) )

The self-samples play the part of the preferred response, as a distribution rather than one
instance. Inputs are ``NegativeLogps``: ``rejected``/``ref_rejected`` (B,) and
``samples``/``ref_samples`` (B, K); K is read from ``samples.shape[1]``. Output: (B,) losses.

What is secondary [S] (from the paper's summary and a third-party reimplementation; no official
code was read): the formula above, the defaults K = 11 and α = β = 0.1, and the use of one
reference model for both terms. The paper writes two references, π_r⁻ for the samples and π_r⁺
for the negative; the simple case uses the SFT model for both, and the training side may pass
``ref_samples`` from a periodically refreshed model instead. The sampling settings
(``sample_temperature`` 1.0 = plain sampling from the reference, ``sample_max_new_tokens`` 128)
are this package's choices, not the paper's; the training side reads them, and ``num_samples``,
to draw the K samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from alignlab.losses.params import param, require, require_positive
from alignlab.losses.registry import LossSpec, register
from alignlab.losses.types import LossOutput, NegativeLogps


def _positive_int(value, name: str) -> None:
    require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name,
            f"must be an integer >= 1, got {value!r}")


@dataclass
class D2OParams:
    beta: float = param(0.1, "β: weight of the self-samples' mean log-ratio")
    alpha: float = param(0.1, "α: weight of the negative response's log-ratio")
    num_samples: int = param(11, "K: responses sampled from the reference model per prompt")
    sample_temperature: float = param(1.0, "temperature for drawing the K samples")
    sample_max_new_tokens: int = param(128, "most new tokens per sample")

    def __post_init__(self) -> None:
        for name in ("beta", "alpha", "sample_temperature"):
            require_positive(getattr(self, name), name)
        _positive_int(self.num_samples, "num_samples")
        _positive_int(self.sample_max_new_tokens, "sample_max_new_tokens")


def d2o_loss(inputs: NegativeLogps, params: D2OParams) -> LossOutput:
    if inputs.samples.dim() != 2 or inputs.samples.shape[1] < 1:
        raise ValueError(f"d2o: samples must have shape (B, K) with K >= 1, got {tuple(inputs.samples.shape)}")
    r_samples = params.beta * (inputs.samples - inputs.ref_samples).mean(dim=1)  # (β/K)·Σ_i ρ(y_i)
    r_rejected = params.alpha * (inputs.rejected - inputs.ref_rejected)
    margin = r_samples - r_rejected
    losses = -F.logsigmoid(margin)
    metrics = {
        "rewards/samples": r_samples.detach(),
        "rewards/rejected": r_rejected.detach(),
        "rewards/margins": margin.detach(),
        "rewards/accuracies": (margin > 0).to(margin.dtype),
        "logps/rejected": inputs.rejected.detach(),
        "logps/samples": inputs.samples.detach().mean(dim=1),
    }
    return LossOutput(losses, metrics)


register(LossSpec(
    name="d2o", fn=d2o_loss, shape="negatives", params=D2OParams, needs_reference=True,
    paper="Duan et al. 2024, Negating Negatives: Alignment without Human Positive Samples via "
          "Distributional Dispreference Optimization",
    summary="−log σ((β/K)·Σ_i ρ(y_i) − α·ρ(y_l)), y_i sampled from the reference, y_l the negative",
))
