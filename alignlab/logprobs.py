"""The one place that turns logits into log-probabilities.

Shapes use suffixes: B rows, T positions, V vocabulary. Position t's logits predict token t+1, so
the log-prob of token t+1 sits at index t of the shifted tensors; the loss mask is shifted the same
way. For models with a plain linear head (``head_logps.head_of``) the logits are computed at the
response positions only, a chunk at a time, and never kept (``head_logps``). Other models give
their full logits, and the log-prob of each target is its logit minus the row's logsumexp,
computed a few rows at a time so the full-vocabulary log-softmax is never materialised in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from alignlab.data.collate import Batch, collate_completions
from alignlab.head_logps import final_hidden, head_of, squared_mass, target_logps


@dataclass
class SequenceLogps:
    """Per-row log-probs of response tokens."""

    token_logps_BT: torch.Tensor  # (B, T-1), zero where the mask is zero
    mask_BT: torch.Tensor  # (B, T-1) float, 1 on response tokens that carry loss
    sum_B: torch.Tensor  # summed log-prob of each row's response
    count_B: torch.Tensor  # number of response tokens in each row
    sqmass_B: torch.Tensor | None = None  # Σ over response tokens of log Σ_v p_v², no gradient (WPO)

    @property
    def mean_B(self) -> torch.Tensor:
        return self.sum_B / self.count_B.clamp(min=1)


def gather_logps(logits_BTV: torch.Tensor, targets_BT: torch.Tensor, chunk_rows: int = 8) -> torch.Tensor:
    """log softmax(logits)[target] for every position, in fp32 (fp64 stays fp64), a few rows at a time."""
    out = []
    for start in range(0, logits_BTV.shape[0], chunk_rows):
        lg = logits_BTV[start:start + chunk_rows]
        lg = lg if lg.dtype == torch.float64 else lg.float()
        tgt = targets_BT[start:start + chunk_rows]
        picked = lg.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        out.append(picked - torch.logsumexp(lg, dim=-1))
    return torch.cat(out, dim=0)


def log_squared_mass(logits_BTV: torch.Tensor, chunk_rows: int = 8) -> torch.Tensor:
    """log Σ_v p_v² of the next-token distribution at every position (B, T), without gradient:
    2·logsumexp(...) rewritten as logsumexp(2·logits) − 2·logsumexp(logits)."""
    out = []
    with torch.no_grad():
        for start in range(0, logits_BTV.shape[0], chunk_rows):
            lg = logits_BTV[start:start + chunk_rows]
            lg = lg if lg.dtype == torch.float64 else lg.float()
            out.append(torch.logsumexp(2 * lg, dim=-1) - 2 * torch.logsumexp(lg, dim=-1))
    return torch.cat(out, dim=0)


def left_align(values_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """The masked entries of each row moved to its start, in order: (B, L) with L the largest
    count, zero beyond each row's count. Differentiable with respect to ``values_BT``."""
    keep = mask_BT > 0
    width = int(keep.sum(-1).max()) if keep.numel() else 0
    out = values_BT.new_zeros((values_BT.shape[0], width))
    rows, cols = keep.nonzero(as_tuple=True)
    slots = (keep.long().cumsum(-1) - 1)[rows, cols]
    return out.index_put((rows, slots), values_BT[rows, cols])


def _attention_mask(model: torch.nn.Module, allowed_B1TT: torch.Tensor) -> torch.Tensor:
    """A block mask in the form the model's attention takes: boolean for SDPA and flex attention,
    additive (0 or the dtype's minimum) for eager attention."""
    config = getattr(getattr(model, "module", model), "config", None)
    impl = getattr(config, "_attn_implementation", "sdpa")
    if impl == "eager":
        dtype = next(model.parameters()).dtype
        return torch.zeros(allowed_B1TT.shape, dtype=dtype, device=allowed_B1TT.device).masked_fill(
            ~allowed_B1TT, torch.finfo(dtype).min)
    return allowed_B1TT


def _response_logps(model: torch.nn.Module, inputs: dict, rows_N: torch.Tensor, pred_NL: torch.Tensor,
                    target_NL: torch.Tensor, mask_NL: torch.Tensor, sqmass: bool) -> SequenceLogps:
    """Run ``model`` on ``inputs`` and return, for each of N responses, the log-probs of its
    tokens: token k of response n is ``target_NL[n, k]``, predicted at position ``pred_NL[n, k]``
    of row ``rows_N[n]``, and counts where ``mask_NL`` is 1."""
    keep = mask_NL > 0
    n_idx, k_idx = keep.nonzero(as_tuple=True)
    rows, cols = rows_N[n_idx], pred_NL[n_idx, k_idx]
    targets = target_NL[n_idx, k_idx]
    served = head_of(model)
    if served is not None:
        decoder, weight = served
        hidden_K = final_hidden(model, decoder, **inputs)[rows, cols]
        picked_K = target_logps(hidden_K, weight, targets)
        sq_K = squared_mass(hidden_K, weight) if sqmass else None
    else:
        logits_KV = model(**inputs, use_cache=False).logits[rows, cols]
        picked_K = gather_logps(logits_KV.unsqueeze(1), targets.unsqueeze(1), chunk_rows=256).squeeze(1)
        sq_K = log_squared_mass(logits_KV.unsqueeze(1), chunk_rows=256).squeeze(1) if sqmass else None
    mask = keep.to(torch.float32)
    token_logps = picked_K.new_zeros(mask_NL.shape).index_put((n_idx, k_idx), picked_K)
    sq = None if sq_K is None else sq_K.new_zeros(mask_NL.shape).index_put((n_idx, k_idx), sq_K).sum(-1)
    return SequenceLogps(token_logps, mask, token_logps.sum(-1), mask.sum(-1), sq)


def packed_logps(model: torch.nn.Module, batch: Batch, sqmass: bool = False) -> SequenceLogps:
    """Log-probs of every response of a shared-prompt batch (``data/pack.py``), one row per
    response in the batch's response order, tokens left-aligned."""
    pk = batch.packed
    inputs = {"input_ids": batch.input_ids_BT, "attention_mask": _attention_mask(model, pk.attention_B1TT),
              "position_ids": pk.position_ids_BT}
    return _response_logps(model, inputs, pk.row_N, pk.pred_NL, pk.target_NL, pk.mask_NL, sqmass)


def sequence_logps(model: torch.nn.Module, batch: Batch, sqmass: bool = False) -> SequenceLogps:
    """Run ``model`` on a padded batch and return the log-probs of its response tokens; with
    ``sqmass`` also each row's Σ_t log Σ_v p_v² over its response positions. A shared-prompt
    batch gives one row per response (``packed_logps``)."""
    if batch.packed is not None:
        return packed_logps(model, batch, sqmass)
    ids_BT = batch.input_ids_BT
    B, T = ids_BT.shape
    inputs = {"input_ids": ids_BT, "attention_mask": batch.attention_mask_BT}
    positions = torch.arange(T - 1, device=ids_BT.device).expand(B, T - 1)
    return _response_logps(model, inputs, torch.arange(B, device=ids_BT.device), positions, ids_BT[:, 1:],
                           batch.loss_mask_BT[:, 1:], sqmass)


def completion_logps(model: torch.nn.Module, prompts: Sequence[tuple[int, ...]],
                     completions: Sequence[tuple[int, ...]], pad_id: int, batch_size: int = 64) -> torch.Tensor:
    """Summed log-prob of each completion given its prompt (token ids), ``batch_size`` rows at a
    time, without gradients. Returns a float64 tensor of shape (N,) on the CPU."""
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            batch = collate_completions(prompts[start:start + batch_size], completions[start:start + batch_size], pad_id)
            batch.to(device)
            out.append(sequence_logps(model, batch).sum_B.double().cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def split_pairs(logps: SequenceLogps, num_pairs: int) -> tuple[SequenceLogps, SequenceLogps]:
    """Split a pair batch's log-probs into (chosen, rejected)."""
    def part(sl: slice) -> SequenceLogps:
        sq = None if logps.sqmass_B is None else logps.sqmass_B[sl]
        return SequenceLogps(logps.token_logps_BT[sl], logps.mask_BT[sl], logps.sum_B[sl], logps.count_B[sl], sq)

    return part(slice(0, num_pairs)), part(slice(num_pairs, 2 * num_pairs))
