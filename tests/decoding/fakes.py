"""Tiny stand-ins for token-level search tests: a three-token vocabulary and a model whose next-token
logits depend on the last token only (so a key-value cache changes nothing)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

EOS, A, B = 0, 1, 2


def logp(*probs: float) -> list[float]:
    """Logits that are the log-probabilities themselves (they sum to 1 in probability)."""
    assert abs(sum(probs) - 1) < 1e-12
    return [math.log(p) for p in probs]


class Markov(torch.nn.Module):
    """Next-token logits (EOS, a, b) by the token at each position: ``table[token]``, ``start`` for a
    token not in the table (the prompt's)."""

    def __init__(self, table: dict[int, list[float]], start: list[float]):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.table, self.start = table, start

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=None):
        rows = [[self.table.get(t, self.start) for t in seq] for seq in input_ids.tolist()]
        return SimpleNamespace(logits=torch.tensor(rows, dtype=torch.float32), past_key_values=None)


class Letters:
    eos_token_id = EOS
    pad_token_id = None

    def __init__(self, vocab=("<eos>", "a", "b")):
        self.vocab = vocab

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.vocab[i] for i in ids if 0 < i < len(self.vocab))  # the prompt token 7 reads as ""

    def get_vocab(self):
        return {s: i for i, s in enumerate(self.vocab)}
