"""eval/rm.py: accuracy, calibration, length bias and subsets, on a scorer whose outputs are known."""

from __future__ import annotations

import json
import math

import pytest

from alignlab.cli import main
from alignlab.eval.rm import HeldOutPair, calibration, evaluate_pairs, load_pairs, pearson
from alignlab.rewards import FunctionReward
from alignlab.rewards.base import Scorer, sigmoid


class Table(Scorer):
    """Scores read from a table: score(prompt, response) = SCORES[response]."""

    name = "table"

    def __init__(self, scores: dict[str, float]):
        self.scores = scores

    def score(self, prompts, responses):
        return [self.scores[r] for r in responses]


def test_calibration_by_hand():
    """p = 0.9, 0.2, 0.5, 0.7 with 5 bins of width 0.1 over [0.5, 1]:
    confidences 0.9 (bin 4, right), 0.8 (bin 3, wrong: leans to the rejected), 0.5 (bin 0, a tie:
    half right) and 0.7 (bin 2, right). ECE = ¼(|1 − 0.9| + |0 − 0.8| + |0.5 − 0.5| + |1 − 0.7|)
    = ¼(0.1 + 0.8 + 0 + 0.3) = 0.3."""
    table, ece = calibration([0.9, 0.2, 0.5, 0.7], bins=5)
    assert [row["count"] for row in table] == [1, 0, 1, 1, 1]
    assert [row["accuracy"] for row in table] == [0.5, 0.0, 1.0, 0.0, 1.0]
    assert table[3]["confidence"] == pytest.approx(0.8, abs=1e-15)
    assert ece == pytest.approx(0.3, abs=1e-12)


def test_evaluate_pairs_by_hand():
    """Three pairs scored from a table (Bradley-Terry compare: σ(r_c − r_r)):
    ("good", "bad"): σ(2) ≈ 0.881, right; ("a b c", "x"): σ(−1) ≈ 0.269, wrong; ("same", "same2"):
    σ(0) = 0.5, a tie. Accuracy (1 + 0 + 0.5)/3 = 0.5. Lengths in words: good 1, bad 1, "a b c" 3,
    x 1, same 1, same2 1; only pair 2 differs in length, where the chosen is longer (data 1.0) and
    the scorer leans to the shorter (prefers_longer 0.0)."""
    scores = {"good": 2.0, "bad": 0.0, "a b c": 0.0, "x": 1.0, "same": 0.5, "same2": 0.5}
    pairs = [HeldOutPair("p", "good", "bad", "easy"), HeldOutPair("p", "a b c", "x", "hard"),
             HeldOutPair("q", "same", "same2", "hard")]
    r = evaluate_pairs(Table(scores), pairs, bins=10)
    assert r["accuracy"] == pytest.approx(0.5, abs=1e-15)
    assert r["mean_prob_chosen"] == pytest.approx((sigmoid(2) + sigmoid(-1) + 0.5) / 3, abs=1e-15)
    assert r["pairs_differing_in_length"] == 1
    assert r["prefers_longer"] == 0.0 and r["data_prefers_longer"] == 1.0
    assert r["subsets"] == {"easy": {"accuracy": 1.0, "pairs": 1}, "hard": {"accuracy": 0.25, "pairs": 2}}
    lengths = [1, 3, 1, 1, 1, 1]
    values = [2.0, 0.0, 0.5, 0.0, 1.0, 0.5]  # chosen then rejected, in pair order
    assert r["length_correlation"] == pytest.approx(pearson(values, lengths), abs=1e-15)


class Counting(Table):
    """A table scorer that records its calls (pointwise: the base class's compare)."""

    def __init__(self, scores):
        super().__init__(scores)
        self.calls = []

    def score(self, prompts, responses):
        self.calls.append(("score", len(responses)))
        return super().score(prompts, responses)


class FixedComparison(Counting):
    """A pairwise scorer: p = 0.8 for every pair, whatever the scores say."""

    def compare(self, prompts, first, second):
        self.calls.append(("compare", len(first)))
        return [0.8] * len(first)


def test_a_pointwise_scorer_is_scored_once():
    """Table's compare is σ of the score difference: evaluation scores the 2 × 2 responses in one call
    and derives p from them (σ(2) and σ(−1), as the base compare would)."""
    scorer = Counting({"good": 2.0, "bad": 0.0, "a": 0.0, "b": 1.0})
    r = evaluate_pairs(scorer, [HeldOutPair("p", "good", "bad"), HeldOutPair("p", "a", "b")])
    assert scorer.compares_by_score and scorer.calls == [("score", 4)]
    assert r["mean_prob_chosen"] == pytest.approx((sigmoid(2) + sigmoid(-1)) / 2, abs=1e-15)
    assert r["accuracy"] == 0.5


def test_a_pairwise_scorer_is_compared():
    """With its own compare, the scorer is asked for the probabilities: accuracy 1 and mean p 0.8,
    though the scores (good 0, bad 1) lean to the rejected."""
    scorer = FixedComparison({"good": 0.0, "bad": 1.0})
    r = evaluate_pairs(scorer, [HeldOutPair("p", "good", "bad")] * 3)
    assert not scorer.compares_by_score
    assert scorer.calls == [("score", 6), ("compare", 3)]
    assert r["accuracy"] == 1.0 and r["mean_prob_chosen"] == pytest.approx(0.8, abs=1e-15)


def test_pearson_by_hand_and_degenerate():
    """x = (1, 2, 3), y = (2, 4, 7): means 2 and 13/3; Sxy = (−1)(−7/3) + 0 + (1)(8/3) = 5;
    Sxx = 2; Syy = 49/9 + 1/9 + 64/9 = 114/9; r = 5/√(2·114/9) = 15/√228."""
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(15 / math.sqrt(228), abs=1e-15)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3])) and math.isnan(pearson([1], [2]))


def test_a_length_loving_scorer_shows_its_bias():
    """A reward that counts words prefers the longer response in every pair that differs in length,
    and its length correlation is 1."""
    pairs = [HeldOutPair("p", "short", "a much longer answer"), HeldOutPair("p", "one two three", "one"),
             HeldOutPair("p", "x y", "x y z w")]
    r = evaluate_pairs(FunctionReward(lambda p, y: len(y.split())), pairs)
    assert r["prefers_longer"] == 1.0 and r["data_prefers_longer"] == pytest.approx(1 / 3)
    assert r["length_correlation"] == pytest.approx(1.0, abs=1e-12)
    assert r["accuracy"] == pytest.approx(1 / 3)


def test_load_pairs_reads_the_subset_column(tmp_path):
    rows = [{"prompt": "p1", "chosen": "a", "rejected": "b", "subset": "chat"},
            {"prompt": "p2", "chosen": "c", "rejected": "d", "subset": "safety"},
            {"prompt": "p3", "chosen": "e", "rejected": "f"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = load_pairs(str(path))
    assert [p.subset for p in pairs] == ["chat", "safety", None]
    assert [p.subset for p in load_pairs(str(path), subset_column=None)] == [None, None, None]


def test_eval_rm_command_with_a_scorer(tmp_path, capsys):
    """`alignlab eval rm --scorer length:...` on three pairs: the report file holds the numbers
    printed; a missing --model/--scorer is one error line with status 2."""
    rows = [{"prompt": "p", "chosen": "one", "rejected": "one two three", "subset": "s"},
            {"prompt": "p", "chosen": "a b", "rejected": "a b c d"}]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "report.json"
    assert main(["eval", "rm", "--data", str(data), "--scorer", "length:coef=1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["accuracy"] == 1.0 and report["prefers_longer"] == 0.0 and report["pairs"] == 2
    assert report["subsets"] == {"None": {"accuracy": 1.0, "pairs": 1}, "s": {"accuracy": 1.0, "pairs": 1}}
    assert "accuracy               1.0000" in capsys.readouterr().out
    assert main(["eval", "rm", "--data", str(data)]) == 2
    assert "give one of --model or --scorer" in capsys.readouterr().err
    assert main(["eval", "rm", "--data", str(data), "--scorer", "nonsense:x"]) == 2
    assert "unknown kind 'nonsense'" in capsys.readouterr().err


def test_eval_rm_skips_bad_rows_when_asked_as_its_error_says(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a long answer", "rejected": "short"}\n'
                    '{"prompt": "q", "chosen": 3}\n')
    assert main(["eval", "rm", "--data", str(data), "--scorer", "length"]) == 2
    assert "pass --skip-invalid to skip bad rows" in capsys.readouterr().err
    assert main(["eval", "rm", "--data", str(data), "--scorer", "length", "--skip-invalid"]) == 0
    assert "on 1 pairs from" in capsys.readouterr().out
