"""Pure loss functions over log-prob tensors, and the registry that says what each needs."""

from alignlab.losses.dpo import DPOParams, dpo_loss
from alignlab.losses.params import ParamError
from alignlab.losses.registry import REGISTRY, LossSpec, UnknownLossError, get_loss, register
from alignlab.losses.sft import SFTParams, sft_loss
from alignlab.losses.types import LossOutput, PairLogps, SeqLogps

register(LossSpec(
    name="sft", fn=sft_loss, shape="sft", params=SFTParams, needs_reference=False,
    normalize="tokens", paper="(supervised fine-tuning)",
    summary="negative log-likelihood of the response tokens, averaged over the step's tokens",
))
register(LossSpec(
    name="dpo", fn=dpo_loss, shape="pair", params=DPOParams, needs_reference=True,
    paper="Rafailov et al. 2023, Direct Preference Optimization",
    summary="-log σ(β·(ρ_chosen − ρ_rejected)), ρ = log π/π_ref summed over response tokens",
))

__all__ = [
    "REGISTRY", "LossSpec", "ParamError", "UnknownLossError", "get_loss", "register", "LossOutput", "PairLogps", "SeqLogps",
    "DPOParams", "dpo_loss", "SFTParams", "sft_loss",
]
