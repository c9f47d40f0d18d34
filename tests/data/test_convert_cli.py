"""`alignlab convert`: each conversion end to end on files, what it prints, and refused options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignlab.cli import main
from alignlab.data.convert_cli import cmd_convert
from alignlab.errors import DataError, UserError


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


SCORED = [{"prompt": "a", "completion": "x", "score": 1}, {"prompt": "a", "completion": "y", "score": 3},
          {"prompt": "b", "completion": "z", "score": 2}, {"prompt": "a", "completion": "w", "score": 2}]
PAIRS = [{"prompt": "q", "chosen": "good", "rejected": "bad", "score_chosen": 9, "score_rejected": 4},
         {"prompt": "r", "chosen": "fine", "rejected": "worse", "score_chosen": 3, "score_rejected": 5}]


def run(tmp_path, capsys, *tokens: str) -> tuple[list[dict], str]:
    out = tmp_path / "out.jsonl"
    assert cmd_convert([*tokens[:2], str(out), *tokens[2:]]) == 0
    return rows(out), capsys.readouterr().out


def test_scored_to_ranked(tmp_path, capsys):
    src = jsonl(tmp_path / "scored.jsonl", SCORED)
    written, printed = run(tmp_path, capsys, "scored-to-ranked", str(src))
    assert written == [{"prompt": "a", "completions": ["y", "w", "x"], "scores": [3.0, 2.0, 1.0]}]
    assert printed.splitlines() == [f"loaded 4 scored responses from {src}",
                                    f"wrote 1 ranked list to {tmp_path / 'out.jsonl'}",
                                    "dropped prompts with one response (1)"]


def test_scored_to_pairs_and_ranked_to_pairs(tmp_path, capsys):
    src = jsonl(tmp_path / "scored.jsonl", SCORED)
    written, _ = run(tmp_path, capsys, "scored-to-pairs", str(src), "--rule", "margin", "--margin", "1.5")
    assert written == [{"prompt": "a", "chosen": "y", "rejected": "x", "score_chosen": 3.0, "score_rejected": 1.0}]
    ranked = jsonl(tmp_path / "ranked.jsonl", [{"prompt": "p", "completions": ["a", "b", "c"], "ranks": [3, 1, 2]}])
    written, printed = run(tmp_path, capsys, "ranked-to-pairs", str(ranked))
    assert [(r["chosen"], r["rejected"], r["score_chosen"]) for r in written] == [("b", "a", -1.0)]
    assert "wrote 1 pair to" in printed
    written, _ = run(tmp_path, capsys, "ranked-to-pairs", str(ranked), "--rule", "all_pairs")
    assert [(r["chosen"], r["rejected"]) for r in written] == [("b", "c"), ("b", "a"), ("c", "a")]
    written, _ = run(tmp_path, capsys, "ranked-to-pairs", str(ranked), "--rule", "random", "--seed", "5")
    assert len(written) == 1 and (written[0]["chosen"], written[0]["rejected"]) in {("b", "c"), ("b", "a"), ("c", "a")}


def test_best_of_n_sft_from_scored_and_ranked_data(tmp_path, capsys):
    """SCORED: a's best is y (3; w ties at 3 but comes later), b's only response is z. The ranked
    row's best is the first of the two ranked 1, as the data orders them."""
    written, printed = run(tmp_path, capsys, "scored-to-sft", str(jsonl(tmp_path / "s.jsonl", SCORED)))
    assert written == [{"prompt": "a", "completion": "y"}, {"prompt": "b", "completion": "z"}]
    assert f"wrote 2 SFT examples to {tmp_path / 'out.jsonl'}" in printed
    ranked = jsonl(tmp_path / "r.jsonl", [{"prompt": "p", "completions": ["c", "a", "b"], "ranks": [2, 1, 1]}])
    written, _ = run(tmp_path, capsys, "ranked-to-sft", str(ranked))
    assert written == [{"prompt": "p", "completion": "a"}]


def test_pairs_to_unpaired(tmp_path, capsys):
    written, printed = run(tmp_path, capsys, "pairs-to-unpaired", str(jsonl(tmp_path / "p.jsonl", PAIRS[:1])))
    assert written == [{"prompt": "q", "completion": "good", "label": True},
                       {"prompt": "q", "completion": "bad", "label": False}]
    assert "wrote 2 labelled responses" in printed


def test_reward_augment(tmp_path, capsys):
    written, printed = run(tmp_path, capsys, "reward-augment", str(jsonl(tmp_path / "p.jsonl", PAIRS)))
    assert [(r["prompt"].split("\n")[1], r["chosen"], r["rejected"]) for r in written] == [
        ("Overall score: 9.", "good", "bad"), ("Overall score: 4.", "bad", "good")]
    assert written[0]["prompt"].endswith("Overall score: 9.\n\nq")
    assert "dropped pairs with score_chosen < score_rejected (1)" in printed


def test_reward_augment_without_scores_names_the_row(tmp_path):
    src = jsonl(tmp_path / "p.jsonl", [PAIRS[0], {"prompt": "q", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match=r"p\.jsonl, row 2, field 'score_chosen'"):
        cmd_convert(["reward-augment", str(src), str(tmp_path / "out.jsonl")])
    assert not (tmp_path / "out.jsonl").exists()


def test_flip_labels(tmp_path, capsys):
    src = jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": f"g{i}", "rejected": f"b{i}"} for i in range(8)])
    written, printed = run(tmp_path, capsys, "flip-labels", str(src), "--rate", "0.25", "--seed", "3")
    flipped = [i + 1 for i, r in enumerate(written) if r["chosen"].startswith("b")]
    assert len(flipped) == 2
    assert f"flipped 2 of 8 pairs: lines {flipped[0]}, {flipped[1]} of" in printed
    again, _ = run(tmp_path, capsys, "flip-labels", str(src), "--rate", "0.25", "--seed", "3")
    assert again == written


def test_column_mapping(tmp_path, capsys):
    src = jsonl(tmp_path / "s.jsonl", [{"q": "a", "answer": "x", "rating": 1}, {"q": "a", "answer": "y", "rating": 2}])
    written, _ = run(tmp_path, capsys, "scored-to-ranked", str(src), "--columns.prompt", "q",
                     "--columns.completion=answer", "--columns.score", "rating")
    assert written == [{"prompt": "a", "completions": ["y", "x"], "scores": [2.0, 1.0]}]


@pytest.mark.parametrize(
    ("tokens", "words"),
    [
        (["scored-to-ranked", "--rule", "random"], "--rule does not apply to scored-to-ranked (its options: none)"),
        (["flip-labels", "--variant", "nosys", "--rate", "0.1"], "--variant does not apply to flip-labels"),
        (["flip-labels"], "flip-labels needs --rate"),
        (["ranked-to-pairs", "--margin", "1"], "--margin applies to --rule margin only"),
        (["ranked-to-pairs", "--rule", "margin"], "--rule margin needs --margin"),
        (["ranked-to-pairs", "--rule", "margin", "--margin", "-1"], "--margin must be a number >= 0 (the least score "
                                                                    "gap of a pair), got -1.0"),
        (["scored-to-pairs", "--rule", "random", "--margin", "nan"], "--margin must be a number >= 0"),
        (["scored-to-pairs", "--seed", "1"], "--seed applies to --rule random only"),
    ],
)
def test_options_that_do_not_apply_are_refused(tmp_path, tokens, words):
    with pytest.raises(UserError) as e:
        cmd_convert([tokens[0], "in.jsonl", str(tmp_path / "out.jsonl"), *tokens[1:]])
    assert words in str(e.value)


def test_input_of_the_wrong_shape_names_the_conversion_to_use(tmp_path):
    src = jsonl(tmp_path / "scored.jsonl", SCORED)
    with pytest.raises(UserError, match="holds scored data .*alignlab convert scored-to-ranked"):
        cmd_convert(["ranked-to-pairs", str(src), str(tmp_path / "out.jsonl")])


def test_nothing_made_is_an_error(tmp_path):
    src = jsonl(tmp_path / "scored.jsonl", SCORED[2:3])
    with pytest.raises(UserError, match=r"scored-to-ranked made nothing .*\(dropped prompts with one response \(1\)\)"):
        cmd_convert(["scored-to-ranked", str(src), str(tmp_path / "out.jsonl")])


def test_skip_invalid_and_output_name(tmp_path, capsys):
    src = jsonl(tmp_path / "p.jsonl", [PAIRS[0], {"prompt": "q", "chosen": "a", "rejected": "a"}])
    with pytest.raises(DataError):
        cmd_convert(["pairs-to-unpaired", str(src), str(tmp_path / "out.jsonl")])
    written, printed = run(tmp_path, capsys, "pairs-to-unpaired", str(src), "--skip-invalid")
    assert len(written) == 2 and "1 invalid row skipped" in printed
    with pytest.raises(UserError, match=r"\*\.jsonl"):
        cmd_convert(["pairs-to-unpaired", str(src), str(tmp_path / "out.json")])


def test_an_output_that_is_the_input_is_refused(tmp_path, capsys):
    """OUT naming IN (by another spelling, or a link to it) would replace the data being converted:
    refused in one line, the input left as it was."""
    src = jsonl(tmp_path / "scored.jsonl", SCORED)
    before = src.read_bytes()
    link = tmp_path / "link.jsonl"
    link.symlink_to(src)
    for out in (src, tmp_path / "." / "scored.jsonl", link):
        assert main(["convert", "scored-to-pairs", str(src), str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{out}: is the input (IN {src}); writing it would replace what is read" in err, err
        assert err.count("\n") == 1
    assert src.read_bytes() == before


def test_usage_errors_exit_2(tmp_path, capsys):
    for tokens, named in ((["nonsense", "a", "b"], "nonsense"), (["flip-labels", "a"], "OUT"),
                          (["pairs-to-unpaired", "a", "b", "--bogus"], "--bogus")):
        with pytest.raises(UserError, match=named):
            cmd_convert(tokens)
        assert main(["convert", *tokens]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("alignlab: error: alignlab convert: ") and named in err


def test_random_rule_takes_a_margin(tmp_path, capsys):
    """Scores 3, 2, 0: with --margin 2.5 the only pair a random draw may give is (3, 0); a list whose
    scores never differ by 2.5 gives none (counted as dropped)."""
    src = jsonl(tmp_path / "r.jsonl", [{"prompt": "a", "completions": ["x", "y", "z"], "scores": [3, 2, 0]},
                                       {"prompt": "b", "completions": ["u", "v"], "scores": [1, 0]}])
    for seed in ("0", "1", "2"):
        written, _ = run(tmp_path, capsys, "ranked-to-pairs", str(src), "--rule", "random", "--margin", "2.5",
                         "--seed", seed)
        assert [(r["prompt"], r["chosen"], r["rejected"]) for r in written] == [("a", "x", "z")]
