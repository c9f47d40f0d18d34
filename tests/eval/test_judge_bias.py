"""Judge bias (eval/judge_bias.py): position reports of any scorer, and the perturbation suite on
fake judges whose weakness is known, so every rate below follows from the judge's rule."""

from __future__ import annotations

import json

import pytest

from alignlab.errors import UserError
from alignlab.eval.judge_bias import (
    Perturbation,
    default_perturbations,
    load_perturbations,
    perturbation_suite,
    position_report,
    verdict_of,
)
from alignlab.eval.perturbations import PERTURBATIONS
from alignlab.rewards.base import Scorer
from alignlab.rewards.judge import CallableBackend, PairwiseJudge

BANDWAGON_CUE = "90% of people"


class SwayedByBandwagon(Scorer):
    """Scores 1 for an answer that says most people prefer it, 0 otherwise: it cannot tell the
    plain answers apart (every base verdict is a tie) and is moved by nothing but the bandwagon line."""

    name = "swayed"

    def score(self, prompts, responses):
        return [float(BANDWAGON_CUE in r) for r in responses]


def test_a_judge_swayed_by_one_perturbation():
    """Base verdicts are all ties (p = 1/2). Bandwagon on either answer makes that answer win
    (p = σ(±1)): every verdict changes, toward the perturbed answer; robustness 0 in both slots and
    a shift of σ(1) − 1/2 ≈ 0.2311 in P(perturbed better). The other three leave both scores 0:
    robustness 1. Overall: 6 of 8 perturbation-slot cells unchanged, 3/4."""
    pairs = 5
    out = perturbation_suite(SwayedByBandwagon(), ["q"] * pairs, [f"a{i}" for i in range(pairs)],
                             [f"b{i}" for i in range(pairs)])
    assert out["base"]["ties"] == 1.0
    bw = out["perturbations"]["bandwagon"]
    assert bw["robustness_rate"] == 0.0
    for slot in ("first", "second"):
        assert bw[slot]["robustness_rate"] == 0.0
        assert bw[slot]["toward_perturbed"] == 1.0 and bw[slot]["away_from_perturbed"] == 0.0
        assert bw[slot]["mean_shift"] == pytest.approx(0.2310585786, abs=1e-9)
    for name in ("authority", "distraction", "reflection"):
        entry = out["perturbations"][name]
        assert entry["robustness_rate"] == 1.0
        assert entry["first"]["mean_shift"] == 0.0 and entry["second"]["toward_perturbed"] == 0.0
    assert out["robustness_rate"] == 0.75
    assert "accuracy" not in out["base"]


TEMPLATE = "Q: {prompt}\n<A>{first}</A>\n<B>{second}</B>\nWhich is better?"


def slots(text: str) -> tuple[str, str]:
    return text.split("<A>", 1)[1].split("</A>", 1)[0], text.split("<B>", 1)[1].split("</B>", 1)[0]


def authority_then_quality(text: str) -> str:
    """A judge that picks the answer citing a source when exactly one does, else the one that says
    "good"."""
    a, b = slots(text)
    if ("Source:" in a) != ("Source:" in b):
        return "[[A]]" if "Source:" in a else "[[B]]"
    return "[[A]]" if "good" in a else "[[B]]"


def test_labelled_pairs_and_a_pairwise_judge():
    """Pair 1 is (good, bad), label A; pair 2 is (bad, good), label B. The judge (asked in both
    orders) is right on both: accuracy 1. Authority on the good answer changes nothing; on the bad
    one it flips the verdict to it. Slot first: pair 1 perturbs the good answer (kept), pair 2 the
    bad one (flipped, away from accuracy): robustness 1/2, accuracy 1/2, toward 1/2. Slot second
    alike. The other perturbations: robustness 1, accuracy 1."""
    judge = PairwiseJudge(CallableBackend(authority_then_quality), template=TEMPLATE)
    out = perturbation_suite(judge, ["q1", "q2"], ["good one", "bad one"], ["bad one", "good one"],
                             labels=["A", "B"])
    assert out["base"]["accuracy"] == 1.0 and out["labelled"] == 2
    auth = out["perturbations"]["authority"]
    for slot in ("first", "second"):
        assert auth[slot]["robustness_rate"] == 0.5
        assert auth[slot]["accuracy"] == 0.5
        assert auth[slot]["toward_perturbed"] == 0.5
    assert out["perturbations"]["distraction"]["first"]["accuracy"] == 1.0
    assert out["perturbations"]["reflection"]["robustness_rate"] == 1.0


def test_position_report_of_a_scorer_without_swap():
    """A scorer whose compare always says 0.75 prefers slot 1 whatever it holds: v1 = "A", the
    swapped verdict "A" maps back to "B", so every pair is inconsistent and all of them favour
    slot 1. A pointwise scorer is consistent by construction."""

    class Slot1(Scorer):
        def score(self, prompts, responses):
            return [0.0] * len(responses)

        def compare(self, prompts, first, second):
            return [0.75] * len(first)

    report = position_report(Slot1(), ["p"] * 3, ["a", "b", "c"], ["x", "y", "z"])
    assert report.consistency_rate == 0.0 and report.inconsistent == 3
    assert report.prefers_first_slot == 1.0 and report.prefers_second_slot == 0.0
    assert report.win_rate_first == 0.5  # (0.75 + 1 − 0.75) / 2
    fair = position_report(SwayedByBandwagon(), ["p"] * 2, ["a", "b"], ["c", "d"])
    assert fair.consistency_rate == 1.0 and fair.inconsistent == 0


def test_position_report_of_a_pairwise_judge_uses_its_raw_verdicts():
    """A judge that always answers [[B]] (even one built with swap=false) is asked in both orders:
    second slot wins both times, so every pair is inconsistent in favour of slot 2."""
    judge = PairwiseJudge(CallableBackend(lambda text: "[[B]]"), template=TEMPLATE, swap=False)
    report = position_report(judge, ["p", "p"], ["a", "b"], ["c", "d"])
    assert report.consistency_rate == 0.0 and report.prefers_second_slot == 1.0


def test_verdict_of():
    assert (verdict_of(0.51), verdict_of(0.5), verdict_of(0.2)) == ("A", "tie", "B")


def test_default_perturbations_each_hold_the_answer_once():
    assert {p.name for p in default_perturbations()} == {"bandwagon", "authority", "distraction", "reflection"}
    for p in default_perturbations():
        assert p.apply("ANSWER{x}").count("ANSWER{x}") == 1  # braces in answers are kept as they are
    assert BANDWAGON_CUE in PERTURBATIONS["bandwagon"]


def test_perturbation_files(tmp_path):
    good = tmp_path / "p.json"
    good.write_text(json.dumps({"shout": "{answer}!!!"}))
    assert load_perturbations(good) == [Perturbation("shout", "{answer}!!!")]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"shout": "{answer}", "lost": "no placeholder"}))
    with pytest.raises(UserError, match=r"bad\.json: perturbation 'lost': the template must be a string holding"):
        load_perturbations(bad)
    with pytest.raises(UserError, match="no such perturbation file"):
        load_perturbations(tmp_path / "missing.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="expected a JSON object"):
        load_perturbations(tmp_path / "list.json")


def test_unparsed_verdicts_count_in_no_rate():
    """A judge that never names an answer gives no verdict: no accuracy, no robustness (None, shown
    '-'), and every one of its 2 pairs x (1 + 2 x 4 perturbations) = 18 calls is counted unparsed.
    A judge whose verdicts on the authority-perturbed first answer alone are unparsed: that slot
    compares no pair; every other slot keeps both pairs."""
    mute = PairwiseJudge(CallableBackend(lambda text: "I cannot decide."), template=TEMPLATE)
    out = perturbation_suite(mute, ["q1", "q2"], ["good one", "bad one"], ["bad one", "good one"], labels=["A", "B"])
    assert out["base"]["accuracy"] is None and out["robustness_rate"] is None and out["unparsed"] == 18
    assert all(e["robustness_rate"] is None and e["first"]["accuracy"] is None
               for e in out["perturbations"].values())

    def shy(text):
        a, _ = slots(text)
        return "hmm" if "Source:" in a else authority_then_quality(text)

    out = perturbation_suite(PairwiseJudge(CallableBackend(shy), template=TEMPLATE, swap=False), ["q1", "q2"],
                             ["good one", "bad one"], ["bad one", "good one"], labels=["A", "B"])
    auth = out["perturbations"]["authority"]
    assert auth["first"]["compared"] == 0 and auth["first"]["robustness_rate"] is None
    assert auth["second"]["compared"] == 2 and out["unparsed"] == 2
    assert out["base"]["accuracy"] == 1.0


def test_judge_bias_prints_dash_for_unparsed(tmp_path, capsys):
    from alignlab.eval.diagnose_cli import format_judge_bias

    mute = PairwiseJudge(CallableBackend(lambda text: "I cannot decide."), template=TEMPLATE)
    suite = perturbation_suite(mute, ["q1"], ["a"], ["b"], labels=["A"])
    report = {"judge": "mute", "pairs_from": "x", "pairs": 1,
              "position": position_report(mute, ["q1"], ["a"], ["b"]).as_dict(), "perturbation": suite}
    text = format_judge_bias(report)
    assert "accuracy             -" in text and "robustness rate      -" in text and "1.000" not in text
    assert "unparsed verdicts    9 of 9" in text
