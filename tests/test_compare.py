"""`alignlab compare`: config errors in one line before anything runs, the cells a grid makes,
failed cells reported while the others finish, finished cells kept on a rerun, and one small
comparison on the arithmetic testbed from start to report."""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from alignlab import cli
from alignlab.compare import run as compare_run
from alignlab.compare.config import load_plan
from alignlab.errors import ConfigError


def write_config(tmp_path: Path, text: str, name: str = "compare.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).replace("OUT", str(tmp_path / "out")))
    return path


TESTBED = """
output_dir: OUT
base:
  task: arithmetic
  {base}
grid:
  {grid}
"""


@pytest.mark.parametrize(("base", "grid", "extra", "message"), [
    ("epochs: 1", "method: [dpo]", "grdi: {}", "grdi: unknown key of a comparison; did you mean 'grid'?"),
    ("lrr: 1.0e-5", "method: [dpo]", "", "cell method=dpo: lrr: unknown key for method 'dpo'; did you mean 'lr'? "
                                         "(set in base)"),
    ("epochs: 1", "method: [dpo]\n  betta: [0.1]", "", "betta: unknown key for method 'dpo'; did you mean 'beta'?"),
    ("epochs: 1", "method: [dpo, dpx]", "", "grid.method: unknown method 'dpx'; did you mean 'dpo'? (known: "),
    ("epochs: 1", "{}", "", "grid: empty; give at least one train key with a list of values"),
    ("epochs: 1", "method: []", "", "grid.method: an empty list makes no cells"),
    ("epochs: 1", "method: dpo", "", "grid.method: a list of values (e.g. [dpo])"),
    ("epochs: 1", "seed: [0, 0]", "", "grid.seed: the value 0 is given twice"),
    ("epochs: 1", "lr: [1.0e-5, -1.0]", "", "cell lr=-1.0: lr: must be > 0, got -1.0"),
    ("epochs: 1", "method: [dpo]", "decoding: ['best-of-n --n 4']", "decoding[0]: --scorer: best-of-n needs a scorer"),
    ("epochs: 1", "method: [dpo]", "decoding: ['beam --n 2']", "decoding[0]: --method: unknown decoding method 'beam'"),
    ("output_dir: x", "method: [dpo]", "", "base.output_dir: set by alignlab compare for each cell"),
    ("feedback: {promts: 8}", "method: [dpo]", "", "base.feedback.promts: unknown key (keys: "),
    ("feedback: {k: 1}", "method: [dpo]", "", "base.feedback.k: must be >= 2"),
    ("feedback: {seed: -1}", "method: [dpo]", "", "base.feedback.seed: must be >= 0, got -1"),
    ("feedback: {prompts: 0}", "method: [dpo]", "", "base.feedback.prompts: must be >= 1, got 0"),
    ("feedback: {prompts: many}", "method: [dpo]", "", "base.feedback.prompts: a whole number, got 'many'"),
    ("feedback: {label_noise: [0.1]}", "method: [dpo]", "", "base.feedback.label_noise: a number, got [0.1]"),
    ("feedback: {k: 2.5}", "method: [dpo]", "", "base.feedback.k: a whole number, got 2.5"),
    ("epochs: 1", "method: [soft-preference]", "", "cell method=soft-preference: the synthetic feedback has no strength"),
    ("epochs: 1", "method: [bvpo]", "", "cell method=bvpo: mix_data: method 'bvpo' needs a second set of pairs"),
    ("epochs: 1", "method: [dpo]", "jobs: 0", "jobs: cells run at once, a whole number >= 1, got 0"),
    ("lr: 1.0e-5", "epochs: [1, 1.0]", "", "grid: cells epochs=1 and epochs=1.0 are the same run (their settings are "
                                           "equal once read, as 1 and 1.0 are, or two spellings of one path); give "
                                           "each value once"),
    ("epochs: 1", "lr: [1e-5, 0.00001]", "", "grid: cells lr=1e-5 and lr=1e-05 are the same run"),
    ("epochs: 1", "beta: [0.1, 1e-1]", "", "grid: cells beta=0.1 and beta=1e-1 are the same run"),
    ("epochs: 1", "lr: [1e-4, 1E-4]", "", "grid: cells lr=1e-4 and lr=1E-4 are the same run"),
    ("epochs: 1", "adam_betas: ['0.9,0.99', [0.9, 0.99]]", "", "grid: cells adam_betas=0.9,0.99 and "),
    ("epochs: 1", "method: [dpo]", "decoding: ['best-of-n --n 4 --scorer task:arithmetic', "
                                   "'best-of-n  --scorer task:arithmetic --n 4']",
     "decoding[1]: 'best-of-n  --scorer task:arithmetic --n 4' is the same method as decoding[0]"),
    ("epochs: 1", "optim: {lr: [1.0e-5]}", "", "grid.optim: a list of values; give a section's keys flat or dotted, "
                                              "e.g. optim.lr: [...]"),
])
def test_config_errors_are_one_line_before_anything_runs(tmp_path, capsys, base, grid, extra, message):
    path = write_config(tmp_path, TESTBED.format(base=base, grid=grid) + extra)
    assert cli.main(["compare", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"alignlab: error: {path}: "), err
    assert message in err, err
    assert not (tmp_path / "out").exists()


def test_feedback_numbers_are_read_as_train_keys_are(tmp_path):
    plan = load_plan(write_config(tmp_path, "output_dir: OUT\nbase: {task: arithmetic, epochs: 1, "
                                            "feedback: {label_noise: 1e-1, prompts: 10}}\ngrid: {method: [dpo]}\n"))
    assert plan.feedback["label_noise"] == 0.1 and plan.feedback["num_prompts"] == 10


def test_base_model_cells_take_the_seeds_as_the_train_cells_read_them(tmp_path):
    plan = load_plan(write_config(tmp_path, "output_dir: OUT\nbase: {task: arithmetic, epochs: 1}\n"
                                            "grid: {seed: ['0', '1']}\n"))
    base = [c for c in plan.cells if c.kind == "base"]
    assert [(c.id, c.seed, c.settings["seed"]) for c in base] == [("base,seed=0", 0, 0), ("base,seed=1", 1, 1)]
    assert all(type(c.settings["seed"]) is int for c in base)


def test_an_unknown_task_and_a_missing_model_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"base.task: unknown task 'arith' \(tasks: arithmetic, chainsum"):
        load_plan(write_config(tmp_path, "base: {task: arith}\ngrid: {method: [dpo]}\n"))
    with pytest.raises(ConfigError, match="base: give a model .and data. to train, or a task"):
        load_plan(write_config(tmp_path, "base: {epochs: 1}\ngrid: {method: [dpo]}\n"))
    with pytest.raises(ConfigError, match="base: give the data to train on"):
        load_plan(write_config(tmp_path, "base: {model: m}\ngrid: {method: [dpo]}\n"))


def test_cells_of_a_grid(tmp_path):
    """Two methods × two learning rates × two seeds on the testbed, plus the base model with and
    without best-of-4 for each seed; grpo and online-dpo get their steps from the budget: 2 epochs
    over 64 prompts, 16 samples a step. grpo samples k = 4 per prompt: 16 // 4 = 4 prompts a step,
    ceil(2 × 64 / 4) = 32 steps; online-dpo compares 2: 8 prompts a step, ceil(2 × 64 / 8) = 16."""
    plan = load_plan(write_config(tmp_path, """
        output_dir: OUT
        jobs: 3
        base:
          task: arithmetic
          optim: {epochs: 2}
          task_eval_prompts: 20
          feedback: {prompts: 64, k: 4, reward: gold}
        grid:
          method: [dpo, kto]
          lr: [1.0e-5, 2.0e-5]
          seed: [0, 1]
        decoding: ["best-of-n --n 4 --scorer task:arithmetic"]
        """))
    assert plan.jobs == 3 and plan.output_dir == tmp_path / "out" and plan.task == "arithmetic"
    ids = [c.id for c in plan.cells]
    assert ids[:4] == ["base,seed=0", "base,seed=1", "base+best-of-n_--n_4_--scorer_task_arithmetic,seed=0",
                       "base+best-of-n_--n_4_--scorer_task_arithmetic,seed=1"]
    assert ids[4:] == [f"method={m},lr={lr},seed={s}" for m in ("dpo", "kto") for lr in ("1e-05", "2e-05")
                       for s in (0, 1)]
    groups = list(dict.fromkeys(c.group for c in plan.cells))
    assert groups == ["base", "base + best-of-n --n 4 --scorer task:arithmetic", "dpo, lr=1e-05", "dpo, lr=2e-05",
                      "kto, lr=1e-05", "kto, lr=2e-05"]
    dpo = plan.cells[4]
    assert dpo.seed == 0 and dpo.settings["feedback"] == "pair" and dpo.settings["eval_prompts"] == 20
    train = dpo.settings["train"]
    assert train["lr"] == 1e-5 and train["epochs"] == 2 and train["task"] == "arithmetic" and "data" not in train
    assert train["batch_size"] == 16 and train["scheduler"] == "linear"  # the demo's, unless the config says
    assert plan.cells[-1].settings["feedback"] == "unpaired"
    assert plan.feedback["num_prompts"] == 64 and plan.feedback["k"] == 4
    assert plan.cells[2].settings["decoding"] == "best-of-n --n 4 --scorer task:arithmetic"

    online = load_plan(write_config(tmp_path, """
        base: {task: arithmetic, epochs: 2, feedback: {prompts: 64}}
        grid: {method: [grpo, online-dpo]}
        """, "online.yaml"))
    grpo, odpo = (c.settings["train"] for c in online.cells if c.kind == "train")
    assert (grpo["data"], grpo["reward"], grpo["num_generations"]) == ("task:arithmetic", ["task:arithmetic:gold"], 4)
    assert (grpo["batch_size"], grpo["max_steps"], grpo["epochs"]) == (16, 32, 1.0)
    assert (odpo["num_generations"], odpo["batch_size"], odpo["max_steps"]) == (2, 16, 16)
    assert grpo["lr"] == 5e-5  # the demo's ONLINE_LR
    assert online.output_dir == (Path.cwd() / "runs" / "compare-online").absolute()


@pytest.mark.parametrize("reward", ["null", "[]"])
def test_an_online_cell_whose_reward_is_null_or_no_specs_gets_the_feedbacks_reward(tmp_path, reward):
    """As one whose reward is left out: the task's proxy here, which the feedback names, not the gold
    that an online run on task:NAME falls back to."""
    plan = load_plan(write_config(tmp_path, f"""
        base: {{task: arithmetic, reward: {reward}, feedback: {{prompts: 64, reward: proxy}}}}
        grid: {{method: [grpo]}}
        """))
    (grpo,) = (c.settings["train"] for c in plan.cells if c.kind == "train")
    assert grpo["reward"] == ["task:arithmetic:proxy"]


# A stand-in for a cell's process: records that it ran, fails (exit 3) for lr 0.5 until the file
# `fixed` exists, else writes a result whose eval loss is 10 × lr + seed.
FAKE_CELL = r"""
import json, os, sys
from pathlib import Path
cell = Path(sys.argv[1])
out = cell.parent.parent
record = json.loads((cell / "cell.json").read_text())
with open(out / "runs.txt", "a") as f:
    f.write(record["id"] + "\n")
print("threads", os.environ["OMP_NUM_THREADS"])
lr = record["settings"]["train"]["lr"]
if lr == 0.5 and not (out / "fixed").exists():
    print("boom", file=sys.stderr)
    sys.exit(3)
result = {"status": "ok", "metrics": {"eval/loss": 10 * lr + record["seed"]}, "steps": 1, "seconds": 0.5}
(cell / "result.json").write_text(json.dumps(result))
"""

USER = """
output_dir: OUT
jobs: 2
base: {model: /models/m, data: /data/pairs.jsonl, method: dpo}
grid:
  lr: [0.1, 0.5]
  seed: [0, 1]
"""


def test_a_failed_cell_is_reported_and_a_rerun_keeps_the_finished_ones(tmp_path, monkeypatch, capsys):
    """Cells with lr 0.5 fail: the others finish, the command exits 1 after writing the report,
    which marks the row FAILED with each cell's log. A rerun runs only the failed cells (the
    finished ones' result.json stay untouched); a third run runs nothing; a config that changes a
    finished cell is refused in one line."""
    monkeypatch.setattr(compare_run, "cell_command", lambda d: [sys.executable, "-c", FAKE_CELL, str(d)])
    path = write_config(tmp_path, USER)
    out = tmp_path / "out"
    assert cli.main(["compare", str(path)]) == 1
    printed = capsys.readouterr().out
    assert "FAILED lr=0.5,seed=0 (exit 3)" in printed and "FAILED lr=0.5,seed=1 (exit 3)" in printed
    assert "4 cells ran: 2 finished, 2 failed; 0 had finished earlier" in printed
    for seed in (0, 1):
        failed = json.loads((out / "cells" / f"lr=0.5,seed={seed}" / "failed.json").read_text())
        assert failed["returncode"] == 3 and "boom" in Path(failed["log"]).read_text()
        assert not (out / "cells" / f"lr=0.5,seed={seed}" / "result.json").exists()
        assert (out / "cells" / f"lr=0.1,seed={seed}" / "result.json").exists()
    assert "threads 1" in (out / "cells" / "lr=0.1,seed=0" / "log.txt").read_text()  # 2 cores / 2 jobs (or 1 core)
    md = (out / "report.md").read_text()
    assert "| lr=0.5 | 0 of 2 (failed: seed 0, seed 1) | FAILED | FAILED |" in md
    assert "| lr=0.1 | 2 | 1.500 ± 0.707 |" in md  # eval loss 1.0 and 2.0: mean 1.5, std √0.5
    assert "| lr=0.5,seed=1 | 3 | cells/lr=0.5,seed=1/log.txt |" in md
    assert sorted((out / "runs.txt").read_text().split()) == ["lr=0.1,seed=0", "lr=0.1,seed=1", "lr=0.5,seed=0",
                                                             "lr=0.5,seed=1"]
    finished = {s: (out / "cells" / f"lr=0.1,seed={s}" / "result.json").stat().st_mtime_ns for s in (0, 1)}

    (out / "fixed").touch()
    assert cli.main(["compare", str(path)]) == 0
    assert "2 cells ran: 2 finished, 0 failed; 2 had finished earlier" in capsys.readouterr().out
    assert sorted((out / "runs.txt").read_text().split()[4:]) == ["lr=0.5,seed=0", "lr=0.5,seed=1"]
    assert {s: (out / "cells" / f"lr=0.1,seed={s}" / "result.json").stat().st_mtime_ns for s in (0, 1)} == finished
    assert not list(out.glob("cells/*/failed.json"))
    md = (out / "report.md").read_text()
    assert "FAILED" not in md and "| lr=0.5 | 2 | 5.500 ± 0.707 |" in md

    assert cli.main(["compare", str(path)]) == 0
    assert len((out / "runs.txt").read_text().split()) == 6
    capsys.readouterr()

    path.write_text(path.read_text().replace("method: dpo", "method: ipo"))
    assert cli.main(["compare", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cell lr=0.1,seed=0" in err and "differs in train.method" in err
    assert len((out / "runs.txt").read_text().split()) == 6


def test_a_finished_cell_answers_for_its_data_files_contents(tmp_path, monkeypatch, capsys):
    """A data file edited after its cells finished (same path, same config): the rerun is refused
    in one line naming the file's key, where it kept results of the old contents; with the file as
    it was, nothing runs. A cell.json from before contents were recorded is taken as it is."""
    monkeypatch.setattr(compare_run, "cell_command", lambda d: [sys.executable, "-c", FAKE_CELL, str(d)])
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    path = write_config(tmp_path, USER.replace("/data/pairs.jsonl", str(data)).replace("0.5", "0.2"))
    out = tmp_path / "out"
    assert cli.main(["compare", str(path)]) == 0
    capsys.readouterr()
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "c"}\n')
    assert cli.main(["compare", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "differs in the contents of data (edited since)" in err
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    assert cli.main(["compare", str(path)]) == 0
    capsys.readouterr()
    assert len((out / "runs.txt").read_text().split()) == 4  # the four cells of the first run, none since
    saved = out / "cells" / "lr=0.1,seed=0" / "cell.json"
    record = json.loads(saved.read_text())
    del record["settings"]["data_contents"]
    saved.write_text(json.dumps(record))
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "d"}\n')
    assert cli.main(["compare", str(path)]) == 2  # the other cells still know their contents
    assert "cell lr=0.1,seed=0 " not in capsys.readouterr().err


def test_only_the_files_a_cell_reads_count_as_its_data(tmp_path, monkeypatch, capsys):
    """data: a folder with train.jsonl, test.jsonl and a README. Editing the README or the test
    split, or adding a notes file, changes nothing the cells read: the rerun keeps every cell (an
    unfinished one resumes, its folder kept). Editing train.jsonl refuses the finished cells. The
    data folder moved away: the finished cells are kept (their contents cannot be compared)."""
    monkeypatch.setattr(compare_run, "cell_command", lambda d: [sys.executable, "-c", FAKE_CELL, str(d)])
    data = tmp_path / "ds"
    data.mkdir()
    for name in ("train.jsonl", "test.jsonl"):
        (data / name).write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    (data / "README.md").write_text("about\n")
    path = write_config(tmp_path, USER.replace("/data/pairs.jsonl", str(data)).replace("0.5", "0.2"))
    out = tmp_path / "out"
    assert cli.main(["compare", str(path)]) == 0
    unfinished = out / "cells" / "lr=0.2,seed=1"
    (unfinished / "result.json").unlink()
    (unfinished / "partial").touch()
    (data / "README.md").write_text("about, edited\n")
    (data / "test.jsonl").write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    (data / "NOTES.md").write_text("notes\n")
    capsys.readouterr()
    assert cli.main(["compare", str(path)]) == 0
    assert "3 had finished earlier" in capsys.readouterr().out and (unfinished / "partial").exists()
    (data / "train.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "c"}\n')
    assert cli.main(["compare", str(path)]) == 2
    assert "differs in the contents of data (edited since)" in capsys.readouterr().err
    data.rename(tmp_path / "elsewhere")
    assert cli.main(["compare", str(path)]) == 0
    assert "4 cells finished earlier and are kept" in capsys.readouterr().err


def test_an_unfinished_cell_runs_again_and_one_of_changed_settings_starts_afresh(tmp_path):
    """A cell with cell.json but no result.json (interrupted) is run again; if its settings have
    changed since, its folder is cleared first."""
    plan = load_plan(write_config(tmp_path, USER.replace("0.5", "0.2")))
    cell = plan.cells[0]
    folder = plan.cell_dir(cell)
    folder.mkdir(parents=True)
    record = compare_run.cell_record(plan, cell)
    (folder / "cell.json").write_text(json.dumps(record))
    (folder / "partial").touch()
    outcome = compare_run.run_compare(plan, command=lambda d: [sys.executable, "-c", FAKE_CELL, str(d)])
    assert sorted(outcome.ran) == sorted(c.id for c in plan.cells) and (folder / "partial").exists()

    other = plan.cells[1]
    (plan.cell_dir(other) / "result.json").unlink()
    record = compare_run.cell_record(plan, other)
    record["settings"]["train"]["beta"] = 0.3
    (plan.cell_dir(other) / "cell.json").write_text(json.dumps(record))
    (plan.cell_dir(other) / "partial").touch()
    outcome = compare_run.run_compare(plan, command=lambda d: [sys.executable, "-c", FAKE_CELL, str(d)])
    assert outcome.ran == [other.id] and not (plan.cell_dir(other) / "partial").exists()


@pytest.mark.slow
def test_compare_on_the_arithmetic_testbed(tmp_path, capsys):
    """DPO and KTO for a few steps from the arithmetic SFT model, with the base model as it is and
    through best-of-2: every cell finishes, the report holds their rows, a decoding row has no KL,
    and a rerun runs nothing."""
    config = {"output_dir": str(tmp_path / "out"), "jobs": 2,
              "base": {"task": "arithmetic", "max_steps": 2, "batch_size": 4, "eval_every": 1,
                       "task_eval_prompts": 6, "feedback": {"prompts": 8}},
              "grid": {"method": ["dpo", "kto"]},
              "decoding": ["best-of-n --n 2 --scorer task:arithmetic"]}
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["compare", str(path)]) == 0
    assert "4 cells ran: 4 finished, 0 failed; 0 had finished earlier" in capsys.readouterr().out
    out = tmp_path / "out"
    for cell in ("method=dpo", "method=kto", "base,seed=0", "base+best-of-n_--n_2_--scorer_task_arithmetic,seed=0"):
        result = json.loads((out / "cells" / cell / "result.json").read_text())
        answers = (out / "cells" / cell / "answers.jsonl").read_text().splitlines()
        assert len(answers) == 6
        golds = [json.loads(line)["gold"] for line in answers]
        if "best-of-n" not in cell:  # the answers are the evaluation's sampled ones
            assert sum(golds) / 6 == pytest.approx(result["metrics"]["eval/gold/sampled"])
    dpo = json.loads((out / "cells" / "method=dpo" / "result.json").read_text())
    assert dpo["steps"] == 2 and dpo["metrics"]["eval/gold/kl"] != 0
    assert not (out / "cells" / "method=dpo" / "run" / "checkpoints").exists()
    assert (out / "data" / "pairs.jsonl").exists() and (out / "data" / "unpaired.jsonl").exists()
    md = (out / "report.md").read_text()
    for row in ("| base |", "| base + best-of-n --n 2 --scorer task:arithmetic | 1 |", "| dpo | 1 |", "| kto | 1 |"):
        assert row in md
    decoded = next(line for line in md.splitlines() if line.startswith("| base + best-of-n"))
    assert decoded.split(" | ")[5] == "–"  # no KL for a decoding row
    assert cli.main(["compare", str(path)]) == 0
    assert "0 cells ran: 0 finished, 0 failed; 4 had finished earlier" in capsys.readouterr().out


def test_the_readme_shows_the_example_config():
    """The README's config is examples/compare_arithmetic.yaml (comments aside), and it plans
    9 training runs and 6 evaluations of the base model (base and best-of-4, 3 seeds)."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    block = readme.split("The config (`examples/compare_arithmetic.yaml`):", 1)[1]
    block = block.split("```yaml\n", 1)[1].split("```", 1)[0]
    example = root / "examples" / "compare_arithmetic.yaml"
    assert yaml.safe_load(block) == yaml.safe_load(example.read_text())
    plan = load_plan(example)
    assert [c.kind for c in plan.cells].count("train") == 9 and len(plan.cells) == 15


def test_values_that_would_share_a_folder_are_told_apart(tmp_path):
    """Values that differ only in characters a folder name replaces ('a/b', 'a_b'), in letters
    outside ASCII or in case get a hash of the full value after their name; other cells keep
    theirs."""
    plan = load_plan(write_config(tmp_path, """
        base: {model: /models/m, data: /data/pairs.jsonl}
        grid: {run_name: [a/b, a_b, α, β, X, x, plain]}
        """))
    ids = [c.id for c in plan.cells]
    assert len(set(ids)) == 7 and ids[-1] == "run_name=plain"
    digest = {v: hashlib.sha256(f"run_name={v}".encode()).hexdigest()[:8] for v in ("a/b", "a_b", "α", "β", "X", "x")}
    assert ids[:6] == [f"run_name=a_b-{digest['a/b']}", f"run_name=a_b-{digest['a_b']}", f"run_name=-{digest['α']}",
                       f"run_name=-{digest['β']}", f"run_name=X-{digest['X']}", f"run_name=x-{digest['x']}"]


def test_a_bad_jobs_flag_names_the_flag_and_a_folder_is_not_a_config(tmp_path, capsys):
    path = write_config(tmp_path, TESTBED.format(base="epochs: 1", grid="method: [dpo]"))
    assert cli.main(["compare", str(path), "--jobs", "0"]) == 2
    err = capsys.readouterr().err
    assert "--jobs: cells run at once, a whole number >= 1, got 0" in err and str(path) not in err, err
    assert cli.main(["compare", str(tmp_path)]) == 2
    assert f"config file '{tmp_path}' is a folder" in capsys.readouterr().err
    assert cli.main(["compare", "/dev/null"]) == 2
    assert capsys.readouterr().err == ("alignlab: error: /dev/null: config file '/dev/null' is not a regular file; "
                                       "give the YAML file\n")
    assert not (tmp_path / "out").exists()
