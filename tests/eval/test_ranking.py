"""eval/ranking.py and `alignlab eval ranking`: ranking accuracy, idealized ranking accuracy, the
alignment gap and the implicit-reward accuracy, on numbers worked out by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignlab.cli import main
from alignlab.data.records import PairRecord
from alignlab.eval.pairs import PairLogps, pair_logps, render_pairs
from alignlab.eval.ranking import idealized_correct, log_odds, ranking_report
from alignlab.models import load_model, load_tokenizer
from tests.conftest import write_jsonl


def logps(chosen, rejected, chosen_tokens, rejected_tokens) -> PairLogps:
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return PairLogps(t(chosen), t(rejected), t(chosen_tokens), t(rejected_tokens))


# Five pairs: summed log-probs and token counts under the reference and the policy, and α.
#        ℓref(w) |w|  ℓref(l) |l|   c = ℓref(w) − ℓref(l)   LN c = ℓ̄ref(w) − ℓ̄ref(l)   α
#   A     −6     3     −4     1     −2                      −2 − (−4) = +2              none (unanimous)
#   B     −6     2     −4     2     −2                      −3 − (−2) = −1              0.75
#   C     −3     1     −4     2     +1                      −3 − (−2) = −1              0.5
#   D     −3     3     −4     1     +1                      −1 − (−4) = +3              0.0
#   E     −5     5     −5     1      0                      −1 − (−5) = +4              none
REFERENCE = logps([-6, -6, -3, -3, -5], [-4, -4, -4, -4, -5], [3, 2, 1, 3, 5], [1, 2, 2, 1, 1])
ALPHA = [None, 0.75, 0.5, 0.0, None]
# log(α/(1 − α)) with ε = 1e-3 for a side no rater chose: A, E: log 1000 = 6.9078; B: log 3 = 1.0986;
# C: 0; D: log(0.001/1) = −6.9078.
LOG_ODDS = [math.log(1000), math.log(3), 0.0, -math.log(1000), math.log(1000)]
# R* = 1[c + log_odds/β > 0], summed:
#   β = 0.01: A −2+690.8 ✓  B −2+109.9 ✓  C 1 ✓  D 1−690.8 ✗  E 690.8 ✓        → 0.8
#   β = 0.1:  A −2+69.1 ✓   B −2+11.0 ✓   C ✓    D 1−69.1 ✗    E ✓              → 0.8
#   β = 1:    A −2+6.91 ✓   B −2+1.10 ✗   C ✓    D 1−6.91 ✗    E ✓              → 0.6
#   β = 5:    A −2+1.38 ✗   B −2+0.22 ✗   C ✓    D 1−1.38 ✗    E ✓              → 0.4
#   β = 10:   A −2+0.69 ✗   B ✗           C ✓    D 1−0.69 ✓    E ✓              → 0.6
IDEAL_SUMMED = {0.01: [1, 1, 1, 0, 1], 0.1: [1, 1, 1, 0, 1], 1.0: [1, 0, 1, 0, 1], 5.0: [0, 0, 1, 0, 1],
                10.0: [0, 0, 1, 1, 1]}
# Length-normalised, with LN c:
#   A +2 + 6.91/β > 0 always ✓; C −1 + 0 ✗ always; E +4 + 6.91/β ✓ always;
#   B −1 + 1.0986/β: β ≤ 1 ✓ (at β = 1: +0.0986), β = 5: −0.78 ✗, β = 10 ✗;
#   D +3 − 6.91/β: β = 0.01, 0.1, 1 ✗ (at 1: −3.91), β = 5: +1.62 ✓, β = 10: +2.31 ✓.
IDEAL_LN = {0.01: [1, 1, 0, 0, 1], 0.1: [1, 1, 0, 0, 1], 1.0: [1, 1, 0, 0, 1], 5.0: [1, 0, 0, 1, 1],
            10.0: [1, 0, 0, 1, 1]}
# The policy:  ℓθ(w)  ℓθ(l)   R (ℓθ(w) ≥ ℓθ(l))   R̄ (per token)          ρ(w) = ℓθ − ℓref   ρ(l)   ρ(w) > ρ(l)
#   A            −5     −6     ✓                  −5/3 ≥ −6 ✓            1                  −2     ✓
#   B            −7     −7     ✓ (a tie)          −3.5 ≥ −3.5 ✓ (tie)    −1                 −3     ✓
#   C            −3     −2     ✗                  −3 ≥ −1 ✗              0                  2      ✗
#   D            −6     −5     ✗                  −2 ≥ −5 ✓              −3                 −1     ✗
#   E            −4     −9     ✓                  −0.8 ≥ −9 ✓            1                  −4     ✓
POLICY = logps([-5, -7, -3, -6, -4], [-6, -7, -2, -5, -9], [3, 2, 1, 3, 5], [1, 2, 2, 1, 1])


def test_log_odds_by_hand():
    """Unanimous (None or 1): odds 1/ε = 1000; α = 0.75: 3; α = 0.5: 1; α = 0: ε."""
    got = log_odds([None, 1.0, 0.75, 0.5, 0.0])
    want = [math.log(1000), math.log(1000), math.log(3), 0.0, math.log(1e-3)]
    assert got.tolist() == pytest.approx(want, rel=1e-12)
    assert log_odds([None], eps=0.01).tolist() == pytest.approx([math.log(100)], rel=1e-12)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        log_odds([1.5])


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0, 5.0, 10.0])
def test_idealized_correct_per_pair_by_hand(beta):
    odds = torch.tensor(LOG_ODDS, dtype=torch.float64)
    summed = idealized_correct(REFERENCE.chosen, REFERENCE.rejected, odds, beta)
    normalised = idealized_correct(REFERENCE.chosen_mean, REFERENCE.rejected_mean, odds, beta)
    assert summed.tolist() == IDEAL_SUMMED[beta]
    assert normalised.tolist() == IDEAL_LN[beta]


def test_idealized_ranking_is_strict():
    """c = 0 and odds 1 (α = 0.5): the ideal policy gives both responses the same likelihood,
    which is no correct ranking (R* uses >, while R uses ≥)."""
    zero = torch.zeros(1, dtype=torch.float64)
    assert idealized_correct(zero, zero, zero, 1.0).tolist() == [0.0]


def test_ranking_report_by_hand():
    """The table above: R = 3/5 (B's tie counts as correct), R̄ = 4/5, implicit-reward accuracy 3/5;
    the reference's own R: A −6 < −4 ✗, B ✗, C −3 ≥ −4 ✓, D ✓, E −5 ≥ −5 ✓ → 0.6, and per token
    A −2 ≥ −4 ✓, B −3 < −2 ✗, C ✗, D −1 ≥ −4 ✓, E ✓ → 0.6. Gaps R* − R: 0.8 − 0.6 = 0.2 (β = 0.01,
    0.1), 0.0 (β = 1), 0.4 − 0.6 = −0.2 (β = 5), 0.0 (β = 10); per token 0.6 − 0.8 = −0.2 for every β."""
    report = ranking_report(POLICY, REFERENCE, ALPHA)
    assert report["pairs"] == 5
    assert report["ranking_accuracy"] == pytest.approx({"summed": 0.6, "length_normalized": 0.8})
    assert report["reference_ranking_accuracy"] == pytest.approx({"summed": 0.6, "length_normalized": 0.6})
    assert report["ties"] == {"summed": 1, "length_normalized": 1}
    assert report["implicit_reward_accuracy"] == pytest.approx(0.6)
    assert "rewards/accuracies" in report["implicit_reward_accuracy_is"]
    assert report["alpha"] == {"from_data": 3, "unanimous": 2, "eps": 1e-3}
    want = {"0.01": (0.8, 0.6), "0.1": (0.8, 0.6), "1": (0.6, 0.6), "5": (0.4, 0.6), "10": (0.6, 0.6)}
    for beta, (summed, ln) in want.items():
        assert report["idealized_ranking_accuracy"][beta] == pytest.approx({"summed": summed, "length_normalized": ln})
        assert report["alignment_gap"][beta] == pytest.approx({"summed": summed - 0.6, "length_normalized": ln - 0.8})
    assert [p["ranking_correct"] for p in report["per_pair"]] == [True, True, False, False, True]
    assert [p["implicit_reward_correct"] for p in report["per_pair"]] == [True, True, False, False, True]
    assert [p["idealized_correct"]["5"] for p in report["per_pair"]] == [False, False, True, False, True]


def test_a_policy_that_is_its_own_reference_has_no_implicit_reward_accuracy():
    report = ranking_report(REFERENCE, REFERENCE, ALPHA, betas=[1.0], same_model=True)
    assert "implicit_reward_accuracy" not in report
    assert report["ranking_accuracy"] == report["reference_ranking_accuracy"]


# ---------------------------------------------------------------- log-probs from a model

PAIRS = [
    {"prompt": "Rate it.", "chosen": "Good.", "rejected": "Bad, very bad.", "id": 1},
    {"prompt": "Rate it.", "chosen": "Quite fine overall.", "rejected": "Poor.", "id": 2},
    {"prompt": "Name a fruit.", "chosen": "Plum", "rejected": "Pear", "id": 3},
    {"prompt": "Say hi.", "chosen": "Hello there, friend.", "rejected": "Go away.", "strength": 0.8, "id": 4},
]


def uniform_model(src, out):
    """The tiny model with a zero output layer: every next-token distribution is uniform over the
    V = 263 tokens of the byte-level tokenizer (7 specials + 256 bytes)."""
    model, tok = load_model(str(src)), load_tokenizer(str(src))
    with torch.no_grad():
        model.lm_head.weight.zero_()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_ranking_accuracy_of_a_uniform_model_by_hand(tiny_model_dir, tmp_path):
    """Under a uniform model ℓ(y) = −|y|·log 263, |y| the response's bytes plus EOS. Summed, the
    shorter response wins: pair 1 "Good." (6) vs "Bad, very bad." (15) ✓; 2 "Quite fine overall."
    (20) vs "Poor." (6) ✗; 3 "Plum" vs "Pear" (5 and 5): a tie, ✓; 4 (21 vs 9) ✗ → R = 0.5. (Per
    token every response has −log 263, so R̄ is decided by the last bits of the float32 sums and is not
    checked here.)"""
    model_dir = uniform_model(tiny_model_dir, tmp_path / "uniform")
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "report.json"
    assert main(["eval", "ranking", "--data", str(data), "--model", str(model_dir), "--beta", "1",
                 "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    report = json.loads(out.read_text())
    log_v = math.log(263)
    sizes = [(6, 15), (20, 6), (5, 5), (21, 9)]
    for entry, (nw, nl) in zip(report["per_pair"], sizes, strict=True):
        assert (entry["chosen_tokens"], entry["rejected_tokens"]) == (nw, nl)
        assert entry["policy_chosen"] == pytest.approx(-nw * log_v, rel=1e-6)
        assert entry["policy_rejected"] == pytest.approx(-nl * log_v, rel=1e-6)
    assert report["ranking_accuracy"]["summed"] == 0.5
    assert report["ties"]["summed"] == 1
    assert [e["row"] for e in report["per_pair"]] == [1, 2, 3, 4]
    assert [e["alpha"] for e in report["per_pair"]] == [None, None, None, 0.8]


def teacher_forced(model, tok, prompt: str, response: str) -> float:
    """log π(response | prompt) from one unpadded forward pass: the prompt with BOS, then the
    response's bytes and EOS; token t+1's log-prob is read from position t's log-softmax."""
    prompt_ids = tok(prompt, add_special_tokens=True)["input_ids"]
    response_ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return sum(float(logp[len(prompt_ids) - 1 + k, t]) for k, t in enumerate(response_ids))


def test_pair_logps_match_a_teacher_forced_forward_pass(tiny_model_dir):
    """Padded batches of two pairs (responses of different lengths) give each response the log-prob
    of its own unpadded forward pass."""
    model, tok = load_model(str(tiny_model_dir)).eval(), load_tokenizer(str(tiny_model_dir))
    records = [PairRecord(r["prompt"], r["chosen"], r["rejected"], row=i + 1) for i, r in enumerate(PAIRS)]
    got = pair_logps(model, render_pairs(records, tok).examples, tok.pad_token_id, batch_size=2)
    want_c = [teacher_forced(model, tok, r["prompt"], r["chosen"]) for r in PAIRS]
    want_r = [teacher_forced(model, tok, r["prompt"], r["rejected"]) for r in PAIRS]
    assert got.chosen.tolist() == pytest.approx(want_c, abs=1e-4)
    assert got.rejected.tolist() == pytest.approx(want_r, abs=1e-4)
    assert got.chosen_tokens.tolist() == [6, 20, 5, 21]


def test_eval_ranking_of_a_model_against_another(tiny_model_dir, tmp_path, capsys):
    """Policy = the tiny model, reference = the uniform one. R is 1[ℓθ(w) ≥ ℓθ(l)] from teacher-forced
    passes; with the reference uniform, c = −(|w| − |l|)·log 263 and pair 4's α = 0.8 (odds 4), so at
    β = 1: pair 1 c = +9 log 263 ✓; 2 −14 log 263 + 6.91 ✗; 3 0 + 6.91 ✓; 4 −12 log 263 + log 4 ✗ → 0.5."""
    reference = uniform_model(tiny_model_dir, tmp_path / "uniform")
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "report.json"
    assert main(["eval", "ranking", "--data", str(data), "--model", str(tiny_model_dir), "--reference",
                 str(reference), "--beta", "1", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    report = json.loads(out.read_text())
    model, tok = load_model(str(tiny_model_dir)).eval(), load_tokenizer(str(tiny_model_dir))
    correct = [teacher_forced(model, tok, r["prompt"], r["chosen"]) >= teacher_forced(model, tok, r["prompt"],
                                                                                     r["rejected"]) for r in PAIRS]
    assert report["ranking_accuracy"]["summed"] == sum(correct) / 4
    assert report["idealized_ranking_accuracy"]["1"]["summed"] == 0.5
    assert report["reference"] == str(reference)
    printed = capsys.readouterr().out
    assert "ranking accuracy R (policy)" in printed and "implicit-reward accuracy" in printed
    assert "rewards/accuracies" in printed


def test_task_pairs_are_held_out_and_labelled_by_gold(tmp_path):
    """--task arithmetic: pairs on the task's evaluation prompts (none a training prompt of the
    demo's seed), the chosen answer of each scoring higher on the gold reward."""
    from alignlab.tasks import get_task
    from alignlab.testbed.shipped import task_model

    sft = str(task_model("arithmetic", "sft"))
    saved = tmp_path / "held_out.jsonl"
    out = tmp_path / "report.json"
    assert main(["eval", "ranking", "--task", "arithmetic", "--model", sft, "--save-pairs", str(saved),
                 "--beta", "1", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in saved.read_text().splitlines()]
    task = get_task("arithmetic")
    assert rows and {r["prompt"] for r in rows} <= set(task.eval_prompts())
    assert not {r["prompt"] for r in rows} & set(task.train_prompts(512, 0))
    assert all(task.gold(r["prompt"], r["chosen"]) > task.gold(r["prompt"], r["rejected"]) for r in rows)
    report = json.loads(out.read_text())
    assert report["pairs"] == len(rows) and "implicit_reward_accuracy" not in report


def test_a_pair_whose_response_would_be_cut_is_a_bad_row(tiny_model_dir):
    """Row 2's chosen response is 20 tokens (its end token included): with max_length exactly its
    prompt + 20 every response of row 2 fits (its rejected one is shorter: 5 tokens); one token
    less would cut it, so row 2 is a bad row naming the field, and --skip-invalid leaves it out."""
    from alignlab.errors import DataError

    tok = load_tokenizer(str(tiny_model_dir))
    records = [PairRecord(r["prompt"], r["chosen"], r["rejected"], row=i + 1, source="p.jsonl")
               for i, r in enumerate(PAIRS[:2])]
    whole = render_pairs(records, tok)
    assert [len(e.chosen) for e in whole.examples] == [6, 20]
    fits = len(whole.examples[1].prompt_ids) + 20
    assert len(render_pairs(records, tok, max_length=fits)) == 2
    with pytest.raises(DataError) as e:
        render_pairs(records, tok, max_length=fits - 1)
    assert "p.jsonl, row 2" in str(e.value) and "chosen" in str(e.value) and "(20 tokens)" in str(e.value)
    kept = render_pairs(records, tok, max_length=fits - 1, skip_invalid=True)
    assert [r.row for r in kept.records] == [1] and [i.row for i in kept.skipped] == [2]
