"""The label-smoothed logistic loss that several pairwise losses share."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def smoothed_logistic(z: torch.Tensor, eps: float) -> torch.Tensor:
    """−(1 − ε)·log σ(z) − ε·log σ(−z), elementwise, same shape as ``z``.

    ε = 0 is the logistic loss −log σ(z); ε is the weight put on the flipped label (conservative DPO's
    label smoothing). Used by cDPO, AOT, SimPO and CPO.
    """
    return -(1.0 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
