"""The README stays true: its set-up commands, its Python example, its field table, and ruff."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from alignlab.config import TrainConfig, fields_markdown

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _code_blocks() -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", README, flags=re.S)


def test_readme_opens_with_the_two_setup_commands():
    main_job, tests = _code_blocks()[:2]
    assert "pip install -e" in main_job and main_job.rstrip().endswith("alignlab demo")
    assert "pip install -e" in tests and tests.strip().endswith("pytest")
    assert (ROOT / "examples" / "dpo_tiny.yaml").exists()


def _python_api_example() -> str:
    found = re.findall(r"^Python API[^\n]*\n\n```python\n(.*?)```", README, flags=re.S | re.M)
    assert len(found) == 1, "the README should hold one Python API example"
    return found[0]


def test_readme_python_example_runs_on_its_own(tmp_path):
    """The README's Python API example, exactly as written, in an empty directory: it makes its own
    model and data, trains, and prints the model directory and two accuracies from its Summary."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _python_api_example()], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    # the example prints one line, last (an installed library may log a line of its own before it)
    model_dir, train_accuracy, eval_accuracy = proc.stdout.strip().splitlines()[-1].split()
    assert (tmp_path / model_dir / "model.safetensors").is_file()
    saved = json.loads((tmp_path / "runs" / "api" / "summary.json").read_text())
    assert saved["steps"] == 8
    assert float(train_accuracy) == saved["train_metrics"]["rewards/accuracies"]
    assert float(eval_accuracy) == saved["eval_metrics"]["eval/rewards/accuracies"]


def test_readme_lists_every_config_field():
    assert fields_markdown() in README, "regenerate the README's field table with fields_markdown()"
    for f in dataclasses.fields(TrainConfig):
        if not f.metadata.get("internal"):
            assert f"| `{f.name}` |" in README, f.name


def test_readme_lists_every_method():
    from alignlab.cli import methods_markdown
    from alignlab.losses import REGISTRY

    assert methods_markdown() in README, "regenerate the README's methods table with alignlab.cli.methods_markdown()"
    for name in REGISTRY:
        assert f"| `{name}` |" in README, name


def test_ruff_is_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
