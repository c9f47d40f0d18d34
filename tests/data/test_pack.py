"""Shared-prompt packing computes exactly what one row per response computes: log-probs and
their gradients, for pairs, lists, labelled responses with their mismatched twin, and pairs whose
responses answer different prompts."""

from __future__ import annotations

import torch

from alignlab.data.collate import collate_pairs, collate_sequences
from alignlab.data.pack import collate_packed, fill_rows
from alignlab.data.render import Response, TokenizedPair, TokenizedRanked
from alignlab.logprobs import sequence_logps
from alignlab.models import TinyModelConfig, build_tiny_model


def _model(dtype=torch.float64):
    torch.manual_seed(0)
    model, _ = build_tiny_model(TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128))
    return model.to(dtype).eval()


def _resp(ids, mask=None):
    return Response(tuple(ids), tuple(mask or [1] * len(ids)))


PAIRS = [
    TokenizedPair((1, 5, 6, 7), _resp([10, 11, 12, 2]), _resp([13, 2]), row=1),
    TokenizedPair((1, 8), _resp([14, 15, 2]), _resp([16, 17, 18, 19, 20, 2]), row=2),
    # a conversation-like response: a header that carries no loss, then content
    TokenizedPair((1, 9, 9, 9, 9, 9), _resp([30, 31, 40, 2], [0, 0, 1, 1]), _resp([30, 31, 41, 42, 2], [0, 0, 1, 1, 1]), row=3),
    # joint preference: the rejected response answers another prompt
    TokenizedPair((1, 5), _resp([10, 2]), _resp([11, 12, 2]), row=4, rejected_prompt_ids=(1, 6, 6)),
]


def _compare(model, unpacked, packed, tol):
    a = sequence_logps(model, unpacked)
    b = sequence_logps(model, packed)
    assert torch.allclose(a.sum_B, b.sum_B, atol=tol, rtol=0)
    assert torch.equal(a.count_B, b.count_B)
    return a, b


def test_packed_pairs_equal_one_row_per_response_in_fp64():
    model = _model()
    a, b = _compare(model, collate_pairs(PAIRS, pad_id=0), collate_packed(PAIRS, pad_id=0, role_major=True), 1e-10)
    # Gradients of the summed log-probs with respect to every weight agree too, to 1e-6 of weights
    # whose gradients reach ~3: Llama's RMSNorm computes in fp32 even inside an fp64 model, so
    # summing the two responses' contributions to the shared prompt once rather than in two rows
    # differs by fp32 rounding (a joint pair, which shares nothing, agrees to 1e-15).
    ga = torch.autograd.grad(a.sum_B.sum(), list(model.parameters()))
    gb = torch.autograd.grad(b.sum_B.sum(), list(model.parameters()))
    assert max(float((x - y).abs().max()) for x, y in zip(ga, gb, strict=True)) < 1e-6
    assert max(float(x.abs().max()) for x in ga) > 1.0


def test_packed_pairs_in_fp32_within_1e_5():
    model = _model(torch.float32)
    _compare(model, collate_pairs(PAIRS, pad_id=0), collate_packed(PAIRS, pad_id=0, role_major=True), 1e-5)


def test_packed_lists_equal_rows_example_major():
    lists = [TokenizedRanked((1, 5, 6), (_resp([10, 2]), _resp([11, 12, 2]), _resp([13, 14, 15, 2])), (3.0, 2.0, 1.0)),
             TokenizedRanked((1, 7), (_resp([16, 2]), _resp([17, 2])), (1.0, 0.0))]
    model = _model()
    _compare(model, collate_sequences(lists, pad_id=0), collate_packed(lists, pad_id=0, role_major=False), 1e-10)


def test_packing_shares_the_prompt_and_saves_positions():
    batch = collate_packed(PAIRS[:2], pad_id=0, role_major=True)
    # [prompt 4][chosen 4][rejected 2] = 10 and [prompt 2][chosen 3][rejected 6] = 11 positions
    assert batch.input_ids_BT.shape == (2, 11)
    assert batch.attention_mask_BT.sum(-1).tolist() == [10, 11]
    unpacked = collate_pairs(PAIRS[:2], pad_id=0)
    assert unpacked.input_ids_BT.numel() == 4 * 8  # 4 rows padded to 8
    # the rejected response of row 0 sees the prompt and itself, not the chosen response
    att = batch.packed.attention_B1TT[0, 0]
    assert att[8, :4].all() and not att[8, 4:8].any() and att[8, 8] and not att[8, 9]
    assert batch.packed.position_ids_BT[0].tolist()[:10] == [0, 1, 2, 3, 4, 5, 6, 7, 4, 5]


def test_fill_rows_first_fit_longest_first():
    """Budget 5 (the longest): 5 alone; 4 opens a row with 1 free; 3 opens one with 2 free, which
    2 then fills; 1 fills the row of 4."""
    assert fill_rows([5, 3, 2, 4, 1]) == [[0], [1, 2], [3, 4]]
    assert fill_rows([7]) == [[0]]
    assert fill_rows([2, 2, 2, 2]) == [[0], [1], [2], [3]]  # equal lengths never share


def test_short_examples_share_a_row_and_stay_blind_to_each_other():
    short = [TokenizedPair((1, 5), _resp([10, 2]), _resp([11, 2]), row=10),
             TokenizedPair((1, 6, 6), _resp([12, 2]), _resp([13, 14, 2]), row=11)]
    examples = [PAIRS[2], *short, PAIRS[0]]  # 15, 6, 8, 10 positions: 6 and 8 share a row
    batch = collate_packed(examples, pad_id=0, role_major=True)
    assert batch.input_ids_BT.shape == (3, 15)
    assert batch.num_examples == batch.num_pairs == 4
    assert batch.packed.row_N.tolist() == [0, 1, 1, 2, 0, 1, 1, 2]
    att = batch.packed.attention_B1TT[1, 0]
    assert not att[6:, :6].any()  # the second example of row 1 sees nothing of the first
    assert batch.packed.position_ids_BT[1].tolist()[:14] == [0, 1, 2, 3, 2, 3, 0, 1, 2, 3, 4, 3, 4, 5]
    model = _model()
    _compare(model, collate_pairs(examples, pad_id=0), batch, 1e-10)
