"""Shared-prompt packing: a prompt goes through the model once, with all its responses after it.

A packed row holds, for each of its examples, the prompt and then each response to it, side by
side: ``[prompt][chosen][rejected]``. A block attention mask lets every response see the whole
prompt and its own earlier tokens, never another response; each response's position ids continue
from the end of the prompt, so every response is computed exactly as if it followed the prompt
alone. A response's first token is predicted from the prompt's last position.

Compared with one row per response this computes each prompt once instead of once per response,
and a pair costs ``P + C + R`` positions instead of ``2·max(P + C, P + R)`` after padding.
Examples whose responses answer different prompts (joint preference) pack each prompt with its
own responses in the same row. Short examples share a row (``fill_rows``), each blind to the
others and with its own position ids, so a batch pads only what no example fits into.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from alignlab.data.collate import Batch


@dataclass
class Packed:
    """Where each response's tokens sit in a packed batch, responses in the order of the batch.

    ``row_N`` is the packed row of response n; ``pred_NL[n, k]`` the position whose logits predict
    its token k, ``target_NL[n, k]`` that token, ``mask_NL[n, k]`` 1 where it carries loss."""

    attention_B1TT: torch.Tensor  # bool, True where query t may attend to key s
    position_ids_BT: torch.Tensor
    row_N: torch.Tensor
    pred_NL: torch.Tensor
    target_NL: torch.Tensor
    mask_NL: torch.Tensor

    def to(self, device: torch.device) -> Packed:
        return Packed(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def _layout(example) -> tuple[list[int], list]:
    """One example's packed ids (each distinct prompt once, then its responses) and, per
    response, ((prompt start, prompt length), response start, response), offsets within the example."""
    ids: list[int] = []
    starts: dict[tuple[int, ...], tuple[int, int]] = {}
    spans = []
    for prompt, resp in example.sequences():
        prompt = tuple(prompt)
        if prompt not in starts:
            starts[prompt] = (len(ids), len(prompt))
            ids.extend(prompt)
        spans.append((starts[prompt], len(ids), resp))
        ids.extend(resp.ids)
    return ids, spans


def fill_rows(lengths: Sequence[int]) -> list[list[int]]:
    """Examples (by index) assigned to rows no longer than the longest example: first fit,
    longest first, so short examples fill the room long ones leave. Rows in order of their
    first example; each row's examples in index order."""
    budget = max(lengths)
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(budget - lengths[i])
    return sorted(sorted(r) for r in rows)


def collate_packed(examples: Sequence, pad_id: int, role_major: bool) -> Batch:
    """Examples packed into as few rows as fit the longest one (``fill_rows``), each example
    blind to the others. Responses are listed role-major (every example's first response, then
    every second one: the order ``collate_pairs`` uses) or example-major (the order
    ``collate_sequences`` uses)."""
    layouts = [_layout(ex) for ex in examples]
    groups = fill_rows([len(ids) for ids, _ in layouts])
    row_of, offset_of = {}, {}
    row_ids = []
    for b, group in enumerate(groups):
        ids: list[int] = []
        for e in group:
            row_of[e], offset_of[e] = b, len(ids)
            ids.extend(layouts[e][0])
        row_ids.append(ids)
    # assembled in numpy: hundreds of small slice assignments cost microseconds each there, tens
    # of microseconds each as torch operations
    B, T = len(row_ids), max(len(r) for r in row_ids)
    input_ids = np.full((B, T), pad_id, dtype=np.int64)
    real = np.zeros((B, T), dtype=np.int64)
    loss = np.zeros((B, T), dtype=np.int64)
    positions = np.zeros((B, T), dtype=np.int64)
    attend = np.zeros((B, 1, T, T), dtype=bool)
    causal = np.tri(T, dtype=bool)
    spans = []  # per example, its responses' spans in row coordinates
    for e, (_, mine) in enumerate(layouts):
        b, o = row_of[e], offset_of[e]
        spans.append([((o + p0, pn), o + r0, resp) for (p0, pn), r0, resp in mine])
        for (p0, pn), r0, resp in spans[-1]:
            n = len(resp)
            attend[b, 0, p0:p0 + pn, p0:p0 + pn] = causal[:pn, :pn]
            attend[b, 0, r0:r0 + n, p0:p0 + pn] = True
            attend[b, 0, r0:r0 + n, r0:r0 + n] = causal[:n, :n]
            positions[b, p0:p0 + pn] = np.arange(pn)
            positions[b, r0:r0 + n] = np.arange(pn, pn + n)
            loss[b, r0:r0 + n] = resp.mask
    pad_rows, pad_cols = [], []
    for b, ids in enumerate(row_ids):
        input_ids[b, :len(ids)] = ids
        real[b, :len(ids)] = 1
        pad_rows.extend([b] * (T - len(ids)))
        pad_cols.extend(range(len(ids), T))
    attend[pad_rows, 0, pad_cols, pad_cols] = True  # padding attends to itself only (no empty attention row)

    order = [(e, j) for e in range(len(examples)) for j in range(len(spans[e]))]
    if role_major:
        order.sort(key=lambda ej: (ej[1], ej[0]))
    L = max(len(spans[e][j][2]) for e, j in order)
    N = len(order)
    row = np.array([row_of[e] for e, _ in order], dtype=np.int64)
    pred = np.zeros((N, L), dtype=np.int64)
    target = np.full((N, L), pad_id, dtype=np.int64)
    mask = np.zeros((N, L), dtype=np.float32)
    for n, (e, j) in enumerate(order):
        (p0, pn), r0, resp = spans[e][j]
        k = len(resp)
        pred[n, 0] = p0 + pn - 1
        if k:  # an empty response keeps its place, with no tokens
            pred[n, 1:k] = np.arange(r0, r0 + k - 1)
            target[n, :k] = resp.ids
            mask[n, :k] = resp.mask
    input_ids, real, loss = (torch.from_numpy(a) for a in (input_ids, real, loss))
    attend, positions, row, pred, target, mask = (
        torch.from_numpy(a) for a in (attend, positions, row, pred, target, mask))
    batch = Batch(input_ids, real, loss)
    batch.num_examples = len(examples)
    batch.num_pairs = len(examples) if role_major else 0
    batch.rows_per_example = tuple(len(s) for s in spans)
    batch.examples = list(examples)
    batch.packed = Packed(attend, positions, row, pred, target, mask)
    return batch
