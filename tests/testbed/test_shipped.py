"""Shipped testbed models: written by ``ship`` as 16-bit weights with checksums, returned by
``task_model`` only when their files match and their recipe is today's, and compared with a
rebuild on this machine."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from alignlab.cache import machine_signature
from alignlab.errors import UserError
from alignlab.testbed import shipped
from alignlab.testbed.build import ModelRecipe, build_testbed_model, stage_recipe
from alignlab.testbed.tasks import task_names
from alignlab.train.checkpoint import sha256_file

TINY = ModelRecipe(task="arithmetic", hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                   pretrain_steps=3, sft_steps=2, pretrain_batch=4, sft_batch=4)


@pytest.fixture
def tiny_testbed(tmp_path, monkeypatch):
    """The tiny recipe stands in for the arithmetic SFT recipe; shipped models go to a folder of the test."""
    monkeypatch.setattr(shipped, "stage_recipe", lambda task, stage: TINY)
    cache, root = tmp_path / "cache", tmp_path / "shipped"
    built = build_testbed_model(TINY, cache, log=lambda msg: None)
    monkeypatch.setattr(shipped, "held_out_gold", lambda path, task, threads=1: {k: 0.5 for k in shipped.GOLD_KEYS})
    manifest = shipped.ship("arithmetic", "sft", built, root)
    return built, cache, root, manifest


def test_ship_writes_16_bit_weights_with_their_checksums(tiny_testbed):
    built, _, root, manifest = tiny_testbed
    path = shipped.shipped_dir("arithmetic", "sft", root)
    assert manifest["recipe"] == dataclasses.asdict(TINY) and manifest["dtype"] == "float16"
    assert manifest["built_on"] == machine_signature(TINY.threads)
    assert set(manifest["files"]) == {f.name for f in path.iterdir()} - {shipped.MANIFEST}
    for name, digest in manifest["files"].items():
        assert digest == sha256_file(path / name) and len(digest) == 64
    full, half = load_file(str(built / "model.safetensors")), load_file(str(path / "model.safetensors"))
    assert full.keys() == half.keys()
    for k in full:  # each weight is the 32-bit one rounded to the nearest float16
        assert full[k].dtype == torch.float32 and half[k].dtype == torch.float16
        assert torch.equal(half[k], full[k].half())
    assert json.loads((path / shipped.MANIFEST).read_text()) == manifest


def test_the_shipped_model_is_used_and_loads_in_32_bit(tiny_testbed):
    from alignlab.models import load_model

    _, cache, root, _ = tiny_testbed
    path = shipped.task_model("arithmetic", "sft", cache, root=root)
    assert path == shipped.shipped_dir("arithmetic", "sft", root)
    assert load_model(str(path)).model.embed_tokens.weight.dtype == torch.float32
    assert shipped.model_provenance(path)["shipped"] is True


def test_a_damaged_file_is_named_and_never_used(tiny_testbed):
    _, cache, root, _ = tiny_testbed
    weights = shipped.shipped_dir("arithmetic", "sft", root) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # same size, one byte changed
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"file 'model\.safetensors' does not match its sha256"):
        shipped.task_model("arithmetic", "sft", cache, root=root)


def test_a_missing_file_is_named(tiny_testbed):
    _, cache, root, _ = tiny_testbed
    (shipped.shipped_dir("arithmetic", "sft", root) / "tokenizer.json").unlink()
    with pytest.raises(UserError, match=r"file 'tokenizer\.json' is missing"):
        shipped.task_model("arithmetic", "sft", cache, root=root)


def test_a_changed_recipe_builds_its_own_model_instead(tiny_testbed, monkeypatch):
    built, cache, root, _ = tiny_testbed
    changed = dataclasses.replace(TINY, sft_steps=1)
    monkeypatch.setattr(shipped, "stage_recipe", lambda task, stage: changed)
    logs = []
    path = shipped.task_model("arithmetic", "sft", cache, log=logs.append, root=root)
    assert path != shipped.shipped_dir("arithmetic", "sft", root) and path != built
    assert json.loads((path.parent / "recipe.json").read_text())["recipe"] == dataclasses.asdict(changed)
    assert any("another recipe" in line for line in logs)


def test_a_rebuild_on_the_same_machine_is_identical(tiny_testbed):
    _, cache, root, _ = tiny_testbed
    report = shipped.rebuild("arithmetic", "sft", cache, log=lambda msg: None, progress=False, root=root)
    assert report["identical"] is True and report["max_weight_difference"] == 0.0
    assert report["same_recipe"] is True
    table = shipped.rebuild_table(report)
    assert "identical to the shipped model" in table and "+0.000" in table


def test_the_build_key_names_the_machine_and_the_thread_count(monkeypatch):
    base = TINY.key()
    assert dataclasses.replace(TINY, threads=2).key() != base
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    assert TINY.key() != base
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS")
    assert TINY.key() == base


def test_the_build_runs_with_the_recipes_thread_count(tmp_path, monkeypatch):
    """The build trains with the recipe's number of threads, whatever the caller's, and restores it."""
    import alignlab.testbed.build as build

    seen = []
    monkeypatch.setattr(build, "_stage", lambda *a, **k: seen.append(torch.get_num_threads()) or a[0])
    before = torch.get_num_threads()
    build_testbed_model(dataclasses.replace(TINY, threads=3), tmp_path, log=lambda msg: None)
    assert seen == [3, 3] and torch.get_num_threads() == before


@pytest.mark.parametrize("task", task_names())
@pytest.mark.parametrize("stage", ["sft", "pretrained"])
def test_every_task_ships_both_models_from_todays_recipe(task, stage):
    """The package holds each task's SFT and pretrained model, built from the recipe the code has
    now (a changed recipe must be shipped anew), and their files match their checksums."""
    path = shipped.shipped_dir(task, stage)
    manifest = shipped.read_manifest(path)
    assert manifest["recipe"] == dataclasses.asdict(stage_recipe(task, stage))
    assert (manifest["task"], manifest["stage"], manifest["dtype"]) == (task, stage, "float16")
    assert shipped.task_model(task, stage) == path
    assert (path / "model.safetensors").stat().st_size < 2_000_000
