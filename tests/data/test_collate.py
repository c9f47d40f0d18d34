"""Collation: token ids to right-padded batch tensors, with hand-built expected tensors."""

from __future__ import annotations

import pytest
import torch

from alignlab.data.collate import collate_pairs, collate_sft
from alignlab.data.records import Message, PairRecord, SFTRecord
from alignlab.data.render import Renderer, Response, TokenizedPair, TokenizedSFT
from alignlab.models import build_tiny_tokenizer

PAD = 99


def two_pairs() -> list[TokenizedPair]:
    return [
        TokenizedPair((10, 11), Response((20, 21, 22), (1, 1, 1)), Response((30,), (1,)), row=1),
        TokenizedPair((12,), Response((23, 24), (0, 1)), Response((31, 32, 33, 34), (1, 1, 1, 1)), row=2),
    ]


def test_collate_pairs_by_hand():
    """Rows are chosen 1, chosen 2, rejected 1, rejected 2; lengths 5, 3, 3, 5, so T = 5.

    Padded cells: 2 + 2 = 4 of 20, so padded_fraction = 4 / 20 = 0.2.
    Loss tokens: 3 + 1 (the 0 in chosen 2's mask stays 0) + 1 + 4 = 9.
    """
    batch = collate_pairs(two_pairs(), pad_id=PAD)
    P = PAD
    assert batch.input_ids_BT.tolist() == [
        [10, 11, 20, 21, 22],
        [12, 23, 24, P, P],
        [10, 11, 30, P, P],
        [12, 31, 32, 33, 34],
    ]
    assert batch.attention_mask_BT.tolist() == [
        [1, 1, 1, 1, 1],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
    ]
    assert batch.loss_mask_BT.tolist() == [
        [0, 0, 1, 1, 1],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 1, 1, 1, 1],
    ]
    assert batch.input_ids_BT.dtype == torch.long
    assert batch.attention_mask_BT.dtype == torch.long
    assert batch.loss_mask_BT.dtype == torch.long
    assert batch.num_pairs == 2
    assert batch.num_tokens == 16
    assert batch.num_loss_tokens == 9
    assert batch.padded_fraction == pytest.approx(0.2, abs=1e-12)


def test_collate_pairs_uses_the_given_pad_id():
    batch = collate_pairs(two_pairs(), pad_id=0)
    assert batch.input_ids_BT[1, 3:].tolist() == [0, 0]
    assert batch.input_ids_BT[2, 3:].tolist() == [0, 0]


def test_collate_sft_by_hand():
    """Lengths 2 + 2 = 4 and 1 + 1 = 2, T = 4; 2 padded cells of 8, padded_fraction = 0.25."""
    examples = [
        TokenizedSFT((5, 6), Response((7, 8), (1, 1))),
        TokenizedSFT((5,), Response((9,), (1,))),
    ]
    batch = collate_sft(examples, pad_id=PAD)
    assert batch.input_ids_BT.shape == (2, 4)
    assert batch.input_ids_BT.tolist() == [[5, 6, 7, 8], [5, 9, PAD, PAD]]
    assert batch.attention_mask_BT.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch.loss_mask_BT.tolist() == [[0, 0, 1, 1], [0, 1, 0, 0]]
    assert batch.num_pairs == 0
    assert batch.padded_fraction == pytest.approx(0.25, abs=1e-12)


def test_no_padding_when_rows_have_equal_length():
    examples = [TokenizedSFT((1,), Response((2, 3), (1, 1))), TokenizedSFT((4, 5), Response((6,), (1,)))]
    batch = collate_sft(examples, pad_id=PAD)
    assert PAD not in batch.input_ids_BT.tolist()[0] + batch.input_ids_BT.tolist()[1]
    assert batch.padded_fraction == 0.0


def test_rendered_pairs_loss_mask_lines_up_with_response_tokens():
    """With real rendering: the ids under loss_mask == 1 are exactly the response ids whose mask is 1."""
    tok = build_tiny_tokenizer()
    records = [
        PairRecord("Hi", " there", " no"),
        PairRecord(
            (Message("user", "q"),),
            (Message("assistant", "long answer"), Message("user", "ok"), Message("assistant", "yes")),
            (Message("assistant", "x"),),
        ),
    ]
    res = Renderer(tok, max_length=128).render(records)
    batch = collate_pairs(res.examples, pad_id=tok.pad_token_id)
    responses = [e.chosen for e in res.examples] + [e.rejected for e in res.examples]
    prompts = [e.prompt_ids for e in res.examples] * 2
    assert batch.input_ids_BT.shape[0] == 4
    assert batch.input_ids_BT.shape[1] == max(len(p) + len(r) for p, r in zip(prompts, responses, strict=True))
    for b, (prompt, resp) in enumerate(zip(prompts, responses, strict=True)):
        row = batch.input_ids_BT[b]
        n = len(prompt) + len(resp)
        assert row[:n].tolist() == list(prompt + resp.ids)
        assert (row[n:] == tok.pad_token_id).all()
        assert int(batch.attention_mask_BT[b].sum()) == n
        picked = row[batch.loss_mask_BT[b].bool()].tolist()
        assert picked == [i for i, m in zip(resp.ids, resp.mask, strict=True) if m]
        assert batch.loss_mask_BT[b, :len(prompt)].sum() == 0


def test_rendered_sft_batch():
    tok = build_tiny_tokenizer()
    res = Renderer(tok, max_length=64).render([SFTRecord("ab", "c"), SFTRecord("", "defg")])
    batch = collate_sft(res.examples, pad_id=tok.pad_token_id)
    # Row 0: "ab" + "c" + EOS = 4 tokens; row 1: BOS + "defg" + EOS = 6 tokens.
    assert batch.input_ids_BT.shape == (2, 6)
    assert batch.attention_mask_BT.sum(-1).tolist() == [4, 6]
    assert batch.loss_mask_BT.tolist() == [[0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]]
    assert batch.input_ids_BT[1, 0] == tok.bos_token_id
    assert batch.padded_fraction == pytest.approx(2 / 12, abs=1e-12)
