"""Generation health: is the policy's next-token distribution collapsing, and its output repeating?

Measured over a model's own samples (ALGORITHMS.md §8.3; Shi et al. 2024, "Understanding
Likelihood Over-optimisation in Direct Alignment Algorithms"; Li et al. 2016 for distinct-n):

- **top-k entropy** −Σ_{i≤k} p̂_i log p̂_i, where p_1 ≥ p_2 ≥ … are the model's next-token
  probabilities and p̂_i = p_i / Σ_{j≤k} p_j the top k renormalised; at most log k;
- **top-k mass** Σ_{i≤k} p_i, the probability the k most likely tokens hold.

Both are taken at every *generated position* (each position where a sampled token was predicted,
the one that predicts the end-of-sequence token included, at temperature 1, before any top-k or
top-p cut), and averaged over all such positions of all samples (token-weighted). Shi et al. report
both falling as a direct alignment algorithm over-optimises: the distribution narrows onto fewer
tokens (entropy over the top k falls) while the mass outside the few it favours leaks to the tail
(top-k mass falls). The full entropy −Σ_v p_v log p_v at the same positions is reported beside
them. ``k`` defaults to 10 (``TOP_K``): small enough to be about the plausible continuations of a
large vocabulary, and still a small part of the testbed's byte-level vocabulary (263 tokens). The
paper's own k was not checked; pass another with ``--top-k``.

- **KL to a reference**: KL(π ‖ π_ref) ≈ mean over samples of log π(y|x) − log π_ref(y|x), summed
  over the response tokens (the sequence-level estimate of ``eval/sampled.py``, through
  ``logprobs.completion_logps``); unbiased on the policy's own samples, a single term can be negative;
- **distinct-n** for n = 1, 2, 3: the number of distinct n-grams divided by the number of n-grams,
  pooled over all answers (``distinct``; None when the answers hold no n-gram), and the same
  within each prompt's answers averaged over the prompts that have n-grams (``distinct_per_prompt``:
  mode collapse shows there first, since different prompts have different answers anyway). The
  units are whitespace-separated words by default (Li et al.'s), or characters, or the model's
  tokens.

The logits come from one teacher-forced pass over (prompt, sample) through ``logprobs``' batch
layout and, for models whose output layer is a plain matrix (``head_of``), from the decoder's
hidden states times that matrix, a chunk of positions at a time (never B × T × V at once).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from alignlab.data.collate import collate_completions
from alignlab.logprobs import (
    CHUNK_VALUES,
    completion_logps,
    final_hidden,
    forward_inputs,
    head_of,
    response_positions,
)
from alignlab.models import evaluating

TOP_K = 10
DISTINCT_N = (1, 2, 3)
DISTINCT_UNITS = ("words", "chars", "tokens")


def topk_stats(logits_NV: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top-k entropy, top-k mass, full entropy) of each row's softmax, each (N,), in float64.

    k larger than the vocabulary is the whole vocabulary (mass 1). A −inf logit has probability 0
    and adds nothing to either entropy."""
    if k < 1:
        raise ValueError(f"top-k: k must be >= 1, got {k}")
    lg = logits_NV.to(torch.float64)
    lse_N = torch.logsumexp(lg, dim=-1)
    top_NK = lg.topk(min(k, lg.shape[-1]), dim=-1).values
    lse_top_N = torch.logsumexp(top_NK, dim=-1)
    mass_N = torch.exp(lse_top_N - lse_N)
    return _entropy(top_NK, lse_top_N), mass_N, _entropy(lg, lse_N)


def _entropy(logits_NV: torch.Tensor, lse_N: torch.Tensor) -> torch.Tensor:
    logp = logits_NV - lse_N[:, None]
    p = logp.exp()
    return -(p * logp.masked_fill(p == 0, 0.0)).sum(-1)


def distinct_n(answers: Sequence[Sequence[str]], n: int) -> float | None:
    """Distinct n-grams / n-grams over ``answers`` (each a sequence of units); an n-gram never
    spans two answers. None when there is no n-gram (every answer shorter than n units)."""
    if n < 1:
        raise ValueError(f"distinct-n: n must be >= 1, got {n}")
    grams = [tuple(a[i:i + n]) for a in answers for i in range(len(a) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def units(text: str, unit: str) -> list[str]:
    """``text`` as words (whitespace-separated) or characters (tokens come from the sampler)."""
    if unit == "words":
        return text.split()
    if unit == "chars":
        return list(text)
    raise ValueError(f"units: unit must be words or chars here, got {unit!r}")


def distinct_report(groups: Sequence[Sequence[Sequence[str]]], ns: Sequence[int] = DISTINCT_N) -> dict:
    """``distinct`` (pooled over every answer) and ``distinct_per_prompt`` (mean over the prompts
    that have an n-gram), keyed ``"1"``, ``"2"``, ...; ``groups`` holds each prompt's answers."""
    pooled = [a for g in groups for a in g]
    per_prompt: dict[str, float | None] = {}
    for n in ns:
        values = [v for v in (distinct_n(g, n) for g in groups) if v is not None]
        per_prompt[str(n)] = sum(values) / len(values) if values else None
    return {"distinct": {str(n): distinct_n(pooled, n) for n in ns}, "distinct_per_prompt": per_prompt}


@torch.no_grad()
def topk_sums(model: torch.nn.Module, prompts: Sequence[tuple[int, ...]], responses: Sequence[tuple[int, ...]],
              pad_id: int, k: int = TOP_K, batch_size: int = 64) -> dict[str, float]:
    """Sums over every generated position of the top-k entropy, top-k mass and full entropy of
    ``model``'s next-token distribution, and the number of positions (``positions``), for each
    (prompt, response) given as token ids."""
    device = next(model.parameters()).device
    sums = {"positions": 0.0, "topk_entropy": 0.0, "topk_mass": 0.0, "entropy": 0.0}
    served = head_of(model)
    for start in range(0, len(prompts), batch_size):
        batch = collate_completions(prompts[start:start + batch_size], responses[start:start + batch_size], pad_id)
        batch.to(device)
        inputs = forward_inputs(model, batch)
        rows_N, pred_NL, _, mask_NL = response_positions(batch)
        n_idx, k_idx = (mask_NL > 0).nonzero(as_tuple=True)
        rows, cols = rows_N[n_idx], pred_NL[n_idx, k_idx]
        if served is not None:
            decoder, weight = served
            hidden_Kd = final_hidden(model, decoder, **inputs)[rows, cols]
            step = max(1, CHUNK_VALUES // weight.shape[0])
            chunks = (hidden_Kd[s:s + step].to(weight.dtype) @ weight.T for s in range(0, hidden_Kd.shape[0], step))
        else:
            logits = model(**inputs, use_cache=False).logits[rows, cols]
            step = max(1, CHUNK_VALUES // logits.shape[-1])
            chunks = (logits[s:s + step] for s in range(0, logits.shape[0], step))
        for chunk in chunks:
            ent_k, mass, ent = topk_stats(chunk, k)
            sums["positions"] += chunk.shape[0]
            sums["topk_entropy"] += float(ent_k.sum())
            sums["topk_mass"] += float(mass.sum())
            sums["entropy"] += float(ent.sum())
    return sums


def kl_terms(policy: torch.nn.Module, reference: torch.nn.Module, prompts: Sequence[tuple[int, ...]],
             responses: Sequence[tuple[int, ...]], pad_id: int, batch_size: int = 64) -> list[float]:
    """log π(y|x) − log π_ref(y|x) per sample, summed over its tokens (their mean is the KL estimate)."""
    lp = completion_logps(policy, prompts, responses, pad_id, batch_size)
    lr = completion_logps(reference, prompts, responses, pad_id, batch_size)
    return (lp - lr).tolist()


def health_report(groups: Sequence[Sequence[Sequence[str]]], lengths: Sequence[float], model=None, pad_id: int = 0,
                  prompts: Sequence[tuple[int, ...]] = (), responses: Sequence[tuple[int, ...]] = (),
                  reference=None, k: int = TOP_K, batch_size: int = 64) -> dict:
    """Every metric of the module docstring that the inputs allow.

    ``groups``: each prompt's answers as units (for distinct-n); ``lengths``: each answer's length
    (mean reported). With ``model`` and the samples as token ids (``prompts``, ``responses``, the
    response with its end-of-sequence token where it stopped on one): the top-k statistics; with
    ``reference`` as well, the KL estimate and its standard error."""
    out: dict = {"answers": len(lengths), "mean_length": sum(lengths) / len(lengths) if lengths else None,
                 **distinct_report(groups)}
    if model is None:
        return out
    with evaluating(model):
        sums = topk_sums(model, prompts, responses, pad_id, k, batch_size)
        positions = sums.pop("positions")
        out.update(top_k=k, positions=int(positions),
                   **{name: value / positions if positions else None for name, value in sums.items()})
        if reference is not None:
            terms = kl_terms(model, reference, prompts, responses, pad_id, batch_size)
            n = len(terms)
            mean = sum(terms) / n
            var = sum((t - mean) ** 2 for t in terms) / (n - 1) if n > 1 else float("nan")
            out.update(kl=mean, kl_stderr=(var / n) ** 0.5 if n > 1 else None)
    return out
