"""Supervised fine-tuning: negative log-likelihood of the response tokens.

Per example the loss is the summed NLL of its response tokens; the training loop divides the
step's sum by the number of response tokens in the whole step (registry: normalize='tokens'),
which gives the token-mean cross-entropy over the step however it is split.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignlab.losses.types import LossOutput, SeqLogps


@dataclass
class SFTParams:
    """SFT has no hyperparameters of its own."""


def sft_loss(logps: SeqLogps, params: SFTParams) -> LossOutput:
    nll = -logps.logps
    return LossOutput(nll, {"nll/token": (nll / logps.lengths.clamp(min=1)).detach()})
