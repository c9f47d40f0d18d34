"""logprobs.py against a naive per-example computation with the tiny model.

The naive reference runs each example alone (no padding, no attention mask), takes a full
``log_softmax`` over the vocabulary in float64, and picks the log-prob of every response token
from the position before it with explicit Python loops.
"""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.data.collate import collate_pairs, collate_sft
from alignlab.data.records import Message, PairRecord, SFTRecord
from alignlab.data.render import Renderer, Response
from alignlab.logprobs import SequenceLogps, gather_logps, sequence_logps, split_pairs
from alignlab.models import build_tiny_model

TOL = 1e-5


def user(text: str) -> Message:
    return Message("user", text)


def assistant(text: str) -> Message:
    return Message("assistant", text)


@pytest.fixture(scope="module")
def model_and_tok():
    model, tok = build_tiny_model()
    model = model.double().eval()
    return model, tok


def naive_response_logps(model, prompt_ids: tuple[int, ...], resp: Response) -> tuple[float, int, dict[int, float]]:
    """Sum and count of response log-probs for one unpadded example, plus per-position values.

    The returned dict maps the shifted position ``t`` (index into logits, predicting token t+1)
    to the log-prob of token t+1, for every response token whose mask is 1.
    """
    ids = list(prompt_ids) + list(resp.ids)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids], dtype=torch.long)).logits[0]
    logp = torch.log_softmax(logits.double(), dim=-1)
    total = 0.0
    count = 0
    per_position: dict[int, float] = {}
    for j, keep in enumerate(resp.mask):
        if not keep:
            continue
        pos = len(prompt_ids) + j  # index of the token being predicted
        value = float(logp[pos - 1, ids[pos]])
        per_position[pos - 1] = value
        total += value
        count += 1
    return total, count, per_position


def check_against_naive(model, rows: list[tuple[tuple[int, ...], Response]], out: SequenceLogps) -> None:
    B, T1 = out.token_logps_BT.shape
    assert B == len(rows)
    for b, (prompt_ids, resp) in enumerate(rows):
        total, count, per_position = naive_response_logps(model, prompt_ids, resp)
        assert float(out.sum_B[b]) == pytest.approx(total, abs=TOL)
        assert float(out.count_B[b]) == count
        for t in range(T1):
            got = float(out.token_logps_BT[b, t])
            if t in per_position:
                assert float(out.mask_BT[b, t]) == 1.0
                assert got == pytest.approx(per_position[t], abs=TOL)
            else:
                assert float(out.mask_BT[b, t]) == 0.0
                assert got == 0.0


def pair_records() -> list[PairRecord]:
    return [
        PairRecord("Hello", " world, how are you today?", " no.", source="t", row=1),
        PairRecord("", "short", "a slightly longer rejected answer", source="t", row=2),
        PairRecord(
            (Message("system", "Be brief."), user("What is 2+2?")),
            (assistant("4"),),
            (assistant("It is five, I think."),),
            source="t",
            row=3,
        ),
        PairRecord(
            (user("Tell me a joke."),),
            (assistant("Why?"), user("Go on."), assistant("Because.")),
            (assistant("No."),),
            source="t",
            row=4,
        ),
    ]


def has_inner_zero(mask: tuple[int, ...]) -> bool:
    """True when a 0 sits between two 1s."""
    ones = [i for i, m in enumerate(mask) if m]
    return any(mask[i] == 0 for i in range(ones[0], ones[-1]))


def test_sequence_logps_pair_batch_matches_naive(model_and_tok):
    model, tok = model_and_tok
    res = Renderer(tok, max_length=128).render(pair_records())
    assert not res.issues and len(res.examples) == 4
    # The setup must exercise what the test is about: padding, and masks with zeros inside.
    lengths = [len(e.prompt_ids) + len(r) for e in res.examples for r in (e.chosen, e.rejected)]
    assert len(set(lengths)) > 1
    assert has_inner_zero(res.examples[3].chosen.mask)
    assert res.examples[2].chosen.mask[0] == 0  # the "<|assistant|>" opener

    batch = collate_pairs(res.examples, pad_id=tok.pad_token_id)
    assert int((batch.attention_mask_BT == 0).sum()) > 0
    with torch.no_grad():
        out = sequence_logps(model, batch)

    rows = [(e.prompt_ids, e.chosen) for e in res.examples] + [(e.prompt_ids, e.rejected) for e in res.examples]
    check_against_naive(model, rows, out)

    chosen, rejected = split_pairs(out, batch.num_pairs)
    for i, e in enumerate(res.examples):
        c_total, c_count, _ = naive_response_logps(model, e.prompt_ids, e.chosen)
        r_total, r_count, _ = naive_response_logps(model, e.prompt_ids, e.rejected)
        assert float(chosen.sum_B[i]) == pytest.approx(c_total, abs=TOL)
        assert float(rejected.sum_B[i]) == pytest.approx(r_total, abs=TOL)
        assert float(chosen.count_B[i]) == c_count
        assert float(rejected.count_B[i]) == r_count


def test_sequence_logps_multi_turn_sft_batch_matches_naive(model_and_tok):
    model, tok = model_and_tok
    records = [
        SFTRecord(
            (user("Hi"),),
            (assistant("Hello there."), user("Bye"), assistant("Goodbye, friend!")),
            source="t",
            row=1,
        ),
        SFTRecord("Plain prompt", " and a plain completion", source="t", row=2),
    ]
    res = Renderer(tok, max_length=128).render(records)
    assert not res.issues
    assert has_inner_zero(res.examples[0].completion.mask)
    batch = collate_sft(res.examples, pad_id=tok.pad_token_id)
    with torch.no_grad():
        out = sequence_logps(model, batch)
    check_against_naive(model, [(e.prompt_ids, e.completion) for e in res.examples], out)
    # The user turn inside the completion carries no loss: the count is the assistant tokens only.
    n_assistant = len("Hello there.") + 1 + len("Goodbye, friend!") + 1  # byte tokens + <|end|> each
    assert float(out.count_B[0]) == n_assistant
    assert float(out.mean_B[0]) == pytest.approx(float(out.sum_B[0]) / n_assistant, abs=1e-6)


def test_sequence_logps_fp32_model_matches_naive():
    model, tok = build_tiny_model()
    model.eval()
    res = Renderer(tok, max_length=64).render(pair_records()[:2])
    batch = collate_pairs(res.examples, pad_id=tok.pad_token_id)
    with torch.no_grad():
        out = sequence_logps(model, batch)
    rows = [(e.prompt_ids, e.chosen) for e in res.examples] + [(e.prompt_ids, e.rejected) for e in res.examples]
    check_against_naive(model, rows, out)


@pytest.mark.parametrize("chunk_rows", [1, 3, 8])
def test_gather_logps_equals_log_softmax_gather(chunk_rows):
    g = torch.Generator().manual_seed(1)
    B, T, V = 5, 7, 11
    logits = torch.randn(B, T, V, generator=g) * 4.0
    targets = torch.randint(0, V, (B, T), generator=g)
    expected = torch.log_softmax(logits.double(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    got = gather_logps(logits, targets, chunk_rows=chunk_rows)
    assert got.shape == (B, T)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)
    # Each row is computed on its own, so the chunk size does not change the values.
    torch.testing.assert_close(got, gather_logps(logits, targets, chunk_rows=B), atol=1e-6, rtol=0)


def test_gather_logps_hand_value():
    """Logits [0, log 3] over two tokens: p = [1/4, 3/4], so log p(1) = log 0.75, log p(0) = log 0.25."""
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    targets = torch.tensor([[1, 0]])
    got = gather_logps(logits, targets, chunk_rows=1)
    assert float(got[0, 0]) == pytest.approx(math.log(0.75), abs=1e-6)
    assert float(got[0, 1]) == pytest.approx(math.log(0.25), abs=1e-6)


def test_split_pairs_returns_chosen_rows_first():
    B, T = 6, 3
    token = torch.arange(B * T, dtype=torch.float32).reshape(B, T)
    mask = torch.ones(B, T)
    mask[4, 2] = 0.0
    logps = SequenceLogps(token, mask, sum_B=torch.arange(B, dtype=torch.float32) * 10,
                          count_B=torch.arange(B, dtype=torch.float32) + 1)
    chosen, rejected = split_pairs(logps, num_pairs=3)
    assert chosen.sum_B.tolist() == [0.0, 10.0, 20.0]
    assert rejected.sum_B.tolist() == [30.0, 40.0, 50.0]
    assert chosen.count_B.tolist() == [1.0, 2.0, 3.0]
    assert rejected.count_B.tolist() == [4.0, 5.0, 6.0]
    assert torch.equal(chosen.token_logps_BT, token[:3])
    assert torch.equal(rejected.token_logps_BT, token[3:])
    assert torch.equal(rejected.mask_BT, mask[3:])
    assert rejected.mask_BT[1, 2] == 0.0
    assert chosen.sqmass_B is None and chosen.entropy_BT is None and chosen.sqmass_BT is None


def test_split_pairs_keeps_the_per_token_squared_mass_and_entropy():
    """Rows 0-1 are the chosen, 2-3 the rejected: every per-row field is cut the same way,
    the per-token log Σp² (``sqmass_BT``) and entropies included, none dropped."""
    B, T = 4, 2
    vals = torch.arange(B * T, dtype=torch.float64).reshape(B, T)
    logps = SequenceLogps(vals, torch.ones(B, T), vals.sum(-1), torch.full((B,), 2.0), sqmass_B=-vals.sum(-1),
                          entropy_BT=vals + 100, sqmass_BT=-vals)
    chosen, rejected = split_pairs(logps, num_pairs=2)
    assert chosen.sqmass_BT.tolist() == [[-0.0, -1.0], [-2.0, -3.0]]
    assert rejected.sqmass_BT.tolist() == [[-4.0, -5.0], [-6.0, -7.0]]
    assert rejected.sqmass_B.tolist() == [-9.0, -13.0]
    assert rejected.entropy_BT.tolist() == [[104.0, 105.0], [106.0, 107.0]]


def test_mean_B_divides_by_count_and_guards_zero():
    logps = SequenceLogps(torch.zeros(2, 1), torch.zeros(2, 1), torch.tensor([-6.0, 0.0]), torch.tensor([4.0, 0.0]))
    assert logps.mean_B.tolist() == [-1.5, 0.0]
