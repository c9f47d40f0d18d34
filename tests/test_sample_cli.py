"""`alignlab sample`: its rows, their conversions, resuming a killed run, and every bad input in one line."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from alignlab import generation
from alignlab.cli import main
from alignlab.data.records import Message
from alignlab.generation import Sample, SamplingParams
from alignlab.models import TinyModelConfig, load_model, load_tokenizer, save_tiny_model
from alignlab.sample_cli import SAMPLING_HELP, default_backend

PROMPTS = ["1+1=", "name a colour:", "1+1=", "the sky is", "count: one, two,"]  # 1 and 3 alike, in two chunks
SCORERS = '''
import os


def length(prompt, response):
    return float(len(response))


def prompt_length(prompt, response):
    return float(len(prompt))


def picky(prompt, response):
    if response == os.environ.get("SAMPLE_TEST_BAD_RESPONSE"):
        raise ValueError(f"cannot score {response!r}")
    return float(len(response))
'''


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def scorers(tmp_path_factory):
    """The module ``sample_test_scorers`` (fn: scorers), importable while these tests run."""
    folder = tmp_path_factory.mktemp("scorers")
    (folder / "sample_test_scorers.py").write_text(SCORERS)
    sys.path.insert(0, str(folder))
    yield "sample_test_scorers"
    sys.path.remove(str(folder))
    sys.modules.pop("sample_test_scorers", None)


@pytest.fixture
def prompt_file(tmp_path) -> Path:
    return jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["sample", *args, "--no-progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


def refused(capsys, *args: str) -> str:
    """The one-line error of a run that must fail."""
    code, _, err = run(capsys, *args)
    assert code == 2, err
    assert err.startswith("alignlab: error: ") and err.count("\n") == 1, err
    return err


class Scripted:
    """A generator whose sample j of a prompt is ``texts(prompt, j)``, finished, with made-up
    token ids and log-probs (sampling log-probs too, as some backends give); it records its calls."""

    def __init__(self, texts):
        self.texts = texts
        self.calls: list[tuple[list, int, SamplingParams]] = []
        self.starts: list[int] = []

    def prompt_ids(self, prompt) -> tuple[int, ...]:
        return tuple(range(len(str(prompt))))

    numbers_prompts = False  # as the hf backend: the command derives a seed per chunk

    def generate(self, prompts, n, params, start=0):
        self.calls.append((list(prompts), n, params))
        self.starts.append(start)
        out = []
        for p in prompts:
            row = []
            for j in range(n):
                text = self.texts(p, j)
                ids = (*(ord(c) for c in text), 2)
                row.append(Sample(text, (1,), ids, True, tuple(-0.5 for _ in ids), tuple(-0.25 for _ in ids)))
            out.append(row)
        return out


@pytest.fixture
def scripted(monkeypatch):
    """Install a ``Scripted`` generator: call the fixture with its texts function; the
    make_generator calls are recorded in ``built``."""
    built = []

    def install(texts):
        gen = Scripted(texts)

        def fake_make_generator(model, tokenizer, backend="hf", **options):
            built.append((backend, options))
            return gen

        monkeypatch.setattr(generation, "make_generator", fake_make_generator)
        return gen, built

    return install


# ---------------------------------------------------------------- help and rows


def test_help_shows_every_sampling_flag_with_its_help_and_default(capsys, monkeypatch):
    from alignlab.field_flags import default_text

    monkeypatch.setenv("COLUMNS", "10000")
    with pytest.raises(SystemExit) as e:
        main(["sample", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    defaults = SamplingParams()
    for name in SamplingParams.__dataclass_fields__:
        flag = "--" + name.replace("_", "-")
        assert f"{flag} " in out and SAMPLING_HELP[name], name
        assert f"{SAMPLING_HELP[name]} (default {default_text(getattr(defaults, name))})" in out, name
    for flag in ("--model", "--prompts", "--task", "--output", "-n", "--batch-size", "--limit", "--backend", "--scorer",
                 "--dtype", "--trust-remote-code", "--overwrite", "ranked-to-pairs", "ranked-to-sft"):
        assert flag in out, flag
    assert f"generation backend (default {default_backend()})" in out


def test_rows_hold_the_prompt_every_sample_and_its_score(tmp_path, tiny_model_dir, scorers, capsys):
    convo = [{"role": "user", "content": "hi"}]
    src = jsonl(tmp_path / "p.jsonl", [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}, {"prompt": convo}])
    out = tmp_path / "s.jsonl"
    code, printed, err = run(capsys, "--model", str(tiny_model_dir), "--prompts", str(src), "--output", str(out),
                             "-n", "3", "--max-new-tokens", "5", "--scorer", f"fn:{scorers}:length")
    assert code == 0, err
    assert printed.startswith(f"wrote 2 rows to {out} (2 in all); mean score ")
    written = rows(out)
    assert [r["prompt"] for r in written] == ["1+1=", convo] and [r["input_row"] for r in written] == [1, 2]
    for r in written:
        assert len(r["samples"]) == 3
        texts = [s["text"] for s in r["samples"] if s["text"].strip()]
        as_given = [[{"role": "assistant", "content": t}] for t in texts] if isinstance(r["prompt"], list) else texts
        assert r["completions"] == as_given
        assert r["scores"] == [float(len(t)) for t in texts]
        for s in r["samples"]:
            assert set(s) == {"text", "num_tokens", "finished", "logprobs", "sampling_logprobs", "score"}
            assert 1 <= s["num_tokens"] == len(s["logprobs"]) == len(s["sampling_logprobs"]) <= 5
            assert isinstance(s["finished"], bool)
            assert all(-1e4 < lp < 0 for lp in s["logprobs"])
            assert s["score"] == (float(len(s["text"])) if s["text"].strip() else None)
    meta = json.loads((tmp_path / "s.jsonl.meta.json").read_text())
    assert meta["prompts"] == str(src.resolve()) and meta["model"] == str(tiny_model_dir.resolve())
    assert (meta["n"], meta["max_new_tokens"], meta["scorer"], meta["backend"]) == (3, 5, f"fn:{scorers}:length", "native")
    assert meta["num_prompts"] == 2 and len(meta["prompts_sha256"]) == 64


def test_greedy_samples_are_the_models_greedy_answer(tmp_path, tiny_model_dir, prompt_file, capsys):
    out = tmp_path / "g.jsonl"
    assert run(capsys, "--model", str(tiny_model_dir), "--prompts", str(prompt_file), "--output", str(out), "-n",
               "2", "--max-new-tokens", "6", "--temperature", "0", "--limit", "2")[0] == 0
    gen = generation.make_generator(load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir)))
    expected = gen.generate(PROMPTS[:2], 1, SamplingParams(max_new_tokens=6, temperature=0.0))
    for r, (sample,) in zip(rows(out), expected, strict=True):
        assert [s["text"] for s in r["samples"]] == [sample.text] * 2
        assert r["samples"][0]["num_tokens"] == len(sample.token_ids) and r["samples"][0]["finished"] == sample.finished
        # one batch of 4 rows against one of 2: the same numbers up to float32 rounding
        assert r["samples"][0]["logprobs"] == pytest.approx(list(sample.logprobs), abs=1e-5)


def test_task_prompts(tmp_path, tiny_model_dir, capsys):
    from alignlab.tasks import get_task

    task = get_task("arithmetic")
    out = tmp_path / "t.jsonl"
    assert run(capsys, "--model", str(tiny_model_dir), "--task", "arithmetic", "--limit", "3", "--output", str(out),
               "-n", "2", "--max-new-tokens", "4", "--scorer", "task:arithmetic:gold")[0] == 0
    written = rows(out)
    assert [r["prompt"] for r in written] == task.eval_prompts()[:3] and [r["input_row"] for r in written] == [1, 2, 3]
    assert all(s["score"] == task.gold(r["prompt"], s["text"]) for r in written for s in r["samples"] if s["text"].strip())
    out = tmp_path / "train.jsonl"
    assert run(capsys, "--model", str(tiny_model_dir), "--task", "arithmetic", "--prompt-set", "train", "--limit", "2",
               "--seed", "5", "--output", str(out), "-n", "1", "--max-new-tokens", "2")[0] == 0
    assert [r["prompt"] for r in rows(out)] == task.train_prompts(2, 5)


def test_chunks_draw_with_their_own_seeds_and_the_options_given(tmp_path, tiny_model_dir, prompt_file, scripted,
                                                                 monkeypatch, capsys):
    """Chunks of --batch-size prompts, each one generate call with every sampling option, --seed and
    the index of its first prompt (from which a backend that does not number prompts derives the
    chunk's stream: ``test_hf``); the backend named (or make_generator's default) reaches
    make_generator, and backend-reported sampling log-probs are kept."""
    from alignlab.generation import factory

    gen, built = scripted(lambda p, j: f"{p}#{j}")
    out = tmp_path / "s.jsonl"
    args = ["--model", str(tiny_model_dir), "--prompts", str(prompt_file), "-n", "3", "--batch-size", "2",
            "--max-new-tokens", "9", "--temperature", "0.7", "--top-p", "0.9", "--top-k", "5", "--seed", "11"]
    assert run(capsys, *args, "--output", str(out))[0] == 0
    assert [prompts for prompts, _, _ in gen.calls] == [PROMPTS[0:2], PROMPTS[2:4], PROMPTS[4:5]]
    assert [params for _, _, params in gen.calls] == [
        SamplingParams(max_new_tokens=9, temperature=0.7, top_p=0.9, top_k=5, seed=11)] * 3
    assert gen.starts == [0, 2, 4]
    assert built == [(default_backend(), {"batch_size": 6})]
    sample = rows(out)[0]["samples"][1]
    assert sample == {"text": "1+1=#1", "num_tokens": 7, "finished": True, "logprobs": [-0.5] * 7,
                      "sampling_logprobs": [-0.25] * 7}
    monkeypatch.setattr(factory, "BACKENDS", (*factory.BACKENDS, "elsewhere"))
    assert run(capsys, *args, "--output", str(tmp_path / "other.jsonl"), "--backend", "elsewhere")[0] == 0
    assert built[-1] == ("elsewhere", {"batch_size": 6})


def test_stop_token_ids_reach_the_generator(tmp_path, tiny_model_dir, prompt_file, scripted, capsys):
    """--stop-token-ids takes several ids and passes them on as a tuple (any value crashed with an
    AttributeError, the list taken for NAME=VALUE items), and they are kept in the meta file."""
    gen, _ = scripted(lambda p, j: f"{p}#{j}")
    out = tmp_path / "s.jsonl"
    assert run(capsys, "--model", str(tiny_model_dir), "--prompts", str(prompt_file), "--output", str(out),
               "--max-new-tokens", "4", "--stop-token-ids", "5", "7")[0] == 0
    assert {params for _, _, params in gen.calls} == {SamplingParams(max_new_tokens=4, stop_token_ids=(5, 7))}
    assert json.loads((tmp_path / "s.jsonl.meta.json").read_text())["stop_token_ids"] == [5, 7]
    # the tiny model's tokenizer and output layer have 263 tokens: 263 and 300 can never end a sample
    err = refused(capsys, "--model", str(tiny_model_dir), "--prompts", str(prompt_file), "--output",
                  str(tmp_path / "t.jsonl"), "--stop-token-ids", "5", "263", "300")
    assert err.strip().endswith("--stop-token-ids: 263, 300 are not among the model's 263 token ids (0 to 262), so no "
                        "sample would stop there"), err
    assert not (tmp_path / "t.jsonl").exists()


# ---------------------------------------------------------------- conversions


def test_output_converts_to_pairs_ranked_lists_and_best_of_n_sft(tmp_path, tiny_model_dir, scripted, scorers, capsys):
    """Scored by length: "bb" 2, "a" 1, "" (empty: left out, not scored), "ccc" 3, "dd" 2. Best
    first: ccc, bb, dd, a (bb before dd: a tie keeps the order drawn). The best-worst pair is
    (ccc, a), and best-of-n keeps ccc; for the conversation prompt, the same as assistant turns."""
    from alignlab.data import load_records

    answers = ["bb", "a", "", "ccc", "dd"]
    scripted(lambda p, j: answers[j])
    convo = [{"role": "user", "content": "hi"}]
    src = jsonl(tmp_path / "p.jsonl", [{"prompt": "q"}, {"prompt": convo}])
    out = tmp_path / "s.jsonl"
    assert run(capsys, "--model", str(tiny_model_dir), "--prompts", str(src), "--output", str(out), "-n", "5",
               "--scorer", f"fn:{scorers}:length")[0] == 0
    first = rows(out)[0]
    assert (first["completions"], first["scores"]) == (["bb", "a", "ccc", "dd"], [2.0, 1.0, 3.0, 2.0])
    assert [s["score"] for s in first["samples"]] == [2.0, 1.0, None, 3.0, 2.0]

    ranked = load_records(out, "ranked").records
    assert [(r.completions, r.scores) for r in ranked][0] == (("ccc", "bb", "dd", "a"), (3.0, 2.0, 2.0, 1.0))
    assert ranked[1].prompt == (Message("user", "hi"),)
    assert ranked[1].completions[0] == (Message("assistant", "ccc"),)

    def converted(conversion: str, *options: str) -> list[dict]:
        target = tmp_path / f"{conversion}.jsonl"
        assert main(["convert", conversion, str(out), str(target), *options]) == 0
        return rows(target)

    assert converted("ranked-to-pairs") == [
        {"prompt": "q", "chosen": "ccc", "rejected": "a", "score_chosen": 3.0, "score_rejected": 1.0},
        {"prompt": convo, "chosen": [{"role": "assistant", "content": "ccc"}],
         "rejected": [{"role": "assistant", "content": "a"}], "score_chosen": 3.0, "score_rejected": 1.0}]
    assert len(converted("ranked-to-pairs", "--rule", "all_pairs")) == 2 * 5  # 6 pairs of 4, less the tie bb-dd
    assert converted("ranked-to-sft") == [{"prompt": "q", "completion": "ccc"},
                                          {"prompt": convo, "completion": [{"role": "assistant", "content": "ccc"}]}]


def test_best_of_n_keeps_the_first_of_tied_best_responses(tmp_path, tiny_model_dir, scripted, scorers, capsys):
    scripted(lambda p, j: ["x", "yy", "zz"][j])
    out = tmp_path / "s.jsonl"
    src = jsonl(tmp_path / "p.jsonl", [{"prompt": "q"}])
    assert run(capsys, "--model", str(tiny_model_dir), "--prompts", str(src), "--output", str(out), "-n", "3",
               "--scorer", f"fn:{scorers}:length")[0] == 0
    assert main(["convert", "ranked-to-sft", str(out), str(tmp_path / "sft.jsonl")]) == 0
    assert rows(tmp_path / "sft.jsonl") == [{"prompt": "q", "completion": "yy"}]


def test_a_row_left_with_one_response_is_named_by_convert(tmp_path, tiny_model_dir, scripted, scorers, capsys):
    """Prompt a's samples are "" and "x": one response is no ranked list. convert names the row,
    and --skip-invalid leaves it out."""
    scripted(lambda p, j: {"a": ["", "x"], "b": ["y", "zz"]}[p][j])
    out = tmp_path / "s.jsonl"
    src = jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    assert run(capsys, "--model", str(tiny_model_dir), "--prompts", str(src), "--output", str(out), "-n", "2",
               "--scorer", f"fn:{scorers}:length")[0] == 0
    pairs = tmp_path / "pairs.jsonl"
    assert main(["convert", "ranked-to-pairs", str(out), str(pairs)]) == 2
    assert f"{out}, row 1, field 'completions': a ranked row needs at least 2 completions, got 1" in capsys.readouterr().err
    assert main(["convert", "ranked-to-pairs", str(out), str(pairs), "--skip-invalid"]) == 0
    assert rows(pairs) == [{"prompt": "b", "chosen": "zz", "rejected": "y", "score_chosen": 2.0, "score_rejected": 1.0}]


# ---------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir):
    """One whole run of RESUMED_ARGS: the file a resumed run must equal, and its record."""
    folder = tmp_path_factory.mktemp("whole")
    src = jsonl(folder / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    out = folder / "whole.jsonl"
    assert main(["sample", "--model", str(tiny_model_dir), "--prompts", str(src), "--output", str(out),
                 *RESUMED_ARGS]) == 0
    return src, out.read_bytes(), (folder / "whole.jsonl.meta.json").read_text()


RESUMED_ARGS = ["-n", "2", "--batch-size", "2", "--max-new-tokens", "6", "--temperature", "1", "--no-progress"]


def test_the_uninterrupted_run_draws_anew_for_each_prompt(uninterrupted):
    """Prompts 1 and 3 are the same text in different chunks: their samples differ, and so do
    the two samples of one prompt (a test that resumed output matches must compare real draws)."""
    whole = [json.loads(line) for line in uninterrupted[1].splitlines()]
    assert whole[0]["prompt"] == whole[2]["prompt"]
    assert whole[0]["samples"] != whole[2]["samples"]
    assert whole[0]["samples"][0]["text"] != whole[0]["samples"][1]["text"]


@pytest.mark.parametrize(("line", "keep"), [(1, 0.5), (2, 1.0), (3, 0.0), (4, 0.3), (5, 0.9)],
                         ids=["in-row-1", "after-chunk-1", "at-row-3", "in-row-4", "in-last-row"])
def test_a_killed_run_resumes_to_the_uninterrupted_file(tmp_path, tiny_model_dir, uninterrupted, capsys, line, keep):
    """The file as a kill leaves it: whole rows, then part of row ``line`` (``keep`` of its
    bytes); the same command again gives, byte for byte, the file of a run never stopped."""
    src, whole, meta = uninterrupted
    lines = whole.splitlines(keepends=True)
    out = tmp_path / "whole.jsonl"
    out.write_bytes(b"".join(lines[:line - 1]) + lines[line - 1][:int(len(lines[line - 1]) * keep)])
    (tmp_path / "whole.jsonl.meta.json").write_text(meta)
    code, printed, err = run(capsys, "--model", str(tiny_model_dir), "--prompts", str(src), "--output", str(out),
                             *RESUMED_ARGS)
    assert code == 0, err
    done = line - 1 if keep < 1 else line
    assert printed == f"wrote {5 - done} rows to {out} (5 in all{f', resumed after row {done}' if done else ''})\n"
    assert out.read_bytes() == whole


def test_a_scorer_that_fails_names_the_sample_and_keeps_the_rows_before(tmp_path, tiny_model_dir, prompt_file,
                                                                        scripted, scorers, monkeypatch, capsys):
    """Texts "P|j": the scorer fails on sample 2 of prompt 4 (the second chunk): the first chunk's
    two rows stay in the file; once the scorer is fixed, the same command finishes the file as an
    uninterrupted run writes it."""
    scripted(lambda p, j: f"{p}|{j}")
    args = ["--model", str(tiny_model_dir), "--prompts", str(prompt_file), "-n", "2", "--batch-size", "2",
            "--scorer", f"fn:{scorers}:picky"]
    out = tmp_path / "s.jsonl"
    monkeypatch.setenv("SAMPLE_TEST_BAD_RESPONSE", f"{PROMPTS[3]}|1")
    err = refused(capsys, *args, "--output", str(out))
    assert (f"--scorer fn:{scorers}:picky failed on prompt 4 ({prompt_file}, row 4), sample 2 of 2: raised ValueError: "
            f"cannot score '{PROMPTS[3]}|1'; 2 rows are in {out}, and the same command resumes after them") in err
    assert [r["input_row"] for r in rows(out)] == [1, 2]
    monkeypatch.delenv("SAMPLE_TEST_BAD_RESPONSE")
    assert run(capsys, *args, "--output", str(out))[0] == 0
    assert run(capsys, *args, "--output", str(tmp_path / "whole.jsonl"))[0] == 0
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()


def test_a_scorer_that_fails_on_the_first_chunk_says_nothing_was_written(tmp_path, tiny_model_dir, prompt_file,
                                                                         scripted, scorers, monkeypatch, capsys):
    scripted(lambda p, j: f"{p}|{j}")
    monkeypatch.setenv("SAMPLE_TEST_BAD_RESPONSE", f"{PROMPTS[0]}|0")
    out = tmp_path / "s.jsonl"
    err = refused(capsys, "--model", str(tiny_model_dir), "--prompts", str(prompt_file), "--output", str(out),
                  "--scorer", f"fn:{scorers}:picky")
    assert f"failed on prompt 1 ({prompt_file}, row 1), sample 1 of 4" in err and f"no row was written to {out}" in err
    assert out.read_text() == ""


@pytest.mark.parametrize(("change", "named"), [
    ({"--temperature": "0.5"}, "was started with --temperature 1.0, this run has --temperature 0.5"),
    ({"-n": "3"}, "was started with --n 2, this run has --n 3"),
    ({"--seed": "1"}, "was started with --seed 0, this run has --seed 1"),
    ({"--batch-size": "3"}, "was started with --batch-size 2, this run has --batch-size 3"),
    ({"--max-new-tokens": "5"}, "--max-new-tokens 6, this run has --max-new-tokens 5"),
    ({"--top-k": "4"}, "--top-k 0, this run has --top-k 4"),
    ({"--dtype": "fp64"}, "was started with --dtype fp32, this run has --dtype fp64"),
    ({"--limit": "4"}, "was started with no --limit, this run has --limit 4"),
    ({"--scorer": "length"}, "was started with no --scorer, this run has --scorer length"),
    ({"--model": "copy"}, "this run has --model"),
    ({"--prompts": "moved"}, "this run has --prompts"),
    ({"--prompts": "edited"}, "the prompts are not those it was started with (the input changed since: "
                              "prompts_sha256 differs in whole.jsonl.meta.json)"),
])
def test_a_rerun_with_other_settings_is_refused_naming_the_option(tmp_path, tiny_model_dir, uninterrupted, capsys,
                                                                  change, named):
    src, whole, meta = uninterrupted
    out = tmp_path / "whole.jsonl"
    out.write_bytes(whole.splitlines(keepends=True)[0])
    (tmp_path / "whole.jsonl.meta.json").write_text(meta)
    flags = {"--model": str(tiny_model_dir), "--prompts": str(src), "--output": str(out), **change}
    if change.get("--model") == "copy":
        flags["--model"] = str(shutil.copytree(tiny_model_dir, tmp_path / "copy"))
    if change.get("--prompts") == "moved":
        flags["--prompts"] = str(shutil.copy(src, tmp_path / "moved.jsonl"))
    if change.get("--prompts") == "edited":  # the file the record names, its prompts changed since
        flags["--prompts"] = str(jsonl(tmp_path / "edited.jsonl", [{"prompt": p + "!"} for p in PROMPTS]))
        record = json.loads(meta)
        (tmp_path / "whole.jsonl.meta.json").write_text(json.dumps({**record, "prompts": flags["--prompts"]}))
    resumed = [a for a in RESUMED_ARGS if a != "--no-progress"]
    for flag, value in change.items():  # a changed option replaces its value in the earlier arguments
        if flag in resumed:
            resumed[resumed.index(flag) + 1] = value
    err = refused(capsys, *[x for item in flags.items() for x in item if item[0] not in resumed], *resumed)
    assert named in err and "pass --overwrite to start over, or choose another --output" in err
    assert out.read_bytes() == whole.splitlines(keepends=True)[0]


def test_a_finished_file_is_left_alone_and_overwrite_starts_over(tmp_path, tiny_model_dir, uninterrupted, capsys):
    src, whole, meta = uninterrupted
    out = tmp_path / "whole.jsonl"
    out.write_bytes(whole)
    (tmp_path / "whole.jsonl.meta.json").write_text(meta)
    args = ["--model", str(tiny_model_dir), "--prompts", str(src), "--output", str(out), *RESUMED_ARGS]
    code, printed, _ = run(capsys, *args)
    assert code == 0 and printed == f"{out} already holds all 5 rows; nothing to do (--overwrite samples again)\n"
    assert out.read_bytes() == whole
    out.write_text('{"prompt": "not ours"}\n')
    assert f"{out}, line 1: not the row of prompt 1" in refused(capsys, *args)
    (tmp_path / "whole.jsonl.meta.json").unlink()
    assert "exists but whole.jsonl.meta.json does not" in refused(capsys, *args)
    code, printed, _ = run(capsys, *args, "--overwrite")
    assert code == 0 and printed == f"wrote 5 rows to {out} (5 in all)\n"
    assert out.read_bytes() == whole and (tmp_path / "whole.jsonl.meta.json").read_text() == meta


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(("args", "named"), [
    (["-n", "0"], "--n must be a whole number >= 1, got 0"),
    (["--top-p", "0"], "--top-p must be in (0, 1], got 0.0"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
    (["--batch-size", "0"], "--batch-size must be a whole number >= 1, got 0"),
    (["--scorer", "nope:x"], "--scorer nope:x: scorer 'nope:x': unknown kind 'nope'"),
    (["--scorer", ""], "--scorer is empty; give a scorer spec (e.g. task:arithmetic), or leave it out to write the "
                       "samples unscored"),
    (["--scorer", "fn:no_such_module_here:f"], "--scorer fn:no_such_module_here:f: reward function "
                                               "'no_such_module_here:f': cannot import module"),
    (["--scorer", "implicit:policy=/no/p,reference=/no/r,beta=-1"], "beta must be a finite number > 0"),
    (["--backend", "nosuch"], "generation backend 'nosuch' is unknown"),
    (["--task", "arithmetic"], "give the prompts with one of --prompts (a data file) or --task (a testbed task), "
                               "not both"),
    (["--prompt-set", "train"], "--prompt-set applies to --task, not to a prompt file"),
])
def test_bad_options_are_one_line_naming_the_option(tmp_path, tiny_model_dir, prompt_file, capsys, args, named):
    out = tmp_path / "s.jsonl"
    assert named in refused(capsys, "--model", str(tiny_model_dir), "--prompts", str(prompt_file), "--output",
                            str(out), *args)
    assert not out.exists()


def test_bad_prompt_sources_are_one_line(tmp_path, tiny_model_dir, capsys):
    base = ["--model", str(tiny_model_dir), "--output", str(tmp_path / "s.jsonl")]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert f"{empty}: no rows (there are no prompts to answer)" in refused(capsys, *base, "--prompts", str(empty))
    assert "got neither" in refused(capsys, *base)
    assert "--prompt-set train draws a task's training prompts: say how many with --limit" in refused(
        capsys, *base, "--task", "arithmetic", "--prompt-set", "train")
    bad = jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok"}, {"prompt": ""}])
    assert f"{bad}, row 2, field 'prompt': empty prompt" in refused(capsys, *base, "--prompts", str(bad))
    assert "name the file *.jsonl" in refused(capsys, "--model", str(tiny_model_dir), "--prompts", str(bad),
                                              "--output", str(tmp_path / "s.json"))


def test_an_output_that_is_the_prompt_file_is_refused_even_with_overwrite(tmp_path, tiny_model_dir, capsys):
    """--overwrite replaces an earlier run's samples; it must not replace the prompts being read."""
    src = jsonl(tmp_path / "pairs.jsonl", [{"prompt": p, "chosen": "a", "rejected": "b"} for p in PROMPTS])
    before = src.read_bytes()
    for extra in ([], ["--overwrite"]):
        err = refused(capsys, "--model", str(tiny_model_dir), "--prompts", str(src), "--output", str(src), *extra)
        assert f"{src}: is the prompt file (--prompts {src}); writing it would replace what is read" in err, err
    assert src.read_bytes() == before


@pytest.fixture(scope="module")
def short_model_dir(tmp_path_factory) -> Path:
    """A tiny model that takes at most 24 tokens."""
    return save_tiny_model(tmp_path_factory.mktemp("short"), TinyModelConfig(
        hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=24))


def test_a_prompt_longer_than_the_context_names_its_row(tmp_path, short_model_dir, capsys):
    """One byte is one token: a 30-character prompt cannot fit 24 positions, and a 20-character
    one leaves room for 4 new tokens, not 8."""
    base = ["--model", str(short_model_dir), "--output", str(tmp_path / "s.jsonl"), "--max-new-tokens", "8"]
    long = jsonl(tmp_path / "long.jsonl", [{"prompt": "short"}, {"prompt": "x" * 30}])
    assert (f"{long}, row 2: the prompt is 30 tokens, and the model's context is 24 tokens (max_position_embeddings): "
            "no room is left for a response") in refused(capsys, *base, "--prompts", str(long))
    tight = jsonl(tmp_path / "tight.jsonl", [{"prompt": "short"}, {"prompt": "y"}, {"prompt": "x" * 20}])
    assert (f"{tight}, row 3: the prompt is 20 tokens, and with --max-new-tokens 8 the samples would run past the "
            "model's context of 24 tokens (max_position_embeddings); lower --max-new-tokens to at most 4"
            ) in refused(capsys, *base, "--prompts", str(tight))
    assert not (tmp_path / "s.jsonl").exists()
    assert run(capsys, *base[:-1], "4", "--prompts", str(tight), "-n", "1")[0] == 0


def test_the_tokenizers_limit_counts_when_it_is_the_smaller(tmp_path, tiny_model_dir, capsys):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 12}))
    src = jsonl(tmp_path / "p.jsonl", [{"prompt": "x" * 12}])
    assert (f"{src}, row 1: the prompt is 12 tokens, and the model's context is 12 tokens (the tokenizer's "
            "model_max_length)") in refused(capsys, "--model", str(model), "--prompts", str(src), "--output",
                                            str(tmp_path / "s.jsonl"))


def test_a_model_without_an_end_of_sequence_token_is_refused(tmp_path, tiny_model_dir, prompt_file, capsys):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    tok = load_tokenizer(str(model))
    tok.eos_token = None
    tok.save_pretrained(model)
    assert (f"--model {model}: the tokenizer has no end-of-sequence token (eos_token_id is None)"
            in refused(capsys, "--model", str(model), "--prompts", str(prompt_file), "--output",
                       str(tmp_path / "s.jsonl")))


def test_a_scorer_reads_a_conversation_as_its_last_user_message(tmp_path, tiny_model_dir, scorers, capsys):
    """Scorers take text prompts: a conversation reaches them as its last user message ("what?",
    5 characters), a text prompt as it is ("q", 1), as in online training."""
    convo = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
             {"role": "assistant", "content": "hello"}, {"role": "user", "content": "what?"}]
    src = jsonl(tmp_path / "p.jsonl", [{"prompt": "q"}, {"prompt": convo}])
    out = tmp_path / "s.jsonl"
    assert run(capsys, "--model", str(tiny_model_dir), "--prompts", str(src), "--output", str(out), "-n", "2",
               "--max-new-tokens", "3", "--scorer", f"fn:{scorers}:prompt_length")[0] == 0
    got = [[s["score"] for s in r["samples"] if s["score"] is not None] for r in rows(out)]
    assert all(v == 1.0 for v in got[0]) and all(v == 5.0 for v in got[1]) and got[0] and got[1]


@pytest.mark.parametrize("first", ["3", "4"])
def test_a_larger_limit_extends_the_file_to_the_uninterrupted_one(tmp_path, tiny_model_dir, uninterrupted, capsys,
                                                                  first):
    """--limit 3 (its last chunk, of batch 2, cut short by the limit) or 4, then the same command
    with no --limit: the rows written are kept byte for byte, and the file is that of one run over
    all five prompts (the native backend draws a prompt's samples whatever its batch). Only the
    log-probs of prompt 3 (both kinds), drawn alone by the first run and beside prompt 4 by the
    whole one, may differ, in their last bits (batched arithmetic). A smaller limit than the
    file's is refused, naming --limit."""
    src, whole, meta = uninterrupted
    out = tmp_path / "grown.jsonl"
    common = ["--model", str(tiny_model_dir), "--prompts", str(src), "--output", str(out), *RESUMED_ARGS]
    assert run(capsys, *common, "--limit", first)[0] == 0
    assert len(rows(out)) == int(first)
    before = out.read_bytes()
    code, printed, err = run(capsys, *common)
    assert code == 0, err
    assert printed.startswith(f"wrote {5 - int(first)} rows to {out} (5 in all, resumed after row {first})")
    assert out.read_bytes().startswith(before)
    grown, single = out.read_bytes().splitlines(), whole.splitlines()
    short = {2} if first == "3" else set()  # the rows of the chunk the first run's limit cut short
    assert [line for i, line in enumerate(grown) if i not in short] == [
        line for i, line in enumerate(single) if i not in short]
    for i in short:
        a, b = json.loads(grown[i]), json.loads(single[i])
        for x, y in zip(a["samples"], b["samples"], strict=True):
            for key in ("logprobs", "sampling_logprobs"):
                assert x[key] == pytest.approx(y[key], rel=0, abs=1e-5)
                x[key] = y[key]
        assert a == b
    assert json.loads((tmp_path / "grown.jsonl.meta.json").read_text()) == json.loads(meta)  # the record too
    smaller = tmp_path / "smaller.jsonl"
    assert run(capsys, *common[:5], str(smaller), *RESUMED_ARGS, "--limit", "4")[0] == 0
    err = refused(capsys, *common[:5], str(smaller), *RESUMED_ARGS, "--limit", "2")
    assert "was started with --limit 4, this run has --limit 2" in err


def test_a_larger_limit_that_draws_other_first_prompts_is_refused(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """A task's training prompts drawn anew for each count: --limit 5 after --limit 3 would not
    start with the three prompts the file answered (simulated: the draw depends on the count)."""
    from alignlab.tasks.arithmetic import ArithmeticTask

    real = ArithmeticTask.train_prompts
    monkeypatch.setattr(ArithmeticTask, "train_prompts", lambda self, n, seed: real(self, n, seed + n))
    out = tmp_path / "t.jsonl"
    common = ["--model", str(tiny_model_dir), "--task", "arithmetic", "--prompt-set", "train", "--output", str(out),
              "-n", "1", "--max-new-tokens", "2"]
    assert run(capsys, *common, "--limit", "3")[0] == 0
    err = refused(capsys, *common, "--limit", "5")
    assert (f"{out} was started with --limit 3; with --limit 5 its first 3 prompts are not those it answered, so it "
            "cannot be extended") in err


def test_an_extension_that_fails_leaves_the_file_and_its_record_as_they_were(tmp_path, tiny_model_dir, capsys):
    """--limit 3 in chunks of 2, then --limit 5 where prompt 5 does not fit the context: refused
    before anything is written, the three rows and the record of --limit 3 untouched (the short
    chunk is cut off only when the extension writes)."""
    src = jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in PROMPTS[:4]] + [{"prompt": "1+" * 5000}])
    out = tmp_path / "o.jsonl"
    common = ["--model", str(tiny_model_dir), "--prompts", str(src), "--output", str(out), *RESUMED_ARGS]
    assert run(capsys, *common, "--limit", "3")[0] == 0
    before = {p: p.read_bytes() for p in (out, tmp_path / "o.jsonl.meta.json")}
    err = refused(capsys, *common, "--limit", "5")
    assert f"{src}, row 5" in err
    assert {p: p.read_bytes() for p in before} == before


def test_a_larger_limit_with_another_change_names_the_change(tmp_path, tiny_model_dir, uninterrupted, capsys):
    src, whole, meta = uninterrupted
    out = tmp_path / "o.jsonl"
    common = ["--model", str(tiny_model_dir), "--prompts", str(src), "--output", str(out), *RESUMED_ARGS]
    assert run(capsys, *common, "--limit", "3")[0] == 0
    err = refused(capsys, *common, "--limit", "4", "--seed", "1")
    assert "was started with --seed 0, this run has --seed 1" in err


def test_a_larger_limit_keeps_the_rows_written_when_samples_depend_on_their_batch(tmp_path, tiny_model_dir,
                                                                                 prompt_file, scripted, capsys):
    """A backend whose samples depend on their batch (each text names the size of the call that
    drew it): --limit 3 with batch 2 draws prompt 3 alone; the same command with no --limit keeps
    the three rows written, byte for byte, and adds prompts 4 and 5 (prompt 4 from the chunk of
    prompts 3 and 4, sampled whole as a resume samples a chunk cut short)."""
    gen, _ = scripted(lambda p, j: f"{p}|{j}|batch of {len(gen.calls[-1][0])}")
    out = tmp_path / "s.jsonl"
    common = ["--model", str(tiny_model_dir), "--prompts", str(prompt_file), "--output", str(out), "-n", "1",
              "--batch-size", "2", "--max-new-tokens", "4"]
    assert run(capsys, *common, "--limit", "3")[0] == 0
    before = out.read_bytes()
    assert [r["completions"] for r in rows(out)][2] == ["1+1=|0|batch of 1"]
    code, printed, err = run(capsys, *common)
    assert code == 0, err
    assert printed.startswith(f"wrote 2 rows to {out} (5 in all, resumed after row 3)")
    assert out.read_bytes().startswith(before)
    assert [r["completions"] for r in rows(out)][3:] == [["the sky is|0|batch of 2"], ["count: one, two,|0|batch of 1"]]
    assert [prompts for prompts, _, _ in gen.calls[-2:]] == [PROMPTS[2:4], PROMPTS[4:5]]
