"""Paths in a comparison's config are read from the config's folder, whatever the current folder:
output folders always, models and data when they exist there (a hub name or a task's prompts stay
as written); absolute paths stay; an empty path is a one-line error; the cells run in the config's
folder."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from alignlab import cli
from alignlab.compare import run as compare_run
from alignlab.compare.config import load_plan
from alignlab.compare.paths import source_path
from alignlab.errors import ConfigError


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """conf/ holds the config, pairs.jsonl and models/m/; the command runs in elsewhere/."""
    conf, elsewhere = tmp_path / "conf", tmp_path / "elsewhere"
    (conf / "models" / "m").mkdir(parents=True)
    (conf / "pairs.jsonl").write_text("")
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return conf, elsewhere


def _config(conf: Path, text: str) -> Path:
    path = conf / "compare.yaml"
    path.write_text(text)
    return path


def test_relative_paths_are_read_from_the_configs_folder(folders, tmp_path):
    conf, elsewhere = folders
    plan = load_plan(_config(conf, f"""
output_dir: out
base: {{model: models/m, data: pairs.jsonl, method: dpo, reference_model: gpt2, cache_dir: cache,
        logging_dir: ~/tb, eval_data: {tmp_path}/held-out.jsonl}}
grid:
  model: [models/m, org/name]
"""))
    assert plan.output_dir == conf / "out" and plan.config_dir == conf
    train = [c.settings["train"] for c in plan.cells]
    assert [t["model"] for t in train] == [str(conf / "models" / "m"), "org/name"]
    assert {t["data"] for t in train} == {str(conf / "pairs.jsonl")}
    assert {t["reference_model"] for t in train} == {"gpt2"}  # a hub name, left alone
    assert {t["cache_dir"] for t in train} == {str(conf / "cache")}
    assert {t["logging_dir"] for t in train} == {str(tmp_path / "home" / "tb")}
    assert {t["eval_data"] for t in train} == {f"{tmp_path}/held-out.jsonl"}  # absolute: as it is
    # cell ids and rows show the values as written, not where they resolve to
    assert [c.id for c in plan.cells] == ["model=models_m", "model=org_name"]
    assert plan.cells[0].group == "model=models/m"
    with pytest.raises(ConfigError, match=r"grid: cells model=models_m and model=._models_.._models_m are the same run"):
        load_plan(_config(conf, "base: {data: pairs.jsonl}\ngrid: {model: [models/m, ./models/../models/m]}\n"))

    default = load_plan(_config(conf, "base: {model: models/m, data: pairs.jsonl}\ngrid: {seed: [0]}\n"))
    assert default.output_dir == elsewhere / "runs" / "compare-compare"  # not in the config: the current folder


def test_a_hub_name_or_a_task_stays_and_a_path_that_is_nowhere_is_an_error(folders):
    conf, elsewhere = folders
    assert source_path("gpt2", "base.model", conf) == "gpt2"
    assert source_path("org/name", "base.model", conf) == "org/name"
    assert source_path("task:arithmetic", "base.data", conf) == "task:arithmetic"
    for missing in ("./m", "pairs.json", "models/other"):  # plainly paths: a dot, an extension, a folder of conf/
        with pytest.raises(ConfigError, match=rf"^base.data: '{missing}' not found in the config's folder {conf} "
                                              r"\(relative paths in a comparison's config are read from there\)$"):
            source_path(missing, "base.data", conf)
    (elsewhere / "mine.jsonl").write_text("")  # where a relative path was read from before
    with pytest.raises(ConfigError, match=r"^grid.data: 'mine.jsonl' is not in the config's folder .* but in the "
                                          r"current folder; write it as '../elsewhere/mine.jsonl' or as an absolute"):
        source_path("mine.jsonl", "grid.data", conf)


@pytest.mark.parametrize(("text", "message"), [
    ("output_dir: ''\nbase: {model: models/m, data: pairs.jsonl}\ngrid: {seed: [0]}\n",
     "output_dir: empty; give a folder (a relative one is read from the config's folder), or leave the key out for "
     "its default"),
    ("output_dir:\nbase: {model: models/m, data: pairs.jsonl}\ngrid: {seed: [0]}\n", "output_dir: empty"),
    ("output_dir: [a]\nbase: {model: models/m, data: pairs.jsonl}\ngrid: {seed: [0]}\n",
     "output_dir: a folder name, got ['a']"),
    ("base: {model: '', data: pairs.jsonl}\ngrid: {seed: [0]}\n",
     "base.model: empty; give a local path (a relative one is read from the config's folder) or a hub name"),
    ("base: {task: arithmetic, model: null}\ngrid: {method: [dpo]}\n", "base.model: empty"),
    ("base: {model: models/m, data: ' '}\ngrid: {seed: [0]}\n", "base.data: empty"),
    ("base: {model: models/m, data: pairs.jsonl, cache_dir: ''}\ngrid: {seed: [0]}\n", "base.cache_dir: empty"),
    ("base: {model: models/m}\ngrid: {data: [pairs.jsonl, '']}\n", "grid.data: empty"),
    ("base: {model: models/m, data: pairs.jsonl}\ngrid: {reference_model: ['']}\n", "grid.reference_model: empty"),
    ("base: {model: models/m, data: ../pairs.jsonl}\ngrid: {seed: [0]}\n", "base.data: '../pairs.jsonl' not found"),
])
def test_empty_or_missing_paths_are_one_line_errors(folders, capsys, text, message):
    conf, elsewhere = folders
    path = _config(conf, text)
    assert cli.main(["compare", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"alignlab: error: {path}: {message}"), err
    assert not list(conf.glob("out*")) and not (elsewhere / "runs").exists()


@pytest.mark.parametrize("output_dir", ["afile", "afile/out"])
def test_an_output_dir_that_is_or_lies_in_a_file_is_a_one_line_error(folders, capsys, output_dir):
    """Seen before anything runs, like training's output_dir: not a FileExistsError or
    NotADirectoryError traceback from making the folder."""
    conf, _ = folders
    (conf / "afile").write_text("mine\n")
    path = _config(conf, f"output_dir: {output_dir}\nbase: {{model: models/m, data: pairs.jsonl}}\ngrid: {{seed: [0]}}\n")
    assert cli.main(["compare", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == (f"alignlab: error: {path}: output_dir: cannot create '{conf / output_dir}': '{conf / 'afile'}' is "
                   "a file\n"), err
    assert (conf / "afile").read_text() == "mine\n"


# A cell that records the folder it runs in and reads the config's data by its relative name.
WHERE_CELL = r"""
import json, os, sys
from pathlib import Path
cell = Path(sys.argv[1])
result = {"status": "ok", "metrics": {}, "steps": 0, "seconds": 0.1, "cwd": os.getcwd(),
          "data": Path("pairs.jsonl").read_text()}
(cell / "result.json").write_text(json.dumps(result))
"""


def test_cells_run_in_the_configs_folder(folders):
    conf, _ = folders
    (conf / "pairs.jsonl").write_text("the config's pairs")
    plan = load_plan(_config(conf, "output_dir: out\nbase: {model: models/m, data: pairs.jsonl}\ngrid: {seed: [0]}\n"))
    compare_run.run_compare(plan, command=lambda d: [sys.executable, "-c", WHERE_CELL, str(d)])
    result = json.loads((conf / "out" / "cells" / "seed=0" / "result.json").read_text())
    assert result["cwd"] == os.fspath(conf) and result["data"] == "the config's pairs"


def test_a_scorer_that_is_not_there_is_an_error_before_any_cell_runs(tmp_path):
    """A reward-model folder missing for an online cell's reward or a decoding method's scorer, or
    a folder that is not a reward model: one line naming where, at load time.
    A reward model that is there, given relative to the config's folder, passes."""
    from alignlab.compare.config import load_plan
    from alignlab.errors import ConfigError

    def plan(body: str):
        path = tmp_path / "c.yaml"
        path.write_text(body)
        return load_plan(path)

    with pytest.raises(ConfigError, match=r"cell method=grpo: reward: scorer 'rm:nowhere': reward-model folder "
                                          r"'nowhere' not found"):
        plan("base: {task: arithmetic, reward: ['rm:nowhere']}\ngrid: {method: [grpo]}\n")
    with pytest.raises(ConfigError, match=r"decoding\[1\]: --scorer: scorer 'rm:gone': reward-model folder 'gone' not"):
        plan("base: {task: arithmetic}\ngrid: {method: [dpo]}\n"
             "decoding: ['best-of-n --n 2 --scorer task:arithmetic', 'best-of-n --n 2 --scorer rm:gone']\n")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ConfigError, match="'plain' is not a reward model"):
        plan("base: {task: arithmetic, reward: ['rm:plain']}\ngrid: {method: [grpo]}\n")
    assert plan("base: {task: arithmetic, reward: ['task:arithmetic:gold']}\ngrid: {method: [grpo]}\n").cells
