"""`alignlab decode`: answers through best-of-n, written as `alignlab sample` rows, measured on a task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignlab.cli import main
from alignlab.decode_cli import format_summary
from alignlab.rewards import load_scorer
from alignlab.testbed.shipped import task_model


@pytest.fixture(scope="module")
def sft_model():
    return str(task_model("arithmetic", "sft"))


def test_best_of_n_on_a_task_writes_its_answers_and_measures_them(tmp_path, sft_model, capsys):
    """Scored by the task's gold reward, each answer is the best of its 4 candidates: its recorded
    score is its gold reward (recomputed here), the summary's gold is their mean, the KL estimate
    lies below the bound log 4 − 3/4, and the 4 candidates cost more forward tokens than one plain
    sample."""
    out = tmp_path / "bon.jsonl"
    assert main(["decode", "--method", "best-of-n", "--model", sft_model, "--scorer", "task:arithmetic:gold",
                 "--n", "4", "--task", "arithmetic", "--limit", "24", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 24 and all(len(r["samples"]) == 1 for r in rows)
    gold = load_scorer("task:arithmetic:gold")
    got = [gold.score([r["prompt"]], [r["samples"][0]["text"]])[0] for r in rows]
    assert [r["scores"][0] for r in rows if r["completions"]] == [g for g, r in zip(got, rows, strict=True) if r["completions"]]
    summary = json.loads((tmp_path / "bon.jsonl.summary.json").read_text())
    assert summary["gold"] == pytest.approx(sum(got) / 24, abs=1e-12)
    assert 0 <= summary["kl"] <= summary["kl_bound"] and summary["kl_bound"] == pytest.approx(0.636294, abs=1e-6)
    assert summary["forward_tokens"] > 3 * summary["forward_tokens_plain"]
    assert summary["gold"] >= summary["gold_plain"] and 0 <= summary["win_rate"] <= 1
    assert "win rate vs plain" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--method", "best-of-n"], "--scorer: best-of-n needs a scorer"),
    (["--method", "best-of-n", "--scorer", "task:arithmetic", "--n", "0"], "--n must be >= 1"),
    (["--method", "beam-search", "--scorer", "task:arithmetic"], "unknown decoding method 'beam-search'"),
    (["--method", "qalign"], "--scorer: qalign needs a scorer"),
    (["--method", "reward-guided"], "--scorer: reward-guided needs a scorer"),
    (["--method", "qalign", "--scorer", "task:arithmetic", "--burn-in", "20", "--steps", "4"], "--burn-in in [0, steps]"),
    (["--method", "nudging", "--temperature", "0"], "--aligned: nudging needs an aligned model"),
    (["--method", "best-of-n", "--scorer", "task:arithmetic", "--aligned", "m"], "--aligned: best-of-n does not read it (it is for nudging and transfer-q)"),
    (["--method", "nudging", "--aligned", "m", "--temperature", "0", "--threshold", "0"], "--threshold must be in (0, 1]"),
    (["--method", "nudging", "--aligned", "m", "--temperature", "0", "--threshold", "1.5"], "--threshold must be in"),
    (["--method", "nudging", "--aligned", "m"], "pass --temperature 0"),
    (["--method", "transfer-q", "--reference", "r"], "--aligned: transfer-q needs the aligned model that guides"),
    (["--method", "transfer-q", "--aligned", "a"], "--reference: transfer-q needs the model the aligned model was"),
    (["--method", "transfer-q", "--aligned", "a", "--reference", "r", "--beta", "0.5"],
     "--beta: transfer-q does not read it (it is for qalign); transfer-q's β is --implicit-beta"),
    (["--method", "qalign", "--scorer", "task:arithmetic", "--implicit-beta", "0.5"],
     "--implicit-beta: qalign does not read it (it is for transfer-q)"),
    (["--method", "best-of-n", "--scorer", "task:arithmetic", "--lookahead", "4"],
     "--lookahead: best-of-n does not read it (it is for reward-guided and transfer-q)"),
    (["--method", "reward-guided", "--scorer", "task:arithmetic", "--aligned", "a"],
     "--aligned: reward-guided does not read it (it is for nudging and transfer-q)"),
    (["--method", "reward-guided", "--scorer", "task:arithmetic", "--lookahead", "-1"], "--lookahead must be >= 0"),
    (["--method", "transfer-q", "--aligned", "a", "--reference", "r", "--implicit-beta", "0"], "--implicit-beta > 0"),
    (["--method", "reward-guided", "--scorer", "task:arithmetic", "--candidates", "0"], "--candidates must be >= 1"),
    (["--method", "reward-guided", "--scorer", "task:arithmetic", "--guide-weight", "nan"],
     "--guide-weight must be a finite number, got nan"),
    (["--method", "best-of-n", "--scorer", " "], "--scorer is empty; give a scorer spec (e.g. task:arithmetic or "
                                                  "rm:DIR)"),
    (["--method", "best-of-n", "--scorer", "implicit:policy=/no/p,reference=/no/r,beta=nan"],
     "--scorer: scorer 'implicit:policy=/no/p,reference=/no/r,beta=nan': beta must be a finite number > 0"),
    (["--method", "best-of-n", "--scorer", "implicit:policy=/no/p,reference=/no/r,beta=0"],
     "beta must be a finite number > 0"),
    (["--method", "best-of-n", "--scorer", "task:arithmetic", "--pick-temperature", "-1"],
     "--pick-temperature must be a finite number >= 0 (0: the best), got -1.0"),
    (["--method", "best-of-n", "--scorer", "task:arithmetic", "--calibration-samples", "4"],
     "--calibration-samples: it sets --calibrate's samples; pass --calibrate"),
    (["--method", "urial", "--prefix", "."], "is a folder; give the prefix's text file"),
    (["--method", "reward-guided", "--scorer", "task:arithmetic", "--top-p", "0.5"],
     "--top-p: reward-guided does not read it"),
    (["--method", "transfer-q", "--aligned", "a", "--reference", "r", "--top-k", "5"],
     "--top-k: transfer-q does not read it"),
])
def test_settings_that_cannot_work_are_one_line_errors_before_loading(tmp_path, args, message, capsys):
    code = main(["decode", *args, "--model", str(tmp_path / "no-model"), "--task", "arithmetic",
                 "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("output", "message"), [
    ("no-such-folder/o.jsonl", "folder '{tmp}/no-such-folder' does not exist"),
    (".", "is a folder; name the file to write"),
    ("afile/o.jsonl", "'{tmp}/afile' is a file, not a folder"),
])
def test_an_output_that_cannot_be_written_is_refused_before_loading(tmp_path, output, message, capsys):
    out = str(tmp_path / output) if output != "." else str(tmp_path / "x.jsonl")
    if output == ".":
        (tmp_path / "x.jsonl").mkdir()
    (tmp_path / "afile").write_text("not a folder")
    code = main(["decode", "--method", "best-of-n", "--scorer", "task:arithmetic", "--model",
                 str(tmp_path / "no-model"), "--task", "arithmetic", "--output", out])
    err = capsys.readouterr().err
    assert code == 2 and message.format(tmp=tmp_path) in err and len(err.strip().splitlines()) == 1, err
    assert "no-model" not in err


def test_an_output_that_is_the_prompt_file_is_refused_before_loading(tmp_path, capsys):
    """The answers would replace the prompt file (and every other column of its rows)."""
    prompts = tmp_path / "pairs.jsonl"
    prompts.write_text(json.dumps({"prompt": "1+1=", "chosen": "2", "rejected": "3"}) + "\n")
    before = prompts.read_bytes()
    code = main(["decode", "--method", "best-of-n", "--scorer", "task:arithmetic", "--model",
                 str(tmp_path / "no-model"), "--prompts", str(prompts), "--output", str(prompts)])
    err = capsys.readouterr().err
    assert code == 2 and f"{prompts}: is the prompt file (--prompts {prompts})" in err, err
    assert len(err.strip().splitlines()) == 1 and "no-model" not in err
    assert prompts.read_bytes() == before


def test_a_summary_that_cannot_be_written_is_one_line_after_the_answers(tmp_path, sft_model, capsys):
    """The summary goes beside the answers; where its name is taken by a folder, the answers stay
    written and the error says where they are."""
    out = tmp_path / "bon.jsonl"
    (tmp_path / "bon.jsonl.summary.json").mkdir()
    code = main(["decode", "--method", "best-of-n", "--model", sft_model, "--scorer", "task:arithmetic:gold",
                 "--n", "2", "--task", "arithmetic", "--limit", "3", "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{out}.summary.json: cannot write" in err and f"(the answers are in {out})" in err
    assert len(out.read_text().splitlines()) == 3


def test_urial_answers_after_the_prefix_and_is_measured(tmp_path, sft_model):
    """With a short prefix of the task's own form the command answers, writes rows without scores
    and measures gold, win rate and forward tokens (no KL: it is not defined for urial)."""
    prefix = tmp_path / "prefix.txt"
    prefix.write_text("# Query:\n```\n12+30=\n```\n\n# Answer:\n```\n42\n```")
    out = tmp_path / "urial.jsonl"
    assert main(["decode", "--method", "urial", "--prefix", str(prefix), "--model", sft_model, "--task",
                 "arithmetic", "--limit", "8", "--max-new-tokens", "8", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 8 and all("scores" not in r and "```" not in r["samples"][0]["text"] for r in rows)
    summary = json.loads((tmp_path / "urial.jsonl.summary.json").read_text())
    assert "kl" not in summary and summary["forward_tokens"] > summary["forward_tokens_plain"]


def test_a_prefix_is_for_urial_only(tmp_path, capsys):
    code = main(["decode", "--method", "best-of-n", "--scorer", "task:arithmetic", "--prefix", "p.txt", "--model",
                 "m", "--task", "arithmetic", "--output", str(tmp_path / "o.jsonl")])
    assert code == 2 and "--prefix: an in-context prefix is for urial" in capsys.readouterr().err


def test_qalign_answers_through_its_chains_and_reports_their_acceptance(tmp_path, sft_model):
    """4 steps of the gold-tilted chain on 16 prompts: rows scored by gold (recomputed here), an
    acceptance rate in (0, 1], and 5 sequences' worth of compute per answer at least."""
    out = tmp_path / "qa.jsonl"
    assert main(["decode", "--method", "qalign", "--model", sft_model, "--scorer", "task:arithmetic:gold", "--steps",
                 "4", "--task", "arithmetic", "--limit", "16", "--max-new-tokens", "6", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    gold = load_scorer("task:arithmetic:gold")
    for r in rows:
        assert r["samples"][0]["score"] == gold.score([r["prompt"]], [r["samples"][0]["text"]])[0]
    summary = json.loads((tmp_path / "qa.jsonl.summary.json").read_text())
    assert 0 < summary["acceptance_rate"] <= 1 and summary["steps"] == 4
    assert summary["forward_tokens"] > 2 * summary["forward_tokens_plain"]


def test_a_stop_id_the_model_cannot_write_is_refused_after_it_loads(tmp_path, tiny_model_dir, capsys):
    """The tiny model's output layer has 263 rows: id 263 never ends an answer; refused before any decoding."""
    out = tmp_path / "b.jsonl"
    code = main(["decode", "--method", "best-of-n", "--scorer", "task:arithmetic", "--model", str(tiny_model_dir),
                 "--task", "arithmetic", "--stop-token-ids", "263", "--output", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.endswith("--stop-token-ids: 263 is not among the model's 263 token ids (0 to 262), so no "
                                      "sample would stop there"), err
    assert not out.exists()


def test_reward_guided_search_steers_toward_the_reward(tmp_path, sft_model):
    """Greedy ARGS guided by gold at weight 4 on 16 prompts: its answers' gold (recomputed here) is
    at least greedy decoding's own (weight 0), and each step's forward pass is counted."""
    golds = {}
    for weight in ("0", "4"):
        out = tmp_path / f"rg{weight}.jsonl"
        assert main(["decode", "--method", "reward-guided", "--model", sft_model, "--scorer", "task:arithmetic:gold",
                     "--guide-weight", weight, "--candidates", "5", "--temperature", "0", "--task", "arithmetic",
                     "--limit", "16", "--max-new-tokens", "6", "--output", str(out)]) == 0
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        gold = load_scorer("task:arithmetic:gold")
        golds[weight] = sum(gold.score([r["prompt"]], [r["samples"][0]["text"]])[0] for r in rows) / 16
        summary = json.loads((tmp_path / f"rg{weight}.jsonl.summary.json").read_text())
        assert summary["gold"] == pytest.approx(golds[weight], abs=1e-12) and summary["forward_tokens"] > 0
    assert golds["4"] >= golds["0"]


def test_nudging_a_pretrained_model_with_a_one_word_answerer_gives_the_answerers_answers(tmp_path, sft_model):
    """An arithmetic answer is one word (no space in "95" nor in a sloppy "95."), so the nudger's
    first chunk of 16 tokens holds all of it and its end token, which the method takes whole: with
    the SFT model nudging the pretrained one, the answers are the SFT model's greedy answers, every
    answer token is the nudger's, and the gold reward is theirs; plain (greedy) decoding of the
    pretrained model is measured beside it."""
    from alignlab import generation
    from alignlab.generation import SamplingParams
    from alignlab.models import load_model, load_tokenizer

    out = tmp_path / "nudge.jsonl"
    assert main(["decode", "--method", "nudging", "--model", str(task_model("arithmetic", "pretrained")), "--aligned",
                 sft_model, "--threshold", "0.4", "--temperature", "0", "--task", "arithmetic", "--limit", "16",
                 "--max-new-tokens", "6", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    sft = generation.make_generator(load_model(sft_model), load_tokenizer(sft_model), "native")
    greedy = sft.generate([r["prompt"] for r in rows], 1, SamplingParams(temperature=0, max_new_tokens=6))
    assert [r["samples"][0]["text"] for r in rows] == [g[0].text for g in greedy]
    summary = json.loads((tmp_path / "nudge.jsonl.summary.json").read_text())
    gold = load_scorer("task:arithmetic:gold")
    assert summary["gold"] == pytest.approx(sum(gold.score([r["prompt"] for r in rows], [g[0].text for g in greedy])) / 16,
                                            abs=1e-12)
    assert summary["nudged_share"] == 1.0 and summary["threshold"] == 0.4 and summary["aligned"] == sft_model
    assert summary["forward_tokens"] > summary["forward_tokens_plain"] > 0
    assert "(plain greedy " in format_summary(summary) and "plain sampling" not in format_summary(summary)
    assert "(plain sampling " in format_summary({**summary, "temperature": 1.0})


def test_lookahead_is_counted_and_guides_by_the_rolled_out_text(tmp_path, sft_model):
    """Greedy ARGS guided by gold at weight 4 on 16 prompts, with a lookahead of 3 tokens: its
    summary records the lookahead and the rollouts' forward tokens (a part of the total), and its
    gold (recomputed here) is at least that of the same search without lookahead."""
    golds, summaries = {}, {}
    for lookahead in ("0", "3"):
        out = tmp_path / f"la{lookahead}.jsonl"
        assert main(["decode", "--method", "reward-guided", "--model", sft_model, "--scorer", "task:arithmetic:gold",
                     "--guide-weight", "4", "--candidates", "5", "--lookahead", lookahead, "--temperature", "0",
                     "--task", "arithmetic", "--limit", "16", "--max-new-tokens", "6", "--output", str(out)]) == 0
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        gold = load_scorer("task:arithmetic:gold")
        golds[lookahead] = sum(gold.score([r["prompt"]], [r["samples"][0]["text"]])[0] for r in rows) / 16
        summaries[lookahead] = json.loads((tmp_path / f"la{lookahead}.jsonl.summary.json").read_text())
    assert summaries["0"]["lookahead"] == 0 and summaries["0"]["rollout_tokens"] == 0
    assert summaries["3"]["lookahead"] == 3 and 0 < summaries["3"]["rollout_tokens"] < summaries["3"]["forward_tokens"]
    assert summaries["3"]["gold"] == pytest.approx(golds["3"], abs=1e-12) and golds["3"] >= golds["0"]


def test_transfer_q_with_the_reference_as_guide_decodes_greedily(tmp_path, sft_model):
    """With --aligned and --reference the same model the implicit reward is 0 for every candidate
    (up to rounding), so transfer-q at temperature 0 answers as greedy decoding of the base model
    (here: best-of-1 at temperature 0, through the sampler); its summary records its settings and
    the guide's rollouts."""
    pretrained = str(task_model("arithmetic", "pretrained"))
    common = ["--model", sft_model, "--task", "arithmetic", "--limit", "12", "--max-new-tokens", "6",
              "--temperature", "0"]
    assert main(["decode", "--method", "transfer-q", "--aligned", pretrained, "--reference", pretrained,
                 "--lookahead", "4", *common, "--output", str(tmp_path / "tq.jsonl")]) == 0
    assert main(["decode", "--method", "best-of-n", "--n", "1", "--scorer", "task:arithmetic:gold", *common,
                 "--output", str(tmp_path / "greedy.jsonl")]) == 0
    texts = [[json.loads(line)["samples"][0]["text"] for line in (tmp_path / f).read_text().splitlines()]
             for f in ("tq.jsonl", "greedy.jsonl")]
    assert texts[0] == texts[1]
    summary = json.loads((tmp_path / "tq.jsonl.summary.json").read_text())
    assert (summary["aligned"], summary["implicit_beta"], summary["lookahead"], summary["candidates"]) == \
        (pretrained, 0.1, 4, 10)
    assert 0 < summary["rollout_tokens"] < summary["forward_tokens"]


def test_transfer_q_refuses_models_of_another_vocabulary_before_loading_them(tmp_path, sft_model, capsys):
    """An aligned model whose tokenizer swaps two tokens' ids (and has no weights: it must not
    load) is refused in one line naming the base model and it."""
    other = tmp_path / "swapped"
    other.mkdir()
    for f in Path(sft_model).iterdir():
        if f.name != "model.safetensors":
            (other / f.name).write_bytes(f.read_bytes())
    spec = json.loads((other / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab["!"], vocab['"'] = vocab['"'], vocab["!"]
    (other / "tokenizer.json").write_text(json.dumps(spec))
    code = main(["decode", "--method", "transfer-q", "--model", sft_model, "--aligned", str(other), "--reference",
                 sft_model, "--task", "arithmetic", "--limit", "2", "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"transfer-q needs one vocabulary: the base model {sft_model} and the aligned model {other} have " \
           "different vocabularies (263 and 263 tokens, 4 entries not shared)" in err
    assert not (tmp_path / "o.jsonl").exists()


def test_the_console_shows_the_kl_caveat_of_a_soft_pick():
    """The KL line of a soft pick is best-of-n's, and the console says so as the summary does."""
    summary = {"method": "best-of-n", "n": 4, "prompts": 2, "task": "arithmetic", "scorer": "task:arithmetic",
               "gold": 0.5, "gold_plain": 0.5, "win_rate": 0.5, "forward_tokens": 8, "forward_tokens_plain": 2,
               "temperature": 1.0, "kl": 0.1, "kl_low": 0.0, "kl_high": 0.2, "kl_bound": 0.6}
    assert "soft pick" not in format_summary(summary)
    note = "the bound and the estimate are best-of-n's; a soft pick moves less"
    assert f"({note})" in format_summary({**summary, "kl_note": note})


@pytest.mark.parametrize("method,extra", [
    ("reward-guided", ["--scorer", "task:arithmetic"]),
    ("transfer-q", ["--aligned", "SFT", "--reference", "SFT"]),
    ("best-of-n", ["--scorer", "task:arithmetic"]),
])
def test_a_prompt_past_the_context_is_refused_naming_its_file_and_row(tmp_path, sft_model, method, extra, capsys):
    """The tiny model's context is 512 tokens; a prompt of 600 '1+'s is longer, in row 2 of the file
    (row 1 fits). Each method refuses it before decoding, naming the file and row; nothing is written."""
    prompts = tmp_path / "long.jsonl"
    prompts.write_text(json.dumps({"prompt": "1+1="}) + "\n" + json.dumps({"prompt": "1+" * 600}) + "\n")
    out = tmp_path / "o.jsonl"
    code = main(["decode", "--method", method, *[sft_model if x == "SFT" else x for x in extra], "--model", sft_model,
                 "--prompts", str(prompts), "--max-new-tokens", "4", "--temperature", "0", "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{prompts}, row 2: the prompt is " in err and "the model's context is 512 tokens" in err, err
    assert not out.exists()


def test_urials_prefix_is_named_where_it_makes_a_prompt_too_long(tmp_path, sft_model, capsys):
    """A 4-character prompt after the shipped prefix (README: it does not fit the 512-token context)."""
    prompts = tmp_path / "short.jsonl"
    prompts.write_text(json.dumps({"prompt": "1+1="}) + "\n")
    code = main(["decode", "--method", "urial", "--model", sft_model, "--prompts", str(prompts),
                 "--max-new-tokens", "4", "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{prompts}, row 1: the prompt is " in err and "with urial's in-context prefix (the shipped one" in err


@pytest.mark.parametrize(("taken", "message"), [
    ("o.jsonl", "o.jsonl exists and has no record of an alignlab decode run beside it (o.jsonl.meta.json); pass "
                "--overwrite"),
    ("o.jsonl.summary.json", "o.jsonl.summary.json exists, of answers no longer there; pass --overwrite"),
])
def test_an_existing_output_or_summary_of_no_run_is_refused_before_loading(tmp_path, capsys, taken, message):
    """A file that no decode run wrote (or an earlier decode's summary without its answers) is not
    replaced silently."""
    (tmp_path / taken).write_text("kept\n")
    code = main(["decode", "--method", "best-of-n", "--scorer", "task:arithmetic", "--model",
                 str(tmp_path / "no-model"), "--task", "arithmetic", "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{tmp_path}/{message}" in err and "no-model" not in err
    assert (tmp_path / taken).read_text() == "kept\n"


def test_overwrite_replaces_the_output_and_removes_what_described_the_old_one(tmp_path, sft_model):
    """With --overwrite and no --task the answers replace the file, and the record and the summary
    beside it, which described the old rows, are replaced by this run's record and chunk tally (no
    summary is written)."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "1+1="}) + "\n")
    out = tmp_path / "o.jsonl"
    for old in (out, tmp_path / "o.jsonl.meta.json", tmp_path / "o.jsonl.summary.json"):
        old.write_text("{}\n")
    assert main(["decode", "--method", "best-of-n", "--scorer", "task:arithmetic", "--n", "2", "--model", sft_model,
                 "--prompts", str(prompts), "--max-new-tokens", "4", "--overwrite", "--output", str(out)]) == 0
    assert [json.loads(line)["prompt"] for line in out.read_text().splitlines()] == ["1+1="]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.jsonl", "o.jsonl.chunks", "o.jsonl.meta.json",
                                                          "p.jsonl"]
    assert json.loads((tmp_path / "o.jsonl.meta.json").read_text())["decode"]["n"] == 2


def test_a_prompt_file_names_its_prompt_column_as_the_hint_says(tmp_path, sft_model, capsys):
    """A CSV whose prompts are in 'question': without --prompt-column the one-line error points to
    the flag, which decode takes; with it the rows are answered."""
    prompts = tmp_path / "q.csv"
    prompts.write_text("question\n2+2=\n")
    args = ["decode", "--method", "best-of-n", "--scorer", "task:arithmetic", "--n", "1", "--model", sft_model,
            "--prompts", str(prompts), "--max-new-tokens", "4", "--output", str(tmp_path / "o.jsonl")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--prompt-column NAME" in err and len(err.strip().splitlines()) == 1, err
    assert main([*args, "--prompt-column", "question"]) == 0
    assert json.loads((tmp_path / "o.jsonl").read_text())["prompt"] == "2+2="


BON = ["decode", "--method", "best-of-n", "--scorer", "task:arithmetic:gold", "--n", "2", "--task", "arithmetic",
       "--limit", "5", "--batch-size", "2"]


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory, sft_model):
    """One uninterrupted best-of-2 run over 5 prompts in chunks of 2: its answers, tally and summary."""
    folder = tmp_path_factory.mktemp("whole")
    out = folder / "o.jsonl"
    assert main([*BON, "--model", sft_model, "--output", str(out)]) == 0
    return {name: (folder / name).read_bytes() for name in ("o.jsonl", "o.jsonl.chunks",
                                                            "o.jsonl.summary.json", "o.jsonl.meta.json")}


@pytest.mark.parametrize(("rows", "part", "chunks"), [(0, 0.5, 0), (2, 0.0, 1), (2, 0.4, 1), (4, 0.0, 1), (4, 0.0, 2),
                                                      (5, 0.0, 2), (5, 0.0, 3)],
                         ids=["in-row-1", "after-chunk-1", "in-row-3", "rows-before-tally", "after-chunk-2",
                              "last-rows-before-tally", "before-summary"])
def test_a_stopped_run_resumes_to_the_uninterrupted_files(tmp_path, sft_model, whole_run, capsys, rows, part, chunks):
    """The files as a stop leaves them: ``rows`` whole rows and ``part`` of the next, ``chunks``
    lines of the tally, no summary. The same command again gives the uninterrupted run's answers,
    tally and summary, byte for byte; a row whose chunk's line is missing is decoded again."""
    out = tmp_path / "o.jsonl"
    lines = whole_run["o.jsonl"].splitlines(keepends=True)
    cut = b"".join(lines[:rows]) + (lines[rows][:int(len(lines[rows]) * part)] if rows < len(lines) else b"")
    out.write_bytes(cut)
    tally = whole_run["o.jsonl.chunks"].splitlines(keepends=True)
    (tmp_path / "o.jsonl.chunks").write_bytes(b"".join(tally[:chunks]))
    (tmp_path / "o.jsonl.meta.json").write_bytes(whole_run["o.jsonl.meta.json"])
    assert main([*BON, "--model", sft_model, "--output", str(out)]) == 0
    done = min(rows, [0, 2, 4, 5][chunks])
    printed = capsys.readouterr().out
    if done < 5:
        assert printed.startswith(f"wrote {5 - done} rows to {out} (5 in all"
                                  + (f", resumed after row {done})" if done else ")"))
    for name in ("o.jsonl", "o.jsonl.chunks", "o.jsonl.summary.json"):
        assert (tmp_path / name).read_bytes() == whole_run[name], name
    assert main([*BON, "--model", sft_model, "--output", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"{out} already holds all 5 rows (--overwrite decodes again)")


@pytest.mark.parametrize(("change", "named"), [
    (["--n", "3"], "was started with --n 2, this run has --n 3"),
    (["--answers", "2"], "was started with --answers 1, this run has --answers 2"),
    (["--pick-temperature", "0.5"], "was started with --pick-temperature 0.0, this run has --pick-temperature 0.5"),
    (["--seed", "1"], "was started with --seed 0, this run has --seed 1"),
])
def test_a_rerun_with_other_settings_is_refused_naming_the_option(tmp_path, sft_model, whole_run, capsys, change,
                                                                  named):
    out = tmp_path / "o.jsonl"
    for name in ("o.jsonl", "o.jsonl.chunks", "o.jsonl.meta.json"):
        (tmp_path / name).write_bytes(whole_run[name][:len(whole_run[name]) // 2] if name == "o.jsonl"
                                      else whole_run[name])
    args = [*BON, "--model", sft_model, "--output", str(out)]
    for flag, value in zip(change[::2], change[1::2], strict=True):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and named in err, err


def test_an_output_of_alignlab_sample_is_not_continued_by_decode(tmp_path, sft_model, capsys):
    out = tmp_path / "o.jsonl"
    assert main(["sample", "--model", sft_model, "--task", "arithmetic", "--limit", "2", "-n", "1",
                 "--max-new-tokens", "2", "--output", str(out), "--no-progress"]) == 0
    before = out.read_bytes()
    code = main([*BON, "--model", sft_model, "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and f"{out} was written by alignlab sample, not decode; pass --overwrite" in err \
        and len(err.strip().splitlines()) == 1, err
    assert out.read_bytes() == before


def test_an_output_of_alignlab_decode_is_not_continued_by_sample(tmp_path, sft_model, whole_run, capsys):
    """The same model, prompts and sampling settings as the decode run: still not sample's file."""
    for name in ("o.jsonl", "o.jsonl.meta.json"):
        (tmp_path / name).write_bytes(whole_run[name][:len(whole_run[name]) // 2] if name == "o.jsonl"
                                      else whole_run[name])
    out = tmp_path / "o.jsonl"
    before = out.read_bytes()
    code = main(["sample", "--model", sft_model, "--task", "arithmetic", "--limit", "5", "--batch-size", "2",
                 "--scorer", "task:arithmetic:gold", "--output", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"{out} was written by alignlab decode, not sample; pass --overwrite" in err, err
    assert out.read_bytes() == before


def test_an_empty_output_is_written_as_a_new_one(tmp_path, sft_model, capsys):
    """An empty file at --output (touched, or left by a run that failed before its first chunk) holds
    no rows of any run: decode writes it, with or without a record beside it."""
    out = tmp_path / "o.jsonl"
    out.touch()
    assert main([*BON, "--model", sft_model, "--output", str(out)]) == 0, capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 5


FLAKY = '''import os


def score(prompt, response):
    if prompt == "3+4=" and os.environ.get("DECODE_TEST_SCORER_DOWN"):
        raise RuntimeError("scorer down")
    return float(len(response))
'''


def test_a_scorer_that_fails_on_the_last_chunk_keeps_the_rows_before_and_a_rerun_finishes(tmp_path, sft_model,
                                                                                           monkeypatch, capsys):
    """best-of-2 over three prompts in chunks of two; the scorer fails on the third prompt's
    candidates: one line naming its file and row and saying the first chunk's two rows are kept.
    Once the scorer works, the same command decodes the third prompt only, and the answers equal
    those of a run that never failed."""
    (tmp_path / "flaky_decode_scorer.py").write_text(FLAKY)
    monkeypatch.syspath_prepend(str(tmp_path))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("1+2=", "2+3=", "3+4=")))
    args = ["decode", "--method", "best-of-n", "--scorer", "fn:flaky_decode_scorer:score", "--n", "2", "--model",
            sft_model, "--prompts", str(prompts), "--max-new-tokens", "4", "--batch-size", "2"]
    assert main([*args, "--output", str(tmp_path / "whole.jsonl")]) == 0
    out = tmp_path / "o.jsonl"
    monkeypatch.setenv("DECODE_TEST_SCORER_DOWN", "1")
    capsys.readouterr()
    assert main([*args, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"to prompt ({prompts}, row 3): raised RuntimeError: scorer down" in err, err
    assert err.endswith(f"; 2 rows are in {out}, and the same command resumes after them"), err
    assert len(out.read_text().splitlines()) == 2
    monkeypatch.delenv("DECODE_TEST_SCORER_DOWN")
    assert main([*args, "--output", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote 1 rows to {out} (3 in all, resumed after row 2)")
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
