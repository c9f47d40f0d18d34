"""Transfer Q* (Chakraborty et al. 2024, "Transfer Q Star: Principled Decoding for LLM
Alignment"; ALGORITHMS.md §7.5): an aligned model's implicit reward guides a base model's tokens.

The target is π(z | s_t) ∝ π_base(z | s_t) · exp(α · Q*(s_t, z)), s_t = (prompt x, answer so far
y_{<t}). Q* is estimated with the aligned baseline model ρ (a DPO model): ρ continues
(s_t, z) greedily for L tokens (τ, to its first stop token, within the answer's budget), and
Q̂(s_t, z) = r(x, y_{<t} ⊕ z ⊕ τ) with r ρ's own implicit reward, β·log(ρ(y | x) / π_ref(y | x)),
π_ref the model ρ was trained from (the paper's "direct transfer": the reward the baseline is
optimal for). At each step the base model's ``k`` most likely tokens z are scored
``logit(z) + α · Q̂(s_t, z)`` and the best is taken (temperature 0) or one is sampled from the
softmax of the scores at ``temperature``: the loop is ``search.py``'s (reward-guided search with a
different value), k = 10, L = 20 and α = 1 the paper's code's defaults.

Which implicit reward: the whole answer's, β·log(ρ/π_ref)(y_{<t} ⊕ z ⊕ τ | x), is
β·log(ρ/π_ref)(y_{<t} | x) + β·log(ρ/π_ref)(z ⊕ τ | x, y_{<t}), and the first term is the same for
every candidate of the step (as is the β·log Z(x) the implicit reward leaves out), so neither the
argmax nor the softmax of the scores changes without it. Q̂ here is the second term, the segment
z ⊕ τ only, which costs the rollout's tokens and not the answer's. A stop token that ends τ is
part of the segment (DPO's responses end with it), and a candidate that is a stop token is a
segment of itself.

β is the β ρ was trained with (``beta``, 0.1 by default as DPO's); it only scales Q̂, so the
choice depends on α·β: both are kept because β belongs to the aligned model and α to the search
(the paper's ``rm_weight``).

The three models must share one vocabulary (a candidate's token id has to mean the same to each);
``check_vocabulary`` compares the tokenizers' vocabularies. ``last_report`` counts forward tokens:
the base model's passes over the whole sequence each step, ρ's rollouts (also apart as
``rollout_tokens``; their log-probs come from the same passes) and π_ref's pass over the k
sequences prefix ⊕ z ⊕ τ each step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from alignlab.decoding.search import SearchReport, TokenSearch, check_search, rollout
from alignlab.errors import UserError
from alignlab.logprobs import completion_logps


def check_vocabulary(named: Sequence[tuple[str, object]]) -> None:
    """One-line error unless every tokenizer in ``named`` ((name, tokenizer) pairs, the name as the
    error should show it) has the first's vocabulary (``get_vocab()``)."""
    (first, tok), *rest = named
    vocab = tok.get_vocab()
    for name, other in rest:
        theirs = other.get_vocab()
        if theirs != vocab:
            differ = len(set(vocab.items()) ^ set(theirs.items()))
            raise UserError(f"transfer-q needs one vocabulary: {first} and {name} have different vocabularies "
                            f"({len(vocab)} and {len(theirs)} tokens, {differ} entries not shared)")


class TransferQ(TokenSearch):
    """A ``Generator`` that decodes the base ``model`` guided by ``aligned``'s implicit reward
    against ``reference`` (see the module docstring). ``weight`` is α, ``beta`` the implicit
    reward's β; ``aligned_tokenizer`` and ``reference_tokenizer``, when given, are checked to share
    ``tokenizer``'s vocabulary."""

    def __init__(self, model, tokenizer, aligned, reference, k: int = 10, lookahead: int = 20, weight: float = 1.0,
                 beta: float = 0.1, aligned_tokenizer=None, reference_tokenizer=None):
        if aligned is None:
            raise UserError("transfer-q needs the aligned model whose implicit reward guides the base model "
                            "(--aligned DIR, e.g. a DPO model)")
        if reference is None:
            raise UserError("transfer-q needs the aligned model's reference model, the one it was trained from "
                            "(--reference DIR): its implicit reward is beta * log(aligned / reference)")
        check_search("transfer-q", k, weight, lookahead)
        if not (math.isfinite(beta) and beta > 0):
            raise UserError(f"transfer-q: beta must be a finite number > 0, got {beta}")
        check_vocabulary([(name, t) for name, t in (("the base model", tokenizer), ("the aligned model",
                          aligned_tokenizer), ("the reference model", reference_tokenizer)) if t is not None])
        self.model, self.tok, self.aligned, self.reference = model, tokenizer, aligned, reference
        self.k, self.weight, self.lookahead, self.beta = k, float(weight), lookahead, float(beta)
        self.last_report = SearchReport()

    def values(self, text, prefix, answer, candidates, horizon, stops, report):
        rolled = rollout(self.aligned, prefix, candidates, horizon, stops, report)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else (self.tok.eos_token_id or 0)
        ref = completion_logps(self.reference, [tuple(prefix)] * len(candidates),
                               [tuple(s) for s in rolled.tokens], pad).tolist()
        report.forward_tokens += sum(len(prefix) + len(s) for s in rolled.tokens)
        return [self.beta * (a - r) for a, r in zip(rolled.logps, ref, strict=True)]
