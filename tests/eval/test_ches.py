"""eval/ches.py, `alignlab eval ches` and `alignlab convert ches-filter`: CHES on hidden states whose
inner products are worked out by hand, the positions the model path picks, and the rows the filter keeps."""

from __future__ import annotations

import json

import pytest
import torch

from alignlab.cli import main
from alignlab.data.records import PairRecord
from alignlab.eval import ches as ches_module
from alignlab.eval.ches import ches_scores, most_displacing, pair_ches
from alignlab.eval.pairs import render_pairs
from alignlab.models import load_model, load_tokenizer
from tests.conftest import write_jsonl


def test_ches_scores_by_hand():
    """Pair 1: W⁺ = (1, 2), W⁻ = (3, 0), |y⁺| = 2, |y⁻| = 3.
    CHES = ⟨W⁺, W⁻⟩ − ‖W⁺‖² = 3 − 5 = −2; LN: W⁺/2 = (0.5, 1), W⁻/3 = (1, 0): 0.5 − 1.25 = −0.75.
    Pair 2: W⁺ = W⁻ = (2, 2), |y⁺| = 1, |y⁻| = 4: CHES = 8 − 8 = 0; LN: ⟨(2, 2), (0.5, 0.5)⟩ − 8 = 2 − 8 = −6.
    Pair 3: W⁺ = (1, 0), W⁻ = (5, 1), both 1 token: CHES = LN = 5 − 1 = 4."""
    w_plus = torch.tensor([[1.0, 2.0], [2.0, 2.0], [1.0, 0.0]], dtype=torch.float64)
    w_minus = torch.tensor([[3.0, 0.0], [2.0, 2.0], [5.0, 1.0]], dtype=torch.float64)
    ches, ln = ches_scores(w_plus, w_minus, torch.tensor([2.0, 1.0, 1.0]), torch.tensor([3.0, 4.0, 1.0]))
    assert ches.tolist() == pytest.approx([-2.0, 0.0, 4.0], abs=1e-12)
    assert ln.tolist() == pytest.approx([-0.75, -6.0, 4.0], abs=1e-12)


def test_most_displacing_takes_the_highest_and_the_earlier_of_equals():
    scores = torch.tensor([3.0, 7.0, 3.0, -1.0, 7.0])
    assert most_displacing(scores, 2) == [1, 4]
    assert most_displacing(scores, 3) == [0, 1, 4]  # of the two 3.0s, the earlier goes
    assert most_displacing(scores, 0) == []


PAIRS = [
    {"prompt": "Rate it.", "chosen": "Good.", "rejected": "Bad, very bad.", "id": "a", "note": [1, 2]},
    {"prompt": "Rate it.", "chosen": "Quite fine overall.", "rejected": "Poor.", "id": "b"},
    {"prompt": "Name a fruit.", "chosen": "Plum", "rejected": "Pear", "id": "c", "note": None},
    {"prompt": "Say hi.", "chosen": "Hello there, friend.", "rejected": "Go away.", "id": "d"},
    {"prompt": "Count.", "chosen": "1 2 3", "rejected": "3 2 1 0", "id": "e"},
    {"prompt": "", "chosen": "An answer without a prompt.", "rejected": "No.", "id": "f"},
]


def hidden_sum(model, tok, prompt: str, response: str) -> tuple[torch.Tensor, int]:
    """Σ of ``model(..., output_hidden_states=True).hidden_states[-1]`` over the positions that
    predict the response's tokens (its bytes, then EOS), from one unpadded pass: the last prompt
    token (index |x| − 1) through the second-to-last response token (|x| + |y| − 2), |y| vectors.
    An empty prompt is BOS alone, as training renders it."""
    prompt_ids = tok(prompt, add_special_tokens=True)["input_ids"] if prompt else [tok.bos_token_id]
    response_ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
    picked = hidden[len(prompt_ids) - 1:len(prompt_ids) + len(response_ids) - 1]
    assert len(picked) == len(response_ids)
    return picked.double().sum(0), len(response_ids)


def ches_by_hand(model, tok, row: dict) -> tuple[float, float]:
    w, n_w = hidden_sum(model, tok, row["prompt"], row["chosen"])
    r, n_r = hidden_sum(model, tok, row["prompt"], row["rejected"])
    ches = float(torch.dot(w, r) - torch.dot(w, w))
    ln = float(torch.dot(w / n_w, r / n_r) - torch.dot(w / n_w, w / n_w))
    return ches, ln


def _records():
    return [PairRecord(r["prompt"], r["chosen"], r["rejected"], row=i + 1) for i, r in enumerate(PAIRS)]


@pytest.mark.parametrize("plain_head", [True, False], ids=["decoder-only", "output_hidden_states"])
def test_model_path_picks_the_positions_that_predict_the_response(tiny_model_dir, monkeypatch, plain_head):
    """Padded batches of two or four pairs give every pair the CHES of its own unpadded forward
    passes: the positions from the last prompt token to the second-to-last response token. Both
    ways of getting the last layer (the decoder alone, for a plain output layer; otherwise the
    model's own hidden states) give it."""
    if not plain_head:
        monkeypatch.setattr(ches_module, "head_of", lambda model: None)
    model, tok = load_model(str(tiny_model_dir)).eval(), load_tokenizer(str(tiny_model_dir))
    examples = render_pairs(_records(), tok).examples
    want = [ches_by_hand(model, tok, row) for row in PAIRS]
    for batch_size in (2, 4):
        got = pair_ches(model, examples, tok.pad_token_id, batch_size=batch_size)
        assert got.ches.tolist() == pytest.approx([c for c, _ in want], rel=1e-4, abs=1e-3)
        assert got.ln_ches.tolist() == pytest.approx([ln for _, ln in want], rel=1e-4, abs=1e-4)
    assert got.chosen_tokens.tolist() == [6, 20, 5, 21, 6, 28]


def test_ches_filter_keeps_the_lowest_scored_rows_whole(tiny_model_dir, tmp_path, capsys):
    """--drop-fraction 0.5 of 6 pairs drops the 3 with the highest CHES (worked out from the model's
    hidden states above) and writes the other rows as they were, extra columns and all, in order;
    --keep-fraction 0.34 keeps round(2.04) = 2; --length-normalized ranks by LN-CHES."""
    model, tok = load_model(str(tiny_model_dir)).eval(), load_tokenizer(str(tiny_model_dir))
    scores = [ches_by_hand(model, tok, row) for row in PAIRS]
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)

    def kept_rows(extra: list[str]) -> list[dict]:
        out = tmp_path / "kept.jsonl"
        assert main(["convert", "ches-filter", str(data), str(out), "--model", str(tiny_model_dir), "--no-progress",
                     "--device", "cpu", *extra]) == 0
        return [json.loads(line) for line in out.read_text().splitlines()]

    def lowest(k: int, which: int) -> list[dict]:
        order = sorted(range(len(PAIRS)), key=lambda i: scores[i][which])
        return [PAIRS[i] for i in sorted(order[:k])]

    assert kept_rows(["--drop-fraction", "0.5"]) == lowest(3, 0)
    assert "wrote 3 pairs" in capsys.readouterr().out
    assert kept_rows(["--keep-fraction", "0.34"]) == lowest(2, 0)
    assert kept_rows(["--keep-fraction", "0.5", "--length-normalized"]) == lowest(3, 1)
    assert kept_rows(["--drop-fraction", "0"]) == PAIRS


def test_eval_ches_writes_every_pairs_scores(tiny_model_dir, tmp_path, capsys):
    model, tok = load_model(str(tiny_model_dir)).eval(), load_tokenizer(str(tiny_model_dir))
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "scores.jsonl"
    assert main(["eval", "ches", "--data", str(data), "--model", str(tiny_model_dir), "--out", str(out),
                 "--no-progress", "--device", "cpu", "--batch-size", "4"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["row"] for r in rows] == [1, 2, 3, 4, 5, 6]
    want = [ches_by_hand(model, tok, row) for row in PAIRS]
    assert [r["ches"] for r in rows] == pytest.approx([c for c, _ in want], rel=1e-4, abs=1e-3)
    assert [r["ln_ches"] for r in rows] == pytest.approx([ln for _, ln in want], rel=1e-4, abs=1e-4)
    assert "LN-CHES" in capsys.readouterr().out


@pytest.mark.parametrize(("out", "scores", "named", "what"), [
    ("pairs.jsonl", None, "pairs.jsonl", "the input (IN {tmp}/pairs.jsonl)"),
    ("kept.jsonl", "pairs.jsonl", "pairs.jsonl", "the input (IN {tmp}/pairs.jsonl)"),
    ("kept.jsonl", "kept.jsonl", "kept.jsonl", "the output (OUT {tmp}/kept.jsonl)"),
])
def test_ches_filter_refuses_to_write_over_what_it_reads_or_writes(tiny_model_dir, tmp_path, capsys, out, scores,
                                                                  named, what):
    """OUT or --scores-out naming IN would replace the pairs (the dropped ones lost); --scores-out
    naming OUT would replace the kept pairs with scores. Refused before the model loads."""
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    before = data.read_bytes()
    (tmp_path / "kept.jsonl").write_text("earlier\n")
    extra = ["--scores-out", str(tmp_path / scores)] if scores else []
    assert main(["convert", "ches-filter", str(data), str(tmp_path / out), "--model", str(tmp_path / "no-model"),
                 "--drop-fraction", "0.5", "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / named}: is {what.format(tmp=tmp_path)}; writing it would replace" in err, err
    assert err.count("\n") == 1
    assert data.read_bytes() == before and (tmp_path / "kept.jsonl").read_text() == "earlier\n"


def test_eval_ches_refuses_to_write_its_scores_over_the_pairs(tmp_path, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    before = data.read_bytes()
    assert main(["eval", "ches", "--data", str(data), "--model", str(tmp_path / "no-model"), "--out", str(data),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{data}: is the input (--data {data})" in err and err.count("\n") == 1, err
    assert data.read_bytes() == before


def test_ches_filter_refuses_a_fraction_that_keeps_nothing(tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    assert main(["convert", "ches-filter", str(data), str(tmp_path / "o.jsonl"), "--model", str(tiny_model_dir),
                 "--keep-fraction", "0.05", "--no-progress"]) == 2
    assert "keeps none" in capsys.readouterr().err
