"""The diagnostics' commands (eval/diagnose_cli.py), to be wired as `alignlab eval length|health|
judge-bias`: hand-checkable reports from small files, answers drawn from a tiny model, and bad
input as one line naming the file, the row and the field."""

from __future__ import annotations

import json

import pytest

from alignlab.errors import UserError, command_line
from alignlab.eval.diagnose_cli import cmd_health, cmd_judge_bias, cmd_length


def run(cmd, tokens: list[str]) -> int:
    with command_line():
        return cmd(tokens)


def write_rows(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def sample(text: str, score, finished: bool = True) -> dict:
    return {"text": text, "num_tokens": len(text) + int(finished), "finished": finished, "score": score}


A_ROWS = [{"prompt": "p1", "samples": [sample("aaaa", 1), sample("aa", 0)]},
          {"prompt": "p2", "samples": [sample("aaa", 1), sample("a", 0.5)]}]
B_ROWS = [{"prompt": "p1", "samples": [sample("aa", 0), sample("aa", 0)]},
          {"prompt": "p2", "samples": [sample("a", 1), sample("aaa", 0.5)]}]


def test_length_from_two_files(tmp_path, capsys):
    """Pairs (A length, B length; A score vs B score): (4, 2; 1 > 0) wins, (2, 2; 0 = 0) ties,
    (3, 1; 1 = 1) ties, (1, 3; 0.5 = 0.5) ties: win rate (1 + 3·0.5)/4 = 0.625; A longer in 2 of 4,
    shorter in 1. A: mean length 10/4, mean score 2.5/4. In tokens (num_tokens minus the end token
    of a finished sample) the lengths are the same."""
    a, b = write_rows(tmp_path / "a.jsonl", A_ROWS), write_rows(tmp_path / "b.jsonl", B_ROWS)
    out = tmp_path / "report.json"
    assert run(cmd_length, ["--answers", a, "--against", b, "--bootstrap", "30", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["pairs"]["win_rate"] == 0.625 and report["pairs"]["pairs"] == 4
    assert (report["pairs"]["a_longer"], report["pairs"]["a_shorter"]) == (0.5, 0.25)
    assert (report["a"]["mean_length"], report["a"]["mean_score"]) == (2.5, 0.625)
    assert report["b"]["answers"] == 4 and report["a"]["unscored"] == 0
    printed = capsys.readouterr().out
    assert "length-controlled win rate" in printed and "0.625" in printed
    tokens = tmp_path / "tokens.json"
    run(cmd_length, ["--answers", a, "--against", b, "--unit", "tokens", "--bootstrap", "0", "--out", str(tokens)])
    assert json.loads(tokens.read_text())["a"]["mean_length"] == 2.5


def test_length_with_a_scorer_rescores_every_answer(tmp_path, monkeypatch):
    """fn scorer = number of characters: the longer answer wins each pair. Pairs (4, 2), (2, 2),
    (3, 1), (1, 3): 1, 1/2, 1, 0, win rate 0.625 again, now correlated with length (the score is
    the length: correlation 1)."""
    (tmp_path / "lenreward.py").write_text("def chars(prompt, response):\n    return len(response)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    a, b = write_rows(tmp_path / "a.jsonl", A_ROWS), write_rows(tmp_path / "b.jsonl", B_ROWS)
    out = tmp_path / "r.json"
    run(cmd_length, ["--answers", a, "--against", b, "--scorer", "fn:lenreward:chars", "--bootstrap", "0",
                     "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["pairs"]["win_rate"] == 0.625
    assert report["a"]["score_length_correlation"] == pytest.approx(1.0)
    assert [b["mean"] for b in report["pairs"]["win_rate_by_length_diff"]] == [0.0, 0.5, 1.0]


def error_of(cmd, tokens: list[str]) -> str:
    with pytest.raises(UserError) as info:
        run(cmd, tokens)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_input_is_one_line_naming_file_row_and_field(tmp_path):
    a = write_rows(tmp_path / "a.jsonl", A_ROWS)
    missing = str(tmp_path / "nope.jsonl")
    assert "nope.jsonl: no such file or directory" in error_of(cmd_length, ["--answers", missing])
    bad = write_rows(tmp_path / "bad.jsonl", [A_ROWS[0], {"prompt": "p2", "samples": [{"text": "a", "score": "x"}]}])
    assert error_of(cmd_length, ["--answers", a, "--against", bad]) == (
        f"{bad}, row 2, field 'samples': sample 1: score is 'x', not a finite number")
    scores = write_rows(tmp_path / "scores.jsonl", [{"prompt": "p", "completions": ["a", "b"], "scores": [1]}])
    assert error_of(cmd_length, ["--answers", scores]).startswith(f"{scores}, row 1, field 'scores': expected a list of 2")
    none = write_rows(tmp_path / "none.jsonl", [{"prompt": "p", "answer": "a"}])
    assert "row 1: no answers" in error_of(cmd_length, ["--answers", none])
    other = write_rows(tmp_path / "other.jsonl", [A_ROWS[0], {**A_ROWS[1], "prompt": "elsewhere"}])
    assert "row 2 and" in error_of(cmd_length, ["--answers", a, "--against", other])
    assert "--bins must be >= 1" in error_of(cmd_length, ["--answers", a, "--bins", "0"])
    assert "--unit" in error_of(cmd_length, ["--answers", a, "--unit", "lines"])
    no_tokens = write_rows(tmp_path / "nt.jsonl", [{"prompt": "p", "completions": ["a b"], "scores": [1]}])
    assert "row 1: answer 1 has no token count" in error_of(cmd_length, ["--answers", no_tokens, "--unit", "tokens"])
    assert "give --model" in error_of(cmd_health, [])
    assert "no such perturbation file" in error_of(cmd_judge_bias, ["--judge", "length", "--answers", a,
                                                                    "--perturbations", missing])
    assert "one of --pairs, --answers or --model" in error_of(cmd_judge_bias, ["--judge", "length"])


def test_health_from_a_file_without_a_model(tmp_path):
    """Answers "a b", "a c" to p1 and "a b" to p2, in words: unigrams a b a c a b, 3 of 6 distinct;
    bigrams (a b) (a c) (a b), 2 of 3. Within p1: 3 of 4 and 2 of 2; within p2: 2 of 2 and 1 of 1;
    means 7/8 and 1. Mean length 2 words."""
    rows = [{"prompt": "p1", "completions": ["a b", "a c"]}, {"prompt": "p2", "completions": ["a b"]}]
    out = tmp_path / "h.json"
    run(cmd_health, ["--samples", write_rows(tmp_path / "s.jsonl", rows), "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["distinct"] == {"1": 0.5, "2": pytest.approx(2 / 3), "3": None}
    assert report["distinct_per_prompt"]["1"] == 0.875 and report["distinct_per_prompt"]["2"] == 1.0
    assert report["mean_length"] == 2.0 and "topk_mass" not in report


def test_health_drawn_from_a_model_and_read_back(tiny_model_dir, tmp_path):
    """The testbed's arithmetic SFT model (byte-level tokens, digit answers that re-tokenize
    exactly): samples drawn now and the same samples (same seed, native backend) read from an
    `alignlab sample` file give the same positions and top-k numbers; KL to the model itself is 0.
    A tiny random model checks the drawing path on a prompt file."""
    from alignlab.generation import SamplingParams
    from alignlab.sample_cli import SampleJob, run_sample
    from alignlab.testbed.shipped import task_model

    model = str(task_model("arithmetic", "sft"))
    drawn = tmp_path / "drawn.json"
    common = ["--n", "2", "--seed", "3", "--device", "cpu"]
    run(cmd_health, ["--model", model, "--task", "arithmetic", "--limit", "8", "--reference", model,
                     "--out", str(drawn), *common])
    now = json.loads(drawn.read_text())
    assert now["kl"] == 0.0 and now["answers"] == 16 and now["top_k"] == 10
    assert 0 < now["topk_mass"] <= 1 and 0 <= now["topk_entropy"] <= 2.31
    samples = tmp_path / "s.jsonl"
    run_sample(SampleJob(model=model, params=SamplingParams(max_new_tokens=6, seed=3), n=2, task="arithmetic",
                         limit=8, backend="native"), samples, device="cpu")
    read = tmp_path / "read.json"
    run(cmd_health, ["--model", model, "--samples", str(samples), "--out", str(read), "--device", "cpu"])
    back = json.loads(read.read_text())
    assert back["retokenized_length_mismatches"] == 0
    assert back["positions"] == now["positions"]
    assert back["topk_mass"] == pytest.approx(now["topk_mass"], rel=1e-5)
    assert back["topk_entropy"] == pytest.approx(now["topk_entropy"], rel=1e-5)
    prompts = write_rows(tmp_path / "prompts.jsonl", [{"prompt": "Review the lamp."}, {"prompt": "Hi"}])
    tiny = tmp_path / "tiny.json"
    run(cmd_health, ["--model", str(tiny_model_dir), "--prompts", prompts, "--max-new-tokens", "5",
                     "--distinct-unit", "tokens", "--out", str(tiny), *common])
    report = json.loads(tiny.read_text())
    assert report["answers"] == 4 and report["positions"] >= 4


def test_judge_bias_on_pairs_with_a_length_loving_scorer(tmp_path, monkeypatch, capsys):
    """Score = length. Pairs are shown chosen first on row 1 and rejected first on row 2; chosen is
    the longer, so the base verdicts are right (accuracy 1). Every perturbation adds dozens of
    characters: on the shorter answer it flips the verdict, on the longer one it changes nothing.
    Slot first holds the longer answer on row 1 and the shorter on row 2: robustness 1/2 in each
    slot, for every perturbation, and 1/2 overall. The scorer is pointwise: swap-consistent."""
    (tmp_path / "lenreward.py").write_text("def chars(prompt, response):\n    return len(response)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pairs = write_rows(tmp_path / "pairs.jsonl", [{"prompt": "q", "chosen": "a long answer", "rejected": "short"},
                                                   {"prompt": "r", "chosen": "another long one", "rejected": "no"}])
    out = tmp_path / "j.json"
    run(cmd_judge_bias, ["--judge", "fn:lenreward:chars", "--pairs", pairs, "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["position"]["consistency_rate"] == 1.0
    suite = report["perturbation"]
    assert suite["base"]["accuracy"] == 1.0 and suite["robustness_rate"] == 0.5
    for entry in suite["perturbations"].values():
        assert entry["first"]["robustness_rate"] == 0.5 and entry["second"]["robustness_rate"] == 0.5
        assert entry["first"]["accuracy"] == 0.5
    printed = capsys.readouterr().out
    assert "bandwagon" in printed and "robustness rate" in printed


def test_judge_bias_on_answers_labels_by_score(tmp_path):
    """Rows with two scored answers: the higher-scored one is labelled better; a row with equal
    scores has no label, one with fewer than two non-empty answers makes no pair."""
    rows = [{"prompt": "p1", "completions": ["x", "yy"], "scores": [0.0, 1.0]},
            {"prompt": "p2", "completions": ["x", "y"], "scores": [1.0, 1.0]},
            {"prompt": "p3", "samples": [{"text": "only"}, {"text": "  "}]}]
    out = tmp_path / "j.json"
    run(cmd_judge_bias, ["--judge", "length", "--answers", write_rows(tmp_path / "s.jsonl", rows),
                         "--no-perturbations", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["pairs"] == 2 and "perturbation" not in report


def test_answers_b_are_drawn_independently_of_answers_a(tmp_path):
    """The same model on both sides: drawn with one seed, every B answer would be its A answer
    (the native sampler's stream depends on seed, prompt and sample index only), so every length
    difference would be 0 and the win rate exactly 1/2. B draws with a seed of its own, so some
    pairs differ in length (the SFT model's answers differ in length in about half its pairs)."""
    from alignlab.testbed.shipped import task_model

    model = str(task_model("arithmetic", "sft"))
    out = tmp_path / "r.json"
    run(cmd_length, ["--task", "arithmetic", "--limit", "20", "-n", "2", "--model", model, "--against-model", model,
                     "--bootstrap", "0", "--device", "cpu", "--out", str(out)])
    pairs = json.loads(out.read_text())["pairs"]
    assert pairs["pairs"] == 40 and pairs["a_longer"] + pairs["a_shorter"] > 0


def test_judge_bias_skips_bad_pairs_when_asked_as_its_error_says(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "q", "chosen": "a long answer", "rejected": "short"}\n{"prompt": "r", "chosen": 3}\n')
    with pytest.raises(UserError, match="row 2, field 'chosen'.*pass --skip-invalid to skip bad rows"):
        run(cmd_judge_bias, ["--judge", "length", "--pairs", str(pairs), "--no-perturbations"])
    assert run(cmd_judge_bias, ["--judge", "length", "--pairs", str(pairs), "--no-perturbations", "--skip-invalid"]) == 0
    with pytest.raises(UserError, match="--skip-invalid is for --pairs"):
        run(cmd_judge_bias, ["--judge", "length", "--answers", str(pairs), "--skip-invalid"])


@pytest.mark.parametrize("command,args,flag", [
    ("length", ["--answers", "{a}", "--against", "{b}"], "--against"),
    ("health", ["--samples", "{b}"], "--samples"),
    ("judge-bias", ["--judge", "length", "--answers", "{b}"], "--answers"),
    ("rm", ["--scorer", "length", "--data", "{b}"], "--data"),
    ("ranking", ["--model", "{model}", "--data", "{b}"], "--data"),
    ("displacement", ["--models", "{model}", "{model}", "--data", "{b}"], "--data"),
])
def test_a_report_is_not_written_over_the_commands_input(tmp_path, tiny_model_dir, command, args, flag):
    """--out naming an input file is refused before any work, and the file is left as it was (the
    report replaced it: `alignlab eval rm --data pairs.jsonl --out pairs.jsonl` lost the pairs)."""
    from alignlab.cli import main

    a = write_rows(tmp_path / "a.jsonl", A_ROWS)
    b = write_rows(tmp_path / "b.jsonl", [{**row, "chosen": "c", "rejected": "r"} for row in B_ROWS])
    before = (tmp_path / "b.jsonl").read_bytes()
    tokens = [t.format(a=a, b=b, model=tiny_model_dir) for t in args]
    with pytest.raises(UserError) as e:
        with command_line():
            main(["eval", command, *tokens, "--out", b, "--debug"])
    assert str(e.value) == f"{b}: is the input ({flag} {b}); writing it would replace what is read: write to another file"
    assert (tmp_path / "b.jsonl").read_bytes() == before


def test_length_of_unscored_answers_is_reported_and_says_what_needs_a_scorer(tmp_path, capsys):
    """A holds no scores (sample output without --scorer): its 4 answers' lengths are still
    measured, (4 + 2 + 3 + 1) / 4 = 2.5; no score statistic and no pair is made of them, and one
    line says so and names --scorer."""
    unscored = [{"prompt": r["prompt"], "samples": [{k: v for k, v in s.items() if k != "score"}
                                                     for s in r["samples"]]} for r in A_ROWS]
    a, b = write_rows(tmp_path / "un.jsonl", unscored), write_rows(tmp_path / "b.jsonl", B_ROWS)
    out = tmp_path / "report.json"
    assert run(cmd_length, ["--answers", a, "--against", b, "--bootstrap", "0", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert (report["a"]["answers"], report["a"]["mean_length"], report["a"]["scored"]) == (4, 2.5, 0)
    assert "mean_score" not in report["a"] and report["b"]["mean_score"] == 0.375
    assert report["pairs"]["pairs"] == 0 and report["pairs"]["unscored"] == 4
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "un.jsonl: 4 answers hold no score" in notes[0] and "--scorer" in notes[0]


def test_length_refuses_task_with_files(tmp_path):
    a, b = write_rows(tmp_path / "a.jsonl", A_ROWS), write_rows(tmp_path / "b.jsonl", B_ROWS)
    with pytest.raises(UserError, match=r"--task gives the prompts of answers drawn now .*--scorer task:arithmetic"):
        run(cmd_length, ["--answers", a, "--against", b, "--task", "arithmetic"])


def test_health_refuses_kl_of_samples_not_drawn_at_temperature_1(tmp_path):
    """Greedy or truncated samples are not the model's own distribution: a KL to --reference over
    them is refused, before any model loads (the model paths here do not exist)."""
    fake = ["--model", str(tmp_path / "m"), "--reference", str(tmp_path / "r")]
    with pytest.raises(UserError, match=r"--reference with --temperature 0: the KL estimate needs"):
        run(cmd_health, [*fake, "--task", "arithmetic", "--temperature", "0"])
    samples = write_rows(tmp_path / "s.jsonl", A_ROWS)
    with pytest.raises(UserError, match=r"without its record s\.jsonl\.meta\.json .* how they were drawn is unknown"):
        run(cmd_health, [*fake, "--samples", samples])
    meta = tmp_path / "s.jsonl.meta.json"
    for key, value in (("temperature", 0.0), ("top_p", 0.9), ("top_k", 5)):
        meta.write_text(json.dumps({"temperature": 1.0, "top_p": 1.0, "top_k": 0, key: value}))
        with pytest.raises(UserError, match=rf"drawn with {key} {value} \(s\.jsonl\.meta\.json\)"):
            run(cmd_health, [*fake, "--samples", samples])


def test_pairs_take_the_column_option_their_hint_names(tmp_path, monkeypatch, capsys):
    """Pairs under other column names: the error's hint (--columns.chosen NAME ...) is an option
    judge-bias and eval rm take, and with it the pairs read. A scorer of length prefers the longer
    answer, shown chosen first: eval rm's accuracy is 1."""
    from alignlab.cli import main

    (tmp_path / "lenjudge.py").write_text("def chars(prompt, response):\n    return len(response)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cols = write_rows(tmp_path / "cols.jsonl", [{"q": "q1", "good": "long answer", "bad": "s"}])
    mapping = ["--columns.prompt", "q", "--columns.chosen", "good", "--columns.rejected", "bad"]
    for command in (["eval", "judge-bias", "--judge", "fn:lenjudge:chars", "--pairs", cols, "--no-perturbations"],
                    ["eval", "rm", "--scorer", "fn:lenjudge:chars", "--data", cols]):
        assert main(command) != 0
        assert "--columns.chosen NAME" in capsys.readouterr().err
        assert main([*command, *mapping]) == 0
        assert "on 1 pairs" in capsys.readouterr().out
    assert main(["eval", "rm", "--scorer", "fn:lenjudge:chars", "--data", cols, "--out", str(tmp_path / "r.json"),
                 *mapping]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["accuracy"] == 1.0
    assert main(["eval", "judge-bias", "--judge", "fn:lenjudge:chars", "--task", "arithmetic", "--model", "m",
                 "--columns.chosen", "good"]) != 0
    assert "--columns.FIELD is for --pairs" in capsys.readouterr().err
