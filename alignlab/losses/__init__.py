"""Pure loss functions over log-prob tensors, and the registry that says what each needs.

Modules by family: ``dpo`` (DPO), ``dpo_family`` (IPO, hinge, LN-DPO, RPO, DPOP, γ-DPO, f-DPO,
LD-DPO, WPO, BVPO, DOVE), ``robust`` (cDPO, rDPO, soft preference, LCPO), ``dpo_alternatives``
(EXO, NCA, BCO-pair, SPPO-hard, AOT, APO, DiscoPOP), ``reference_free`` (SimPO, CPO, ORPO, ASFT),
``unpaired`` (KTO, BCO), ``negatives`` (D2O), ``listwise`` (PRO, LiPO, ListMLE, ListNet, all-pairs
DPO), ``sft``; ``combine`` builds weighted sums such as ``dpo+0.005*sft``. Online RL: ``online``
(the registry entries GRPO, DAPO, Dr. GRPO, GSPO, RLOO) over ``policy_gradient`` (the clipped
surrogate, its aggregation modes and their ``units``, PPO's value loss) and ``advantages`` (GRPO,
RLOO, ReMax, REINFORCE++ and GAE advantages, KL estimators, whitening); ``online_pref`` (online
DPO: DPO or IPO on two sampled answers per prompt, ranked by the reward). Shared pieces: ``params``
(hyperparameter fields and range checks), ``logistic`` (the label-smoothed logistic loss).
"""

from alignlab.losses.dpo import DPOParams, dpo_loss
from alignlab.losses.params import ParamError
from alignlab.losses.registry import REGISTRY, LossSpec, UnknownLossError, get_loss, register
from alignlab.losses.reward import RewardModelParams, reward_model_loss
from alignlab.losses.sft import SFTParams, sft_loss
from alignlab.losses.types import ListLogps, LossOutput, NegativeLogps, PairLogps, SeqLogps, UnpairedLogps

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

register(LossSpec(
    name="reward_model", fn=reward_model_loss, shape="pair", params=RewardModelParams, needs_reference=False,
    model="reward", reduction="sum",
    paper="Bradley-Terry (Ouyang et al. 2022); GPM: Zhang et al. 2024, General Preference Modeling",
    summary="a reward model: -log σ(r_chosen − r_rejected − m) [+ c·(r_c + r_r)²], or GPM's "
            "-log σ((s(chosen ≻ rejected) − m)/τ) with a skew-symmetric score s",
))

# Each module registers its losses when imported.
from alignlab.losses import (  # noqa: E402
    dpo_alternatives,  # noqa: F401
    dpo_family,  # noqa: F401
    listwise,  # noqa: F401
    negatives,  # noqa: F401
    online,  # noqa: F401
    online_pref,  # noqa: F401
    reference_free,  # noqa: F401
    robust,
    unpaired,  # noqa: F401
)

# LCPO around the reference-free losses too (ALGORITHMS.md 1.12 names DPO, IPO, SimPO and CPO).
register(robust.lcpo_spec(REGISTRY["simpo"], "lcpo-simpo"))
register(robust.lcpo_spec(REGISTRY["cpo"], "lcpo-cpo"))

__all__ = [
    "REGISTRY", "LossSpec", "ParamError", "UnknownLossError", "get_loss", "register", "LossOutput", "PairLogps",
    "SeqLogps", "UnpairedLogps", "NegativeLogps", "ListLogps", "DPOParams", "dpo_loss", "SFTParams", "sft_loss",
]
