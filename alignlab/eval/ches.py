"""CHES: which preference pairs will make DPO push the preferred response down.

Razin et al., 2024, "Unintentional Unalignment: Likelihood Displacement in Direct Preference
Optimization" (ALGORITHMS.md §8.2, read in the authors' code, ``ches/ches.py``). With h_k the
model's **last-layer** hidden state (after the final norm: the vector the output layer multiplies)
at each position that predicts a response token (the last prompt token through the second-to-last
response token, so |y| vectors for a response of |y| tokens, its EOS included), and
W(y) = Σ_k h_k:

    CHES(x, y⁺, y⁻)    = ⟨W(y⁺), W(y⁻)⟩ − ‖W(y⁺)‖²
    LN-CHES(x, y⁺, y⁻) = ⟨W(y⁺)/|y⁺|, W(y⁻)/|y⁻|⟩ − ‖W(y⁺)/|y⁺|‖²

A higher score means the two responses look more alike to the model, and a DPO step on the pair
is more likely to lower the preferred response's likelihood. The score is meant for the model
training starts from. The paper drops the highest-scoring pairs (it keeps the lowest LN-CHES:
on SORRY-Bench, 5% of the data); ``alignlab convert ches-filter`` does that.

"Response token" follows the training mask: for a conversation, the tokens of the assistant turns
that carry loss (not the template's assistant header), so |y| is the count ℓ(y) sums over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from alignlab.data.collate import Batch, collate_pairs
from alignlab.data.render import TokenizedPair
from alignlab.eval.pairs import batches
from alignlab.logprobs import final_hidden, forward_inputs, head_of, response_positions


def ches_scores(w_chosen_Pd: torch.Tensor, w_rejected_Pd: torch.Tensor, n_chosen_P: torch.Tensor,
                n_rejected_P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(CHES, length-normalised CHES), each (P,), from the summed hidden states W (P, d) of each
    pair's chosen and rejected response and their token counts |y| (P,)."""
    ches = (w_chosen_Pd * w_rejected_Pd).sum(-1) - (w_chosen_Pd * w_chosen_Pd).sum(-1)
    mean_c = w_chosen_Pd / n_chosen_P[:, None]
    mean_r = w_rejected_Pd / n_rejected_P[:, None]
    return ches, (mean_c * mean_r).sum(-1) - (mean_c * mean_c).sum(-1)


def last_hidden(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """The last layer's hidden states (B, T, d), as ``model(..., output_hidden_states=True)``
    gives them last. A model whose output layer is a plain matmul (``logprobs.head_of``) runs its
    decoder alone, with the logits of one position; any other is asked for its hidden states."""
    served = head_of(model)
    if served is not None:
        return final_hidden(model, served[0], **inputs)
    return model(**inputs, output_hidden_states=True, use_cache=False).hidden_states[-1]


def response_hidden_sums(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_Nd, count_N): for each response of ``batch``, the float64 sum of the last-layer hidden
    states at the positions that predict its response tokens, and how many there are."""
    rows_N, pred_NL, _, mask_NL = response_positions(batch)
    hidden_BTd = last_hidden(model, forward_inputs(model, batch))
    picked_NLd = hidden_BTd[rows_N[:, None], pred_NL].double()
    mask = mask_NL.double()
    return (picked_NLd * mask[..., None]).sum(1), mask.sum(-1)


@dataclass
class PairScores:
    """CHES and length-normalised CHES of each pair (P,), float64 on the CPU, with the token counts."""

    ches: torch.Tensor
    ln_ches: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor


def pair_ches(model: torch.nn.Module, examples: Sequence[TokenizedPair], pad_id: int, batch_size: int = 32,
              progress: str | None = None) -> PairScores:
    """CHES scores of every pair under ``model``, ``batch_size`` pairs (both responses) per forward
    pass, without gradients."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    parts = []
    chunks = list(batches(examples, batch_size))
    with torch.no_grad():
        for chunk in tqdm(chunks, desc=progress, unit="batch", leave=False, disable=progress is None):
            batch = collate_pairs(chunk, pad_id).to(device)
            w_Nd, count_N = response_hidden_sums(model, batch)
            p = len(chunk)
            ches, ln = ches_scores(w_Nd[:p], w_Nd[p:], count_N[:p], count_N[p:])
            parts.append(tuple(t.cpu() for t in (ches, ln, count_N[:p], count_N[p:])))
    return PairScores(*(torch.cat([part[i] for part in parts]) for i in range(4)))


def most_displacing(scores: torch.Tensor, drop: int) -> list[int]:
    """Indices of the ``drop`` highest scores, ascending; of equal scores the earlier pair goes first."""
    if not 0 <= drop <= len(scores):
        raise ValueError(f"cannot drop {drop} of {len(scores)} pairs")
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:drop])
