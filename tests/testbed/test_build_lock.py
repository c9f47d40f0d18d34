"""Two processes that build the same testbed model at once build it once: the second waits on the
entry's lock, then finds the first one's model."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from alignlab.testbed.build import ModelRecipe, build_testbed_model, model_cache_path

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TINY = ModelRecipe(task="sentiment", hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                   pretrain_steps=2, sft_steps=2, pretrain_batch=4, sft_batch=4)

BUILDER = """
import json, sys
from alignlab.testbed.build import ModelRecipe, build_testbed_model
recipe = ModelRecipe(**json.loads(sys.argv[2]))
print("done", build_testbed_model(recipe, sys.argv[1], log=lambda msg: print(msg, flush=True)), flush=True)
"""


def _start(cache: Path) -> tuple[subprocess.Popen, list[str], threading.Thread]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", BUILDER, str(cache), json.dumps(dataclasses.asdict(TINY))],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    return proc, lines, reader


def test_two_concurrent_builders_build_once(tmp_path):
    """The test holds the entry's lock until both builders wait on it, so that they really run at
    the same time; then exactly one of them builds, and both return the same complete model."""
    cache = tmp_path / "cache"
    final = model_cache_path(TINY, cache)
    final.parent.parent.mkdir(parents=True)
    with open(final.parent.parent / f"{final.parent.name}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        builders = [_start(cache), _start(cache)]
        deadline = time.monotonic() + 240
        while not all(any(x.startswith("waiting for another process") for x in lines) for _, lines, _ in builders):
            assert all(p.poll() is None for p, _, _ in builders), [lines for _, lines, _ in builders]
            assert time.monotonic() < deadline, [lines for _, lines, _ in builders]
            time.sleep(0.05)
    for proc, lines, reader in builders:
        rc = proc.wait(timeout=300)
        reader.join(timeout=60)
        assert rc == 0, lines
    logs = [lines for _, lines, _ in builders]
    assert sum(any(x.startswith("building the tiny") for x in lines) for lines in logs) == 1, logs
    assert [lines[-1].strip() for lines in logs] == [f"done {final}"] * 2, logs
    assert (final / "config.json").exists()
    entries = sorted(p.name for p in final.parent.parent.iterdir())
    assert entries == [final.parent.name, f"{final.parent.name}.lock"]  # no second entry, no build left over
    assert json.loads((final.parent / "recipe.json").read_text())["recipe"] == dataclasses.asdict(TINY)


def test_a_cached_model_is_returned_without_building(tmp_path):
    logs: list[str] = []
    first = build_testbed_model(TINY, tmp_path, log=logs.append)
    assert any(x.startswith("building the tiny") for x in logs)
    logs.clear()
    assert build_testbed_model(TINY, tmp_path, log=logs.append) == first and logs == []


def test_a_recipe_without_sft_is_the_pretrained_stage(tmp_path):
    """No SFT steps: the build stops after pretraining and caches the model as ``pretrained`` (not
    ``sft``) under its own key; the same recipe with SFT steps fine-tunes it further. The task's
    pretrained recipe is the SFT recipe's model with 600 pretraining steps and no SFT."""
    import torch

    from alignlab.models import load_model
    from alignlab.testbed.build import default_recipe, pretrained_recipe, stage_recipe

    recipe = dataclasses.replace(TINY, sft_steps=0)
    logs: list[str] = []
    path = build_testbed_model(recipe, tmp_path, log=logs.append)
    assert path == model_cache_path(recipe, tmp_path) and path.name == "pretrained"
    assert path.parent.name == f"sentiment-{recipe.key()}" and recipe.key() != TINY.key()
    assert any(x.startswith("building the tiny pretrained sentiment model") for x in logs)
    assert not any("supervised fine-tuning" in x for x in logs)
    with_sft = build_testbed_model(TINY, tmp_path, log=logs.append)
    assert with_sft.name == "sft"
    a, b = load_model(str(path)), load_model(str(with_sft))
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))

    sentiment = pretrained_recipe("sentiment")
    assert (sentiment.pretrain_steps, sentiment.sft_steps) == (600, 0)
    assert dataclasses.replace(sentiment, pretrain_steps=150, sft_steps=100) == default_recipe("sentiment")
    assert stage_recipe("sentiment", "pretrained") == sentiment and stage_recipe("sentiment", "sft") == \
        default_recipe("sentiment")
    with pytest.raises(Exception, match="stage must be one of sft, pretrained, got 'rl'"):
        stage_recipe("sentiment", "rl")
