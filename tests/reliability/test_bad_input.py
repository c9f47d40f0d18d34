"""The bad-input catalogue: every case goes through the `alignlab` command as a user would type
it, and must end with exit status 2 and one line on stderr naming the file, row, field or key
(no traceback). Data files, configs, hyperparameters, models, output directories and the command
line itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignlab import cli
from tests.conftest import DAMAGED_TENSOR, damage, make_pairs, write_jsonl


def _train(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--method", "dpo", "--model", str(model), "--data", str(data), "--output-dir", str(out),
            "--max-steps", "1", "--batch-size", "2", "--progress", "false", *extra]


def _pairs(tmp: Path, *bad_rows, name: str = "data.jsonl") -> Path:
    """Good rows, then the bad ones (as JSON objects, or raw text lines when given as bytes)."""
    path = tmp / name
    with path.open("wb") as f:
        for row in make_pairs(4):
            f.write((json.dumps(row) + "\n").encode())
        for row in bad_rows:
            f.write(row if isinstance(row, bytes) else (json.dumps(row) + "\n").encode())
    return path


GOOD = {"prompt": "Review the lamp.", "chosen": "It is great.", "rejected": "It is awful."}


def _row(**changes) -> dict:
    out = {**GOOD, **changes}
    return {k: v for k, v in out.items() if v is not ...}


def _yaml(tmp: Path, text: str) -> Path:
    path = tmp / "config.yaml"
    path.write_text(text)
    return path


# Each case: (id, build(tmp, model) -> argv, substrings the one error line must contain).
# Row numbers are 1-based lines of the file: four good rows come first, so a bad row is row 5.
CASES = [
    ("malformed-json", lambda t, m: _train(m, _pairs(t, b'{"prompt": "x", "chosen": \n'), t / "o"),
     ["data.jsonl", "row 5"]),
    ("wrong-type", lambda t, m: _train(m, _pairs(t, _row(prompt=12)), t / "o"),
     ["data.jsonl", "row 5", "prompt"]),
    ("missing-field", lambda t, m: _train(m, _pairs(t, _row(rejected=...)), t / "o"),
     ["data.jsonl", "row 5", "rejected"]),
    ("misspelled-field", lambda t, m: _train(m, _pairs(t, {"prompt": "p", "chosen": "a", "rejeted": "b"}), t / "o"),
     ["data.jsonl", "row 5", "rejeted", "rejected"]),
    ("empty-string", lambda t, m: _train(m, _pairs(t, _row(chosen="")), t / "o"),
     ["data.jsonl", "row 5", "chosen"]),
    ("chosen-equals-rejected", lambda t, m: _train(m, _pairs(t, _row(chosen="same", rejected="same")), t / "o"),
     ["data.jsonl", "row 5", "rejected"]),
    ("non-utf8", lambda t, m: _train(m, _pairs(t, b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n'),
                                     t / "o"),
     ["data.jsonl", "row 5", "UTF-8"]),
    ("row-of-10-MB", lambda t, m: _train(m, _pairs(t, _row(prompt="word " * 2_100_000)), t / "o"),
     ["data.jsonl", "row 5", "prompt", "max_length"]),
    ("prompt-longer-than-max-length", lambda t, m: _train(m, _pairs(t, _row(prompt="long " * 100)), t / "o",
                                                          "--max-length", "64"),
     ["data.jsonl", "row 5", "prompt", "max_length=64"]),
    ("nan-score", lambda t, m: _train(m, _pairs(t, _row(score_chosen=float("nan"), score_rejected=1.0)), t / "o"),
     ["data.jsonl", "row 5", "score_chosen"]),
    ("infinite-score", lambda t, m: _train(m, _pairs(t, b'{"prompt": "p", "chosen": "a", "rejected": "b", '
                                                      b'"score_chosen": Infinity, "score_rejected": 0}\n'), t / "o"),
     ["data.jsonl", "row 5", "score_chosen"]),
    ("ranked-lengths-differ", lambda t, m: ["train", "--method", "listmle", "--model", str(m), "--output-dir",
                                            str(t / "o"), "--progress", "false", "--data",
                                            str(write_jsonl(t / "ranked.jsonl", [
                                                {"prompt": "p", "completions": ["a", "b", "c"], "scores": [1, 2]}]))],
     ["ranked.jsonl", "row 1", "scores"]),
    ("not-an-object", lambda t, m: _train(m, _pairs(t, b'["prompt", "chosen"]\n'), t / "o"),
     ["data.jsonl", "row 5"]),
    ("empty-data-file", lambda t, m: _train(m, _pairs_empty(t), t / "o"),
     ["empty.jsonl"]),
    ("missing-data-file", lambda t, m: _train(m, t / "nowhere.jsonl", t / "o"),
     ["nowhere.jsonl"]),
    ("unpaired-label-not-boolean", lambda t, m: ["train", "--method", "kto", "--model", str(m), "--output-dir",
                                                 str(t / "o"), "--progress", "false", "--data",
                                                 str(write_jsonl(t / "kto.jsonl", [
                                                     {"prompt": "p", "completion": "a", "label": "maybe"}]))],
     ["kto.jsonl", "row 1", "label"]),
    ("data-for-another-method", lambda t, m: ["train", "--method", "kto", "--model", str(m), "--output-dir",
                                              str(t / "o"), "--progress", "false", "--data", str(_pairs(t))],
     ["data.jsonl", "alignlab convert"]),
    ("csv-with-other-columns", lambda t, m: _train(m, _csv(t, "question,answer,good\nq,a,1\n"), t / "o"),
     ["other.csv", "row 1", "--columns.prompt NAME --columns.chosen NAME", "columns: {prompt: NAME"]),
    ("scored-rows-with-other-columns", lambda t, m: ["convert", "scored-to-pairs", str(write_jsonl(
        t / "rated.jsonl", [{"prompt": "p", "response": "r", "helpfulness": 3, "correctness": 2}])),
        str(t / "pairs.jsonl")],
     ["rated.jsonl", "row 1", "--columns.completion NAME", "--columns.score '0.5*helpfulness + 0.5*correctness'"]),
    ("unknown-config-key", lambda t, m: _train(m, _pairs(t), t / "o", "--learning-rate", "0.1"),
     ["learning_rate", "lr"]),
    ("unknown-key-in-yaml", lambda t, m: ["train", str(_yaml(t, "method: dpo\nbatch_sise: 4\n"))],
     ["config.yaml", "batch_sise", "batch_size"]),
    ("yaml-syntax", lambda t, m: ["train", str(_yaml(t, "method: dpo\nlr: [0.1\n"))],
     ["config.yaml", "line"]),
    ("yaml-not-a-mapping", lambda t, m: ["train", str(_yaml(t, "- dpo\n- 0.1\n"))],
     ["config.yaml"]),
    ("beta-zero", lambda t, m: _train(m, _pairs(t), t / "o", "--beta", "0"),
     ["beta"]),
    ("beta-negative", lambda t, m: _train(m, _pairs(t), t / "o", "--beta", "-0.5"),
     ["beta"]),
    ("negative-lr", lambda t, m: _train(m, _pairs(t), t / "o", "--lr", "-1e-4"),
     ["lr"]),
    ("batch-size-zero", lambda t, m: _train(m, _pairs(t), t / "o", "--batch-size", "0"),
     ["batch_size"]),
    ("not-a-number", lambda t, m: _train(m, _pairs(t), t / "o", "--max-steps", "many"),
     ["max_steps", "many"]),
    ("eval-fraction-one", lambda t, m: _train(m, _pairs(t), t / "o", "--eval-fraction", "1.0"),
     ["eval_fraction"]),
    ("unknown-method", lambda t, m: ["train", "--method", "dpoo", "--model", str(m), "--data", str(_pairs(t)),
                                     "--output-dir", str(t / "o")],
     ["dpoo", "dpo"]),
    ("flip-rate-one-half", lambda t, m: ["convert", "flip-labels", str(_pairs(t)), str(t / "flipped.jsonl"),
                                         "--rate", "0.5"],
     ["rate", "0.5"]),
    ("rdpo-epsilon-one-half", lambda t, m: _train(m, _pairs(t), t / "o", "--method", "rdpo", "--epsilon", "0.5"),
     ["epsilon"]),
    ("missing-model-directory", lambda t, m: _train(t / "no-model", _pairs(t), t / "o"),
     ["no-model"]),
    ("model-directory-without-a-model", lambda t, m: _train(_empty_dir(t), _pairs(t), t / "o"),
     ["empty-model"]),
    ("model-with-nan-weights", lambda t, m: _train(damage(m, t / "damaged"), _pairs(t), t / "o"),
     ["damaged/model.safetensors", DAMAGED_TENSOR, "non-finite weights"]),
    ("no-chat-template-for-conversations", lambda t, m: _train(
        _without_chat_template(t, m),
        write_jsonl(t / "chat.jsonl", [{"prompt": [{"role": "user", "content": "hi"}],
                                        "chosen": [{"role": "assistant", "content": "hello"}],
                                        "rejected": [{"role": "assistant", "content": "go"}]}] * 4), t / "o"),
     ["chat template", "no-template"]),
    ("output-directory-of-another-run", lambda t, m: _train(m, _pairs(t), _other_run(t)),
     ["other-run", "--overwrite"]),
    ("output-directory-is-a-file", lambda t, m: _train(m, _pairs(t), _a_file(t)),
     ["a-file"]),
    ("unknown-command", lambda t, m: ["trian"],
     ["trian"]),
    ("unknown-conversion", lambda t, m: ["convert", "pairs-to-lists", str(_pairs(t)), str(t / "x.jsonl")],
     ["pairs-to-lists"]),
    # Reward models and their evaluation.
    ("reward-margin-without-scores", lambda t, m: _train(m, _pairs(t), t / "o", "--method", "reward_model",
                                                         "--margin-scale", "1"),
     ["data.jsonl", "row 1", "score_chosen", "margin_scale"]),
    ("gpm-dimension-odd", lambda t, m: _train(m, _pairs(t), t / "o", "--method", "reward_model", "--objective", "gpm",
                                              "--gpm-dim", "3"),
     ["gpm_dim", "even"]),
    ("reward-model-with-lora", lambda t, m: _train(m, _pairs(t), t / "o", "--method", "reward_model", "--lora"),
     ["lora", "reward models"]),
    ("eval-rm-of-a-policy", lambda t, m: ["eval", "rm", "--data", str(_pairs(t)), "--model", str(m)],
     ["tiny-model", "not a reward model directory"]),
    ("eval-rm-missing-data", lambda t, m: ["eval", "rm", "--data", str(t / "nowhere.jsonl"), "--scorer", "length"],
     ["nowhere.jsonl"]),
    ("eval-rm-bad-scorer", lambda t, m: ["eval", "rm", "--data", str(_pairs(t)), "--scorer", "length:coef=lots"],
     ["length:coef=lots", "coef"]),
    ("eval-rm-bleu-references-bad-row", lambda t, m: ["eval", "rm", "--data", str(_pairs(t)), "--scorer",
                                                      f"bleu:{_bad_refs(t)}"],
     ["refs.jsonl", "line 2", "references"]),
    ("unknown-evaluation", lambda t, m: ["eval", "rn"],
     ["rn", "evaluations: rm"]),
    # Ranking accuracy, likelihood displacement, CHES and its filter.
    ("eval-ranking-missing-data", lambda t, m: ["eval", "ranking", "--data", str(t / "nowhere.jsonl"), "--model",
                                                str(m)],
     ["nowhere.jsonl"]),
    ("eval-ranking-bad-row", lambda t, m: ["eval", "ranking", "--data", str(_pairs(t, _row(rejected=...))),
                                           "--model", str(m)],
     ["data.jsonl", "row 5", "rejected"]),
    ("eval-ranking-missing-model", lambda t, m: ["eval", "ranking", "--data", str(_pairs(t)), "--model",
                                                 str(t / "no-model")],
     ["no-model"]),
    ("eval-ranking-missing-reference", lambda t, m: ["eval", "ranking", "--data", str(_pairs(t)), "--model", str(m),
                                                     "--reference", str(t / "no-reference")],
     ["no-reference"]),
    ("eval-ranking-without-pairs", lambda t, m: ["eval", "ranking", "--model", str(m)],
     ["--data or --task"]),
    ("eval-ranking-pair-too-long", lambda t, m: ["eval", "ranking", "--data", str(_pairs(t)), "--model", str(m),
                                                 "--max-length", "8"],
     ["data.jsonl", "row 1", "max_length=8"]),
    ("eval-ranking-beta-zero", lambda t, m: ["eval", "ranking", "--data", str(_pairs(t)), "--model", str(m),
                                             "--beta", "0.1", "0"],
     ["--beta"]),
    ("eval-displacement-not-a-run", lambda t, m: ["eval", "displacement", "--run", str(t)],
     ["run.yaml"]),
    ("eval-displacement-one-model", lambda t, m: ["eval", "displacement", "--data", str(_pairs(t)), "--models",
                                                  str(m)],
     ["--models", "at least one more"]),
    ("eval-ches-missing-model", lambda t, m: ["eval", "ches", "--data", str(_pairs(t)), "--model",
                                              str(t / "no-model")],
     ["no-model"]),
    ("eval-ches-bad-row", lambda t, m: ["eval", "ches", "--data", str(_pairs(t, b"{not json\n")), "--model", str(m)],
     ["data.jsonl", "row 5"]),
    ("ches-filter-missing-file", lambda t, m: ["convert", "ches-filter", str(t / "nowhere.jsonl"),
                                               str(t / "out.jsonl"), "--model", str(m), "--drop-fraction", "0.5"],
     ["nowhere.jsonl"]),
    ("ches-filter-bad-row", lambda t, m: ["convert", "ches-filter", str(_pairs(t, _row(chosen=...))),
                                          str(t / "out.jsonl"), "--model", str(m), "--drop-fraction", "0.5"],
     ["data.jsonl", "row 5", "chosen"]),
    ("ches-filter-missing-model", lambda t, m: ["convert", "ches-filter", str(_pairs(t)), str(t / "out.jsonl"),
                                                "--model", str(t / "no-model"), "--drop-fraction", "0.5"],
     ["no-model"]),
    ("ches-filter-without-a-fraction", lambda t, m: ["convert", "ches-filter", str(_pairs(t)), str(t / "out.jsonl"),
                                                     "--model", str(m)],
     ["--keep-fraction", "--drop-fraction"]),
    ("ches-filter-fraction-above-one", lambda t, m: ["convert", "ches-filter", str(_pairs(t)), str(t / "out.jsonl"),
                                                     "--model", str(m), "--drop-fraction", "1.5"],
     ["--drop-fraction", "1.5"]),
    ("ches-filter-output-not-jsonl", lambda t, m: ["convert", "ches-filter", str(_pairs(t)), str(t / "out.csv"),
                                                   "--model", str(m), "--drop-fraction", "0.5"],
     ["out.csv", "jsonl"]),
]


def _bad_refs(tmp: Path) -> Path:
    path = tmp / "refs.jsonl"
    path.write_text('{"prompt": "p", "references": ["a"]}\n{"prompt": "q", "references": 5}\n')
    return path


def _csv(tmp: Path, text: str) -> Path:
    path = tmp / "other.csv"
    path.write_text(text)
    return path


def _pairs_empty(tmp: Path) -> Path:
    path = tmp / "empty.jsonl"
    path.write_text("")
    return path


def _empty_dir(tmp: Path) -> Path:
    path = tmp / "empty-model"
    path.mkdir()
    return path


def _without_chat_template(tmp: Path, model: Path) -> Path:
    import shutil

    out = tmp / "no-template"
    shutil.copytree(model, out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg))
    for extra in out.glob("chat_template.*"):
        extra.unlink()
    return out


def _other_run(tmp: Path) -> Path:
    out = tmp / "other-run"
    out.mkdir()
    (out / "run.yaml").write_text("method: sft\nlr: 0.5\n")
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    return out


def _a_file(tmp: Path) -> Path:
    path = tmp / "a-file"
    path.write_text("not a directory\n")
    return path


def test_the_catalogue_holds_at_least_30_cases():
    assert len(CASES) >= 30
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("build, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line_and_status_2(build, expected, tmp_path, tiny_model_dir, capsys):
    argv = build(tmp_path, tiny_model_dir)
    rc = cli.main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("alignlab:")]
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(errors) == 1, err
    for text in expected:
        assert text in errors[0], errors[0]


def test_debug_shows_the_traceback(tmp_path, tiny_model_dir):
    with pytest.raises(Exception, match="batch_size"):
        cli.main(_train(tiny_model_dir, _pairs(tmp_path), tmp_path / "o", "--batch-size", "0", "--debug"))


def test_duplicate_rows_are_warned_about_and_kept(tmp_path, tiny_model_dir, capsys):
    rows = make_pairs(6)
    data = write_jsonl(tmp_path / "dups.jsonl", rows + rows[:2])
    rc = cli.main(_train(tiny_model_dir, data, tmp_path / "o"))
    out = capsys.readouterr()
    assert rc == 0
    assert "loaded 8 pairs" in out.out + out.err and "2 duplicates kept" in out.out + out.err


def test_every_row_too_long_is_not_offered_skipping(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "long.jsonl", [_row(prompt="long " * 100, chosen=f"yes {i}") for i in range(4)])
    assert cli.main(_train(tiny_model_dir, data, tmp_path / "o", "--max-length", "64")) == 2
    err = capsys.readouterr().err
    assert "long.jsonl, row 1" in err and "max_length=64" in err
    assert "--skip-invalid" not in err and "skipping bad rows would leave none" in err
