"""Token ids to padded batch tensors.

Every row is ``prompt + response``, right-padded. ``loss_mask_BT[b, t]`` is 1 where token t of
row b is a response token that carries loss; ``logprobs.py`` shifts it to line up with the
predictions. A pair batch holds all chosen rows first, then all rejected rows, so one forward pass
computes both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from alignlab.data.render import Response, TokenizedPair, TokenizedSFT


@dataclass
class Batch:
    input_ids_BT: torch.Tensor
    attention_mask_BT: torch.Tensor
    loss_mask_BT: torch.Tensor
    num_pairs: int = 0  # pair batches: rows [0, n) are chosen, [n, 2n) rejected
    num_examples: int = 0  # examples (pairs, lists, labelled responses...) the rows come from
    rows_per_example: tuple[int, ...] = ()  # collate_sequences: example i owns the next rows_per_example[i] rows
    examples: list = field(default_factory=list)  # the examples the rows come from (labels, cached values)
    packed: Any = None  # pack.Packed for shared-prompt batches (``collate_packed``)
    # examples the micro-batch stands for but does not compute, their loss known to be exactly 0
    # (online completions with zero advantage): the forward counts their units and nothing else
    idle: list = field(default_factory=list)
    # every example of the micro-batch is idle: one is computed all the same, so that every process
    # runs its forward and backward passes (DDP's, FSDP's and DeepSpeed's collectives need them);
    # its loss is 0 and its metrics do not count
    placeholder: bool = False

    def to(self, device) -> Batch:
        """Move every tensor to ``device`` (in place; returns the batch)."""
        for name in ("input_ids_BT", "attention_mask_BT", "loss_mask_BT"):
            setattr(self, name, getattr(self, name).to(device))
        if self.packed is not None:
            self.packed = self.packed.to(device)
        return self

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask_BT.sum())

    @property
    def num_loss_tokens(self) -> int:
        return int(self.loss_mask_BT.sum())

    @property
    def padded_fraction(self) -> float:
        return 1.0 - self.num_tokens / self.attention_mask_BT.numel()


def pad_rows(rows: Sequence[tuple[tuple[int, ...], Response]], pad_id: int) -> Batch:
    T = max(len(p) + len(r) for p, r in rows)
    B = len(rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    loss = torch.zeros((B, T), dtype=torch.long)
    for b, (prompt, resp) in enumerate(rows):
        n_p, n = len(prompt), len(prompt) + len(resp)
        ids[b, :n] = torch.tensor(prompt + resp.ids, dtype=torch.long)
        attn[b, :n] = 1
        loss[b, n_p:n] = torch.tensor(resp.mask, dtype=torch.long)
    return Batch(ids, attn, loss)


def collate_completions(prompts: Sequence[tuple[int, ...]], completions: Sequence[tuple[int, ...]],
                        pad_id: int) -> Batch:
    """Rows of ``prompt + completion`` with loss on every completion token (generated samples)."""
    rows = [(p, Response(tuple(c), (1,) * len(c))) for p, c in zip(prompts, completions, strict=True)]
    return pad_rows(rows, pad_id)


def collate_sft(examples: Sequence[TokenizedSFT], pad_id: int) -> Batch:
    batch = pad_rows([(e.prompt_ids, e.completion) for e in examples], pad_id)
    batch.num_examples = len(examples)
    return batch


def collate_pairs(examples: Sequence[TokenizedPair], pad_id: int) -> Batch:
    seqs = [e.sequences() for e in examples]
    batch = pad_rows([s[0] for s in seqs] + [s[1] for s in seqs], pad_id)
    batch.num_pairs = batch.num_examples = len(examples)
    batch.examples = list(examples)
    return batch


def collate_sequences(examples: Sequence, pad_id: int) -> Batch:
    """Every row of every example (``example.sequences()``), example after example."""
    seqs = [e.sequences() for e in examples]
    batch = pad_rows([row for s in seqs for row in s], pad_id)
    batch.num_examples = len(examples)
    batch.rows_per_example = tuple(len(s) for s in seqs)
    batch.examples = list(examples)
    return batch
