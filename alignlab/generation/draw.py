"""Token draws for the native backend: one random stream per (seed, prompt, sample), and the
temperature / top-k / top-p rules applied to a step's logits.

Why not ``torch.multinomial`` with a seeded generator: a torch generator is one stream shared by
every row of a batch, so a sequence's draws would depend on which sequences share its batch and
in which order. Here each draw is the inverse-CDF of one uniform number that is a pure function
of (seed, prompt index, sample index, step): a counter-based generator (the splitmix64 finaliser
over a key built from those four integers; unsigned 64-bit arithmetic in numpy, which wraps by
definition). A sequence's tokens are then the same whatever its batch, its slot or the number of
sequences running beside it, up to the last bits of the logits themselves (a matmul over a batch
of 7 rows and one of 64 may round differently; a draw flips only if its uniform lands within that
rounding of a boundary of the cumulative distribution).
"""

from __future__ import annotations

import numpy as np
import torch

from alignlab.generation.base import SamplingParams

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijection of 64-bit integers that scatters every input bit."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def stream_keys(seed: int, prompts: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """One 64-bit key per sequence from (seed, prompt index, sample index)."""
    with np.errstate(over="ignore"):
        key = _mix(np.full(len(prompts), seed, dtype=np.uint64) + _GOLDEN)
        key = _mix(key ^ (prompts.astype(np.uint64) + _GOLDEN))
        return _mix(key ^ (samples.astype(np.uint64) + _GOLDEN))


def uniform_bits(keys: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """64 random bits (uint64) per key for its ``steps``-th draw: the splitmix64 finaliser of the
    key plus (step + 1) times the golden-ratio increment."""
    with np.errstate(over="ignore"):
        return _mix(keys + (steps.astype(np.uint64) + np.uint64(1)) * _GOLDEN)


def uniforms(keys: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """A uniform number in [0, 1) per sequence for its ``steps``-th token (53 random bits)."""
    return (uniform_bits(keys, steps) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def filtered_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The float32 logits of the distribution tokens are drawn from: divided by the temperature,
    then cut to the ``top_k`` largest (ties with the k-th kept), then to the smallest set of the
    largest whose probability reaches ``top_p`` (a token is kept when the mass of the tokens
    ranked above it is below ``top_p``; the top token always stays). Cut tokens get -inf."""
    z = logits.float() / params.temperature
    if 0 < params.top_k < z.shape[-1]:
        kth = torch.topk(z, params.top_k, dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if params.top_p < 1:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        probs = torch.softmax(sorted_z, dim=-1)
        above = torch.cumsum(probs, dim=-1) - probs
        cut = above >= params.top_p
        cut[:, 0] = False
        z = z.masked_fill(cut.scatter(-1, order, cut), float("-inf"))
    return z


def pick(logits: torch.Tensor, params: SamplingParams, u: torch.Tensor
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens for one step of ``B`` sequences from their ``(B, V)`` logits and ``B`` uniforms.

    Returns the tokens, their log-probs under the raw temperature-1 distribution and their
    log-probs under the distribution they were drawn from (0 for greedy), all float32. A sampled
    token is the first whose cumulative probability (in token-id order) exceeds ``u`` times the
    total.
    """
    raw = logits.float()
    plain = params.temperature == 1 and params.top_k == 0 and params.top_p == 1
    if params.greedy:
        tokens = raw.argmax(dim=-1)
        drawn = torch.zeros(len(raw), device=raw.device)
        raw_lse = torch.logsumexp(raw, dim=-1)
    else:
        z = raw if plain else filtered_logits(raw, params)
        top = z.amax(dim=-1, keepdim=True)
        weights = (z - top).exp_()  # unnormalised probabilities, the largest 1
        tokens, total = inverse_cdf(weights, u)
        lse = top.squeeze(-1) + total.log()
        drawn = z.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - lse
        raw_lse = lse if plain else torch.logsumexp(raw, dim=-1)
    raw_logp = raw.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - raw_lse
    return tokens, raw_logp, drawn


BLOCK = 256


def inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of non-negative ``weights`` (B, V), the first index whose running sum exceeds
    ``u`` times the row's total; also the totals.

    Two levels, so no pass over the vocabulary is sequential: the sums of blocks of 256 weights,
    a running sum over the blocks to find the block, then a running sum inside that block only.
    Where rounding puts the target past the block's last positive weight, that weight is taken
    (never a token of weight 0)."""
    rows, vocab = weights.shape
    full = vocab // BLOCK
    sums = [weights[:, :full * BLOCK].unflatten(1, (full, BLOCK)).sum(-1)] if full else []
    if vocab > full * BLOCK:
        sums.append(weights[:, full * BLOCK:].sum(-1, keepdim=True))
    block_cdf = torch.cumsum(torch.cat(sums, dim=1), dim=1)
    total = block_cdf[:, -1]
    target = (u.to(total.dtype) * total).unsqueeze(-1)
    block = torch.searchsorted(block_cdf, target, right=True).clamp_(max=block_cdf.shape[1] - 1)
    before = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp(min=0)), torch.zeros_like(target))
    cols = block * BLOCK + torch.arange(BLOCK, device=weights.device)
    inside = cols < vocab
    part = weights.gather(1, cols.clamp(max=vocab - 1)) * inside
    offset = torch.searchsorted(torch.cumsum(part, dim=1), target - before, right=True)
    last = ((part > 0) * torch.arange(1, BLOCK + 1, device=weights.device)).argmax(dim=1, keepdim=True)
    return (block * BLOCK + torch.minimum(offset, last)).squeeze(-1), total
