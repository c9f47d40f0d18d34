"""Online DPO: DPO or IPO on pairs that the policy samples and the run's reward ranks, each round.

Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback" (OAIF); as TRL 1.16's
``trl.experimental.online_dpo.OnlineDPOTrainer``. Each round the policy answers every prompt twice
(G = 2), the run's reward (a verifier, a reward model, a judge: the "AI feedback") scores both
answers, and the higher-scored one is the chosen. The pair then takes the offline loss, with the
starting policy as the reference (ALGORITHMS.md 6.7, the generic loop with one round per step):

    sigmoid:  −log σ(β·Δ),          Δ = ρ(y_w) − ρ(y_l), ρ = ℓθ − ℓref summed over the completion
    ipo:      (Δ̄ − 1/(2τ))²,        Δ̄ of token means, τ = ``beta``

Both are ``dpo.dpo_loss`` and ``dpo_family.ipo_loss`` themselves, on the pairs built here. IPO uses
token means, as alignlab's offline ``ipo`` (TRL's DPOTrainer, confirmed by the IPO authors); TRL's
online trainer uses the summed log-prob difference for IPO as for sigmoid, so its ``ipo`` is a
different loss at the same τ.

The labels travel through the round as sequence advantages (``pair_labels``): +1 for the chosen
answer, −1 for the rejected, 0 for both answers of a tie. A round is prompt-major, so the two
answers of a prompt are consecutive rows; the run requires G = 2 and an even ``batch_size``
(``LossSpec.num_generations``), so a micro-batch holds whole pairs: rows (0, 1), (2, 3), ...

Ties. Equal rewards say nothing about which answer is better: a tied pair adds no loss and no
units, so a step's loss is the mean over its decisive pairs, and a step whose pairs all tie has
loss 0 and no gradient. TRL instead calls the first sample the chosen on a tie
(``mask = first_half >= second_half``) and trains on the pair; with a 0/1 verifier most pairs of
a fair model tie (both right or both wrong), and that pushes one arbitrary answer up and the other
down.

Where the loss sits. A decisive pair's whole loss is on its chosen row, 0 on the rejected one, and
``pair_units`` gives the chosen row 1 unit, every other row 0. The training loop divides the step's
summed per-row losses by the step's summed units, counted over every micro-batch and process: the
sum of the pair losses over the number of decisive pairs, the same however the step is split
(a pair never is). The metrics (``rewards/*``, ``logps/*`` as offline DPO's, β·ρ with summed
log-probs) sit on the chosen row too, with a count ``_count/<name>`` of 1 there, so they are means
over the step's decisive pairs (not logged in a step without one); ``pairs/tied`` is on both rows of a pair, so its mean over the
step's completions is the share of tied pairs. ``kl/sequence``: Σ_t (ℓθ − ℓref) of each completion,
its mean over the step's completions (ties too) the k1 estimate of KL(π‖π_ref) per completion on
the policy's own samples (TRL's ``objective/kl``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignlab.losses.dpo import DPOParams, dpo_loss
from alignlab.losses.dpo_family import IPOParams, ipo_loss
from alignlab.losses.params import param, require, require_beta
from alignlab.losses.policy_gradient import PolicyGradientInputs
from alignlab.losses.registry import LossSpec, register
from alignlab.losses.types import LossOutput, PairLogps

# loss_type → the offline pair loss and its params
PAIR_LOSSES = {"sigmoid": (dpo_loss, DPOParams), "ipo": (ipo_loss, IPOParams)}
LOSS_TYPES = tuple(PAIR_LOSSES)


@dataclass
class OnlineDPOParams:
    beta: float = param(0.1, "β: strength of the KL penalty toward the reference (higher stays closer); IPO's τ")
    loss_type: str = param("sigmoid", "'sigmoid' (DPO: −log σ(βΔ), summed log-probs) or 'ipo' ((Δ̄ − 1/(2β))², "
                                      "token-mean log-probs, as the offline ipo)")

    def __post_init__(self) -> None:
        require_beta(self.beta)
        require(self.loss_type in LOSS_TYPES, "loss_type", f"must be one of {LOSS_TYPES}, got {self.loss_type!r}")


def pair_labels(rewards_PG: torch.Tensor, params: OnlineDPOParams, greedy_P: torch.Tensor | None = None
                ) -> torch.Tensor:
    """(P, 2) rewards → (P, 2) labels: +1 for the higher-scored answer, −1 for the lower, 0 for
    both when they score the same."""
    if rewards_PG.dim() != 2 or rewards_PG.shape[1] != 2:
        raise ValueError(f"online DPO compares two answers per prompt, got rewards of shape {tuple(rewards_PG.shape)}")
    sign = torch.sign(rewards_PG[:, 0] - rewards_PG[:, 1])
    return torch.stack([sign, -sign], dim=1)


def pair_units(labels_B: torch.Tensor, params: OnlineDPOParams) -> torch.Tensor:
    """Units of the step's normaliser, (B,) float64: 1 on the chosen row of a decisive pair."""
    return (labels_B > 0).to(torch.float64)


def _sequence_labels(advantages: torch.Tensor) -> torch.Tensor:
    """The label of each row, (B,): a sequence advantage is constant over its tokens."""
    return advantages[:, 0] if advantages.dim() == 2 else advantages


def pairs_of(inputs: PolicyGradientInputs) -> tuple[PairLogps, torch.Tensor]:
    """The micro-batch's consecutive rows (2p, 2p + 1) as P pairs, chosen first (a tie: row 2p),
    and each row's label (B,). Log-probs are summed over each completion's tokens."""
    mask = inputs.mask.bool()
    B = mask.shape[0]
    if B % 2:
        raise ValueError(f"online DPO needs whole pairs in a micro-batch, got {B} rows")
    if inputs.ref_logps is None:
        raise ValueError("online DPO needs ref_logps (the reference model's per-token log-probs)")
    labels = _sequence_labels(inputs.advantages.detach()).to(inputs.logps.dtype)
    labels_P2 = labels.reshape(-1, 2)
    if not torch.equal(labels_P2[:, 0], -labels_P2[:, 1]) or bool((labels_P2.abs() > 1).any()):
        raise ValueError("online DPO's rows must come in pairs labelled (+1, −1), (−1, +1) or (0, 0)")

    def summed(x: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, x, torch.zeros_like(x)).sum(dim=-1).reshape(-1, 2)

    first = labels_P2[:, 0] >= 0  # row 2p is the chosen (or a tie, whose loss is dropped)

    def split(x_P2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.where(first, x_P2[:, 0], x_P2[:, 1]), torch.where(first, x_P2[:, 1], x_P2[:, 0])

    chosen, rejected = split(summed(inputs.logps))
    ref_chosen, ref_rejected = split(summed(inputs.ref_logps.detach().to(inputs.logps.dtype)))
    chosen_len, rejected_len = split(mask.sum(dim=-1).reshape(-1, 2))
    return PairLogps(chosen, rejected, chosen_len, rejected_len, ref_chosen, ref_rejected), labels


def online_dpo_loss(inputs: PolicyGradientInputs, params: OnlineDPOParams) -> LossOutput:
    """Per-row losses (B,) of a micro-batch of whole pairs (rows 2p, 2p + 1 answer one prompt;
    ``inputs.advantages`` hold the labels of ``pair_labels``): a decisive pair's DPO or IPO loss
    on its chosen row, 0 elsewhere. Divide the step's sum by the step's ``pair_units``. Needs
    ``ref_logps``; ``old_logps``, ``sampler_logps`` and ``truncated`` are not used."""
    pairs, labels = pairs_of(inputs)
    pair_loss, pair_params = PAIR_LOSSES[params.loss_type]
    out = pair_loss(pairs, pair_params(beta=params.beta))
    on_chosen = labels > 0  # (B,): the chosen row of a decisive pair

    def spread(x_P: torch.Tensor) -> torch.Tensor:
        x_B = x_P.repeat_interleave(2)
        return torch.where(on_chosen, x_B, torch.zeros_like(x_B))

    count = on_chosen.to(torch.float64)
    metrics: dict[str, torch.Tensor] = {}
    for name, value in out.metrics.items():
        metrics[name] = spread(value.detach().to(torch.float64))
        metrics[f"_count/{name}"] = count
    metrics["pairs/tied"] = (labels == 0).to(torch.float64)
    # Σ_t (ℓθ − ℓref) of every completion: on the round's own samples (one update per round), the
    # k1 estimate of KL(π‖π_ref) per completion, as TRL's objective/kl
    rho = torch.where(inputs.mask.bool(), inputs.logps.detach() - inputs.ref_logps.detach().to(inputs.logps.dtype), 0.0)
    metrics["kl/sequence"] = rho.sum(dim=-1).to(torch.float64)
    return LossOutput(spread(out.losses), metrics)


register(LossSpec(
    name="online-dpo", fn=online_dpo_loss, shape="online", params=OnlineDPOParams, needs_reference=True,
    reduction="sum+mean", paper="Guo et al. 2024, Direct Language Model Alignment from Online AI Feedback (OAIF)",
    summary="two answers per prompt each round, the higher-rewarded chosen: DPO's -log σ(β·Δ) (or IPO) on the "
            "pair; ties give no loss",
    advantages=pair_labels, units=pair_units, num_generations=2))
