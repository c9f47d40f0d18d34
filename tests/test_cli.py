"""The `alignlab` command: help, flags, YAML, errors as one line with exit status 2."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alignlab.cli import _parse_flags, main
from alignlab.config import TrainConfig, load_config
from alignlab.errors import ConfigError, UserError


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_iterate_help_names_iterate(capsys):
    code, out, _ = _run(["iterate", "--help"], capsys)
    assert code == 0 and out.startswith("usage: alignlab iterate [CONFIG.yaml] [--field value ...]\n"), out[:80]
    assert _run(["train", "--help"], capsys)[1].startswith("usage: alignlab train [CONFIG.yaml]")


def test_train_help_lists_every_field_with_its_help(capsys):
    code, out, _ = _run(["train", "--help"], capsys)
    assert code == 0
    for f in dataclasses.fields(TrainConfig):
        if f.metadata.get("internal"):
            continue
        assert f"--{f.name.replace('_', '-')}" in out
        assert f.metadata["help"][:40] in out.replace("\n        ", " ")
    assert "--beta" in out and "strength of the KL penalty" in out


def test_flags_parse():
    cfg, over, debug = _parse_flags(["c.yaml", "--max-steps", "5", "--lora", "--lr=1e-3", "--beta", "-0.5", "--debug"],
                                    frozenset({"lora"}))
    assert cfg == "c.yaml" and debug
    assert over == {"max_steps": "5", "lora": "true", "lr": "1e-3", "beta": "-0.5"}
    # a boolean flag does not swallow the config path after it; it does take a boolean word
    assert _parse_flags(["--resume", "c.yaml", "--lora", "false"], frozenset({"resume", "lora"}))[:2] == (
        "c.yaml", {"resume": "true", "lora": "false"})
    assert _parse_flags(["--data"])[1] == {"data": None}
    # a second value after a flag's is named with that flag, not taken for a second config file
    for tokens, after in ((["c.yaml", "--lr", "1e-5", "2e-5"], "--lr 1e-5"), (["--lr", "1e-5", "2e-5"], "--lr 1e-5"),
                          (["c.yaml", "--lora", "maybe"], "--lora"), (["--lr=1e-5", "2e-5"], "--lr=1e-5")):
        with pytest.raises(UserError, match=f"^unexpected argument '[a-z0-9-]+' after '{after}' \\(a flag takes one "):
            _parse_flags(tokens, frozenset({"lora"}))
    with pytest.raises(UserError, match="^unexpected argument 'd.yaml' \\(only one config file can be given\\)$"):
        _parse_flags(["c.yaml", "--lr", "1e-5", "d.yaml"])
    assert _parse_flags(["--lr", "1e-5", "c.yaml"])[:2] == ("c.yaml", {"lr": "1e-5"})


@pytest.mark.parametrize("flags,message", [
    (["--data"], "--data needs a value"),
    (["--columns.prompt"], "--columns.prompt needs a value"),
    (["--max-steps", "--lora"], "--max-steps needs a value"),
])
def test_value_flags_need_a_value(flags, message, capsys):
    code, _, err = _run(["train", "--model", "m"] + flags, capsys)
    assert code == 2 and message in err


def test_yaml_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": "m", "data": "d", "lr": 0.1, "beta": 0.3, "columns": {"prompt": "q"}}))
    cfg = load_config(path, {"lr": "0.2", "columns.chosen": "good"})
    assert cfg.optim.lr == 0.2 and cfg.method_params.beta == 0.3
    assert cfg.dataset.columns == {"prompt": "q", "chosen": "good"}


@pytest.mark.parametrize("flags,message", [
    (["--lr", "-1"], "lr: must be > 0"),
    (["--lr", "abc"], "lr: expected a number"),
    (["--beta", "0"], "beta: must be a finite number > 0"),
    (["--beta", "inf"], "beta: must be a finite number"),
    (["--lr", "nan"], "lr: must be a finite number"),
    (["--adam-eps", "-1"], "adam_eps: must be > 0"),
    (["--lorra"], "unknown key for method 'dpo'; did you mean 'lora'?"),
    (["--bta", "0.2"], "did you mean 'beta'"),
    (["--batch-size", "2.5"], "batch_size: expected an integer"),
    (["--method", "dpoo"], "did you mean 'dpo'"),
    (["--method", "sft", "--beta", "0.1"], "beta: not a parameter of method 'sft'"),
    (["--eval-fraction", "1.5"], "eval_fraction: must be in [0, 1)"),
    (["--scheduler", "step"], "scheduler: must be linear, cosine or constant"),
])
def test_bad_values_are_one_line_exit_2(flags, message, capsys, tmp_path):
    code, _, err = _run(["train", "--model", "m", "--data", "d", "--output-dir", str(tmp_path / "o")] + flags, capsys)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert message in err


def test_missing_required_field(capsys):
    code, _, err = _run(["train", "--data", "d"], capsys)
    assert code == 2 and "model: is required" in err


@pytest.mark.parametrize("text,line,key,first", [
    ("model: m\nlr: 0.1\ndata: d\nlr: 0.2\n", 4, "lr", 2),
    ("model: m\noptim:\n  lr: 0.1\n  lr: 0.2\n", 4, "lr", 3),
    ("model: m\ncolumns: {prompt: q, prompt: r}\n", 2, "prompt", 2),
])
def test_a_key_given_twice_in_the_file_is_one_line(text, line, key, first, capsys, tmp_path):
    """YAML forbids a mapping that repeats a key, and PyYAML would keep the later value without a
    word (lr 0.2 here, the 0.1 lost); the error names the file, the line of the second one and
    the line of the first."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    code, _, err = _run(["train", str(path)], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"config file '{path}', line {line}" in err and f"key '{key}' given twice (first on line {first})" in err


def test_a_merged_mapping_may_be_overridden(tmp_path):
    """A YAML merge (<<) followed by the same key is an override, not a key given twice."""
    from alignlab.config import read_yaml

    path = tmp_path / "c.yaml"
    path.write_text("x: &b {lr: 0.1, beta: 0.3}\ny:\n  <<: *b\n  lr: 0.2\n")
    assert read_yaml(path)["y"] == {"lr": 0.2, "beta": 0.3}


def test_missing_config_file(capsys):
    code, _, err = _run(["train", "nope.yaml"], capsys)
    assert code == 2 and "nope.yaml" in err


def test_missing_model_and_data_are_named(capsys, tmp_path, tiny_model_dir, pairs_file):
    code, _, err = _run(["train", "--model", str(tmp_path / "nomodel"), "--data", str(pairs_file),
                         "--output-dir", str(tmp_path / "o1")], capsys)
    assert code == 2 and "nomodel" in err and "does not exist" in err
    code, _, err = _run(["train", "--model", str(tiny_model_dir), "--data", str(tmp_path / "none.jsonl"),
                         "--output-dir", str(tmp_path / "o2")], capsys)
    assert code == 2 and "none.jsonl" in err


def test_bad_row_names_file_row_and_field(capsys, tmp_path, tiny_model_dir):
    data = tmp_path / "bad.jsonl"
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "", "rejected": "b"},
            {"prompt": "p", "chosen": "x", "rejected": "x"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = _run(["train", "--model", str(tiny_model_dir), "--data", str(data),
                         "--output-dir", str(tmp_path / "o")], capsys)
    assert code == 2
    assert "bad.jsonl, row 2, field 'chosen'" in err and "1 more bad row" in err


def test_skip_invalid_trains_on_the_rest(capsys, tmp_path, tiny_model_dir):
    data = tmp_path / "some_bad.jsonl"
    rows = [{"prompt": "p", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(6)]
    rows.insert(2, {"prompt": "p", "chosen": "same", "rejected": "same"})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = _run(["train", "--model", str(tiny_model_dir), "--data", str(data), "--skip-invalid",
                           "--output-dir", str(tmp_path / "o"), "--max-steps", "1", "--batch-size", "2",
                           "--progress", "false"], capsys)
    assert code == 0, err
    assert "1 invalid row skipped" in err and "row 3" in err
    summary = json.loads(out)
    assert summary["steps"] == 1 and summary["train_metrics"]["step"] == 1
    assert summary["data"]["train_rows"] == 6 and summary["data"]["skipped_rows"] == 1


def test_train_stdout_is_the_summary_alone(tmp_path, tiny_model_dir, pairs_file):
    """In a fresh process, stdout is the JSON summary and nothing else: saving the model makes
    accelerate import DeepSpeed where it is installed, whose start-up log must not land there."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "alignlab.cli", "train", "--model", str(tiny_model_dir), "--data",
                           str(pairs_file), "--output-dir", str(tmp_path / "o"), "--max-steps", "1",
                           "--batch-size", "2", "--progress", "false"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["steps"] == 1, proc.stdout[:300]


def test_train_prints_what_summary_json_holds(capsys, tmp_path, tiny_model_dir, pairs_file):
    """One structure: the printout is summary.json, the last step's metrics under train_metrics and
    the final evaluation's under eval_metrics, at full precision."""
    code, out, err = _run(["train", "--model", str(tiny_model_dir), "--data", str(pairs_file), "--output-dir",
                           str(tmp_path / "o"), "--max-steps", "2", "--batch-size", "4", "--eval-fraction", "0.25",
                           "--lr", "1e-7", "--warmup-steps", "0", "--scheduler", "constant", "--progress", "false"],
                          capsys)
    assert code == 0, err
    printed = json.loads(out)
    assert printed == json.loads((tmp_path / "o" / "summary.json").read_text())
    assert list(printed) == ["output_dir", "model_dir", "steps", "train_metrics", "eval_metrics", "data"]
    assert printed["steps"] == 2 and printed["train_metrics"]["step"] == 2
    assert printed["train_metrics"]["lr"] == 1e-7  # a constant schedule, printed exactly
    assert "eval/loss" in printed["eval_metrics"] and not any(k.startswith("eval/") for k in printed["train_metrics"])


def test_debug_shows_the_traceback():
    with pytest.raises(ConfigError):
        main(["train", "--model", "m", "--data", "d", "--lr", "-1", "--debug"])


def test_methods_lists_every_method_with_shape_reference_defaults_and_paper(capsys):
    from alignlab.losses import REGISTRY

    code, out, _ = _run(["methods"], capsys)
    assert code == 0
    for name in REGISTRY:
        assert f"  {name} " in out
    for shape in ("pair", "joint", "unpaired", "ranked", "negatives", "sft"):
        assert f"== {shape} data" in out
    assert "beta=2.0, gamma_beta_ratio=0.25" in out  # simpo's defaults
    code, out, _ = _run(["methods", "--json"], capsys)
    rows = {r["method"]: r for r in json.loads(out)}
    assert set(rows) == set(REGISTRY)
    assert rows["dpo"]["reference"] is True and rows["sft"]["reference"] is False
    assert rows["simpo"]["reference"] is False and rows["simpo"]["logps"] == "mean"
    assert rows["kto"]["data"] == "unpaired" and rows["listmle"]["data"] == "ranked"
    assert rows["lcpo"]["stateful"] is True and rows["ld-dpo"]["needs"] == ["tokens"]
    assert all(r["paper"] and r["summary"] for r in rows.values())


def test_unknown_command(capsys):
    code, _, err = _run(["trian"], capsys)
    assert code == 2 and "unknown command" in err


def test_console_script_tiny_model(tmp_path):
    """The console script that `pip install` puts beside the interpreter."""
    exe = Path(sys.executable).parent / "alignlab"
    assert exe.exists(), "install the package (pip install -e .) to get the alignlab command"
    proc = subprocess.run([str(exe), "tiny-model", str(tmp_path / "tiny"), "--num-layers", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny")
    assert model.config.num_hidden_layers == 1


@pytest.mark.parametrize("flags,message", [
    (["--num-heads", "3"], "num_heads: must divide hidden_size"),
    (["--hidden-size", "0"], "hidden_size: must be >= 1"),
    (["--num-layers", "-1"], "num_layers: must be >= 1"),
])
def test_tiny_model_bad_shape(flags, message, capsys, tmp_path):
    code, _, err = _run(["tiny-model", str(tmp_path / "t")] + flags, capsys)
    assert code == 2 and message in err


def test_only_rank_0_prints_errors(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    code, _, err = _run(["train", "--model", "m", "--data", "d", "--lr", "-1"], capsys)
    assert code == 2 and err == ""


def test_demo_rejects_unknown_task_and_method_before_any_work(capsys, tmp_path):
    from alignlab.cli import main

    assert main(["demo", "--task", "arith", "--cache-dir", str(tmp_path)]) == 2
    assert "task must be one of arithmetic, chainsum, constraints, sentiment" in capsys.readouterr().err
    assert main(["demo", "--task", "chainsum", "--cache-dir", str(tmp_path)]) == 2  # TASK_LR has no rate for it
    assert "no measured learning rate for task 'chainsum' yet; give one with --lr" in capsys.readouterr().err
    from alignlab.testbed.demo import ONLINE_LR, DemoSettings

    assert DemoSettings(task="chainsum", method="grpo").lr == ONLINE_LR  # online methods share one measured rate
    assert DemoSettings(task="arithmetic", method="grpo", lr=1e-3).lr == 1e-3
    assert main(["demo", "--method", "dpoo", "--cache-dir", str(tmp_path)]) == 2
    assert "unknown method 'dpoo'" in capsys.readouterr().err
    assert main(["demo", "--lr", "-1", "--cache-dir", str(tmp_path)]) == 2
    assert "lr and epochs must be positive" in capsys.readouterr().err
    assert main(["demo", "--label-noise", "1.5", "--cache-dir", str(tmp_path)]) == 2
    assert "label_noise must be in [0, 0.5)" in capsys.readouterr().err
    for flag, value, words in (("--batch-size", "0", "--batch-size: must be >= 1, got 0"),
                               ("--eval-every", "-1", "--eval-every: must be >= 0, got -1"),
                               ("--eval-prompts", "-2", "--eval-prompts: must be >= 0, got -2")):
        assert main(["demo", flag, value, "--cache-dir", str(tmp_path)]) == 2
        assert f"alignlab: error: {words}\n" in capsys.readouterr().err
    # an online method scores its own samples: no pairs to flip, and one sample a prompt is allowed
    assert main(["demo", "--method", "grpo", "--label-noise", "0.3", "--cache-dir", str(tmp_path)]) == 2
    assert "alignlab: error: --label-noise: an online method scores its own samples" in capsys.readouterr().err
    assert DemoSettings(method="remax", k=1).k == 1
    assert main(["demo", "--method", "remax", "--k", "0", "--cache-dir", str(tmp_path)]) == 2
    assert "alignlab: error: --k 0: must be >= 1\n" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing was built


def test_feedback_command_writes_every_shape(tiny_model_dir, tmp_path, capsys):
    from alignlab.cli import main

    out = tmp_path / "fb"
    assert main(["feedback", "--task", "sentiment", "--model", str(tiny_model_dir), "--out", str(out),
                 "--prompts", "6", "--k", "2", "--reward", "proxy", "--pair-rule", "random", "--seed", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["rows"]["scored"] == 12 and printed["rows"]["ranked"] == 6
    assert printed["model"] == str(tiny_model_dir)
    for name in ("pairs", "ranked", "unpaired", "scored", "negatives"):
        assert (out / f"{name}.jsonl").exists()
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["spec"]["pair_rule"] == "random" and meta["spec"]["k"] == 2


@pytest.mark.parametrize("stage,expected", [(None, "sft"), ("sft", "sft"), ("pretrained", "pretrained")])
def test_feedback_command_samples_from_the_chosen_testbed_model(stage, expected, tiny_model_dir, tmp_path, capsys,
                                                                 monkeypatch):
    """Without --model, --from picks which testbed model is sampled; the command prints its path,
    to train on it (the pretrained one is the reward-model backbone)."""
    import alignlab.testbed.shipped as shipped
    from alignlab.cli import main

    asked = []
    monkeypatch.setattr(shipped, "task_model", lambda task, stage, cache_dir, progress: asked.append((task, stage))
                        or tiny_model_dir)
    args = ["feedback", "--task", "sentiment", "--out", str(tmp_path / "fb"), "--prompts", "3", "--k", "2"]
    assert main(args + (["--from", stage] if stage else [])) == 0
    assert asked == [("sentiment", expected)]
    assert json.loads(capsys.readouterr().out)["model"] == str(tiny_model_dir)


def test_feedback_command_rejects_bad_settings(tiny_model_dir, tmp_path, capsys):
    from alignlab.cli import main

    assert main(["feedback", "--task", "sentiment", "--model", str(tiny_model_dir), "--out", str(tmp_path),
                 "--label-noise", "2"]) == 2
    assert "label_noise must be in [0, 0.5)" in capsys.readouterr().err


ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    """The environment of a child python that imports this checkout of alignlab."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _pipe_to_a_reader_that_leaves(argv: list[str], read_first_line: bool) -> tuple[bytes, int, str]:
    """Run ``python -m alignlab.cli ARGV`` into a real pipe whose reader leaves early: after the
    first line (as ``| head -n 1`` does), or before anything is written (as ``| true`` does).

    The pipe holds one page (4 KiB) where Linux lets it be shrunk, so a command printing more than
    twice that cannot have written everything before the reader leaves (at most one pipeful read
    and one pipeful waiting); the first-line cases print more than 12 KiB."""
    import fcntl

    read_end, write_end = os.pipe()
    if hasattr(fcntl, "F_SETPIPE_SZ"):
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    elif read_first_line:
        pytest.skip("the pipe's capacity cannot be set here")
    proc = subprocess.Popen([sys.executable, "-m", "alignlab.cli", *argv], stdout=write_end, stderr=subprocess.PIPE,
                            cwd=ROOT, env=_env())
    os.close(write_end)
    first = b""
    if read_first_line:
        while b"\n" not in first:
            chunk = os.read(read_end, 1)
            if not chunk:
                break
            first += chunk
    os.close(read_end)
    _, err = proc.communicate(timeout=120)
    return first, proc.returncode, err.decode()


@pytest.mark.parametrize("argv,read_first_line", [
    (["methods"], True),
    (["train", "--help"], True),
    (["--help"], False),
])
def test_a_reader_that_leaves_early_ends_the_command_quietly(argv, read_first_line):
    """`alignlab methods | head -n 1`: the reader takes its line and goes; the command stops with no
    traceback, with the status a shell gives a writer whose reader left (128 + SIGPIPE)."""
    first, code, err = _pipe_to_a_reader_that_leaves(argv, read_first_line)
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err
    assert code == 141, err
    if read_first_line:
        assert first == {"methods": b"== sft data: prompt + completion (or messages / text)\n",
                         "train": b"usage: alignlab train [CONFIG.yaml] [--field value ...]\n"}[argv[0]]


def test_a_broken_pipe_that_is_not_stdout_is_not_hidden():
    """Only the reader of stdout going away ends a command quietly; another broken pipe (a judge's
    socket, say) while stdout's reader is still there is a bug to show, not to swallow."""
    code = ("import sys\nfrom alignlab import cli\n"
            "def broken(tokens):\n    print('a line first')\n    raise BrokenPipeError(32, 'Broken pipe')\n"
            "cli.COMMANDS['methods'] = broken\nsys.exit(cli.main(['methods']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=_env(),
                          timeout=120)
    assert proc.stdout == "a line first\n"
    assert proc.returncode == 1 and "BrokenPipeError" in proc.stderr, proc.stderr


def _settings_classes():
    from alignlab.models import TinyModelConfig
    from alignlab.testbed.demo import DemoSettings
    from alignlab.testbed.feedback import FeedbackSpec

    return [("demo", DemoSettings), ("feedback", FeedbackSpec), ("tiny-model", TinyModelConfig)]


@pytest.mark.parametrize("command,cls", _settings_classes(), ids=lambda x: x if isinstance(x, str) else "")
def test_settings_commands_show_every_fields_flag_help_and_default(command, cls, capsys, monkeypatch):
    """demo, feedback and tiny-model build their flags from their settings' dataclass: each field
    is a flag (named as FLAG_NAMES says where it differs) with its help and the field's default."""
    from alignlab.field_flags import FLAG_NAMES, default_text, field_default

    monkeypatch.setenv("COLUMNS", "10000")  # one line per flag: no word of a help text broken at a hyphen
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(cls):
        flag = "--" + FLAG_NAMES[command].get(f.name, f.name).replace("_", "-")
        assert f" {flag} " in out, flag
        help_ = " ".join(f.metadata["help"].split())
        shown = "(required)" if (command, f.name) == ("feedback", "task") else f"(default {default_text(field_default(f))})"
        assert f"{help_} {shown}" in out, f.name


def test_demo_help_names_every_task(capsys, monkeypatch):
    from alignlab.tasks import task_names

    monkeypatch.setenv("COLUMNS", "10000")
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("--task"))
    for name in task_names():
        assert name in line, name


def test_demo_flags_set_the_settings(monkeypatch, capsys):
    """Flags land in DemoSettings' fields, the renamed ones too (--prompts, --param)."""
    import alignlab.testbed.demo as demo

    seen = {}

    def fake_run_demo(settings, out, cache_dir, progress, overwrite, report_to):
        seen.update(settings=settings, out=out, progress=progress, overwrite=overwrite, report_to=report_to)
        raise UserError("stop here")

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    assert main(["demo", "--task", "sentiment", "--method", "rdpo", "--prompts", "7", "--k", "3", "--batch-size",
                 "4", "--lr", "1e-4", "--param", "epsilon=0.2", "--no-progress", "--overwrite", "--report-to",
                 "tensorboard", "--reward", "proxy"]) == 2
    s = seen["settings"]
    assert (s.task, s.method, s.num_prompts, s.k, s.batch_size, s.lr) == ("sentiment", "rdpo", 7, 3, 4, 1e-4)
    assert s.method_params == {"epsilon": 0.2} and s.epochs == 3.0
    assert seen["out"] == "runs/demo-sentiment-rdpo-s0-proxy" and seen["progress"] is False and seen["overwrite"] is True
    assert seen["report_to"] == ["tensorboard"] and s.reward == "proxy"
    assert main(["demo", "--param", "epsilon"]) == 2
    assert "--param: expected NAME=VALUE, got 'epsilon'" in capsys.readouterr().err
