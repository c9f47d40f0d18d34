"""Shipped testbed models: written by ``ship`` as 16-bit weights with checksums, returned by
``task_model`` only when their files match and they were built from today's recipe, build
procedure and task options, and compared with a rebuild on this machine."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import stat

import pytest
import torch
from safetensors.torch import load_file

import alignlab.testbed.build as build
from alignlab.cache import machine_signature
from alignlab.cli import main
from alignlab.errors import UserError
from alignlab.tasks import ArithmeticTask, task_names
from alignlab.testbed import shipped
from alignlab.testbed.build import ModelRecipe, build_testbed_model, stage_recipe

TINY = ModelRecipe(task="arithmetic", hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                   pretrain_steps=3, sft_steps=2, pretrain_batch=4, sft_batch=4)


@pytest.fixture
def tiny_testbed(tmp_path, monkeypatch):
    """The tiny recipe stands in for the arithmetic SFT recipe; shipped models go to a folder of the test."""
    monkeypatch.setattr(shipped, "stage_recipe", lambda task, stage: TINY)
    cache, root = tmp_path / "cache", tmp_path / "shipped"
    built = build_testbed_model(TINY, cache, log=lambda msg: None)
    monkeypatch.setattr(shipped, "held_out_gold", lambda path, task: {k: 0.5 for k in shipped.GOLD_KEYS})
    manifest = shipped.ship("arithmetic", "sft", built, root)
    return built, cache, root, manifest


def rewrite_manifest(root, change) -> None:
    path = shipped.shipped_dir("arithmetic", "sft", root) / shipped.MANIFEST
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def test_ship_writes_16_bit_weights_with_their_checksums(tiny_testbed):
    built, _, root, manifest = tiny_testbed
    path = shipped.shipped_dir("arithmetic", "sft", root)
    assert manifest["recipe"] == dataclasses.asdict(TINY) and manifest["dtype"] == "float16"
    assert manifest["recipe_version"] == build.RECIPE_VERSION
    assert manifest["task_options"] == {"max_operand": 49, "partial_credit": False, "sloppy_rate": 0.4,
                                        "num_eval": 200}  # ArithmeticTask's defaults
    assert manifest["built_on"] == machine_signature(TINY.threads)
    assert set(manifest["files"]) == {f.name for f in path.iterdir()} - {shipped.MANIFEST}
    for name, digest in manifest["files"].items():
        assert digest == hashlib.sha256((path / name).read_bytes()).hexdigest()
    for f in path.iterdir():  # readable by everyone, as the package's other files
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f.name
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


@pytest.mark.parametrize("change,message", [
    # a file left out of the list is not checked, so it cannot be trusted
    (lambda m: {**m, "files": {k: v for k, v in m["files"].items() if k != "model.safetensors"}},
     r"file 'model\.safetensors' is not listed in testbed\.json"),
    (lambda m: {**m, "files": {}}, r"file '[a-z_.]+' is not listed"),
    (lambda m: [], r"testbed\.json is not a testbed manifest"),
    (lambda m: {k: v for k, v in m.items() if k != "recipe"}, r"testbed\.json is not a testbed manifest"),
])
def test_a_manifest_that_does_not_vouch_for_every_file_is_refused(tiny_testbed, change, message):
    _, cache, root, _ = tiny_testbed
    rewrite_manifest(root, change)
    with pytest.raises(UserError, match=message):
        shipped.task_model("arithmetic", "sft", cache, root=root)


def test_an_unlisted_extra_file_is_refused(tiny_testbed):
    _, cache, root, _ = tiny_testbed
    (shipped.shipped_dir("arithmetic", "sft", root) / "extra.bin").write_bytes(b"\0")
    with pytest.raises(UserError, match=r"file 'extra\.bin' is not listed"):
        shipped.task_model("arithmetic", "sft", cache, root=root)


def test_a_folder_without_its_manifest_is_refused_not_rebuilt(tiny_testbed):
    _, cache, root, _ = tiny_testbed
    (shipped.shipped_dir("arithmetic", "sft", root) / shipped.MANIFEST).unlink()
    with pytest.raises(UserError, match=r"testbed\.json is missing; reinstall alignlab"):
        shipped.task_model("arithmetic", "sft", cache, root=root)


def test_no_shipped_model_builds_one_and_says_so(tiny_testbed, tmp_path):
    built, cache, _, _ = tiny_testbed
    logs = []
    assert shipped.task_model("arithmetic", "sft", cache, log=logs.append, root=tmp_path / "empty") == built
    assert logs == ["alignlab ships no arithmetic sft model; using this machine's build of its recipe"]


@pytest.mark.parametrize("what", ["recipe", "build procedure", "task options"])
def test_a_model_from_another_recipe_procedure_or_task_is_not_used(what, tiny_testbed, monkeypatch):
    """Each part of what makes the model (the recipe, the build procedure's version, the task's
    options) changed alone: the shipped model no longer stands for it, and today's is built."""
    built, cache, root, _ = tiny_testbed
    if what == "recipe":
        monkeypatch.setattr(shipped, "stage_recipe", lambda task, stage: dataclasses.replace(TINY, sft_steps=1))
    elif what == "build procedure":
        monkeypatch.setattr(build, "RECIPE_VERSION", build.RECIPE_VERSION + 1)
    else:
        monkeypatch.setattr(ArithmeticTask, "options", lambda self: {"max_operand": 49, "partial_credit": False,
                                                                      "sloppy_rate": 0.1, "num_eval": 200})
    logs = []
    path = shipped.task_model("arithmetic", "sft", cache, log=logs.append, root=root)
    assert path != shipped.shipped_dir("arithmetic", "sft", root) and path != built
    assert any("built from another recipe, build procedure or task options" in line for line in logs)


def test_a_rebuild_on_the_same_machine_is_identical(tiny_testbed, tmp_path):
    """A build from scratch, into a cache of its own, gives the shipped weights bit for bit."""
    _, _, root, _ = tiny_testbed
    logs = []
    report = shipped.rebuild("arithmetic", "sft", tmp_path / "fresh", log=logs.append, progress=False, root=root)
    assert any(line.startswith("building the tiny SFT arithmetic model") for line in logs)
    assert report["built"].startswith(str(tmp_path / "fresh"))
    assert report["identical"] is True and report["max_weight_difference"] == 0.0
    assert report["same_recipe"] is True
    table = shipped.rebuild_table(report)
    assert "identical to the shipped model" in table and "+0.000" in table


def test_shipping_refuses_an_installed_copy(monkeypatch, tmp_path):
    """The package's models folder of an installed copy (no pyproject.toml two levels up) is no
    place to ship into: refused before any build."""
    installed = tmp_path / "site-packages" / "alignlab" / "testbed" / "models"
    installed.mkdir(parents=True)
    monkeypatch.setattr(shipped, "SHIPPED", installed)
    with pytest.raises(UserError, match="source checkout of alignlab"):
        shipped.check_shippable()
    assert main(["testbed", "build", "--ship", "--task", "arithmetic"]) == 2


def test_the_build_key_names_the_machine_and_the_thread_count(monkeypatch):
    for name in ("MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "MKL_DEBUG_CPU_TYPE", "ONEDNN_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    base = TINY.key()
    assert dataclasses.replace(TINY, threads=2).key() != base
    for name, value in (("MKL_ENABLE_INSTRUCTIONS", "AVX2"), ("MKL_CBWR", "COMPATIBLE")):
        monkeypatch.setenv(name, value)
        assert TINY.key() != base
        monkeypatch.delenv(name)
    assert TINY.key() == base


def test_the_build_runs_with_the_recipes_thread_count(tmp_path, monkeypatch):
    """The build trains with the recipe's number of threads, whatever the caller's, and restores it."""
    seen = []
    monkeypatch.setattr(build, "_stage", lambda *a, **k: seen.append(torch.get_num_threads()) or a[0])
    before = torch.get_num_threads()
    build_testbed_model(dataclasses.replace(TINY, threads=3), tmp_path, log=lambda msg: None)
    assert seen == [3, 3] and torch.get_num_threads() == before


def test_testbed_list_shows_the_chosen_models(capsys):
    assert main(["testbed", "list", "--task", "arithmetic", "--stage", "sft"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("arithmetic   sft ") and "pretrained" not in out and "sentiment" not in out
    assert "files match their sha256" in out
    assert main(["testbed", "list", "--ship"]) == 2
    assert "options of build" in capsys.readouterr().err


def test_testbed_build_checks_its_json_path_before_building(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(shipped, "rebuild", lambda *a, **k: pytest.fail("built before checking --json"))
    assert main(["testbed", "build", "--task", "arithmetic", "--json", str(tmp_path / "no" / "r.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("task", task_names())
@pytest.mark.parametrize("stage", ["sft", "pretrained"])
def test_every_task_ships_both_models_from_todays_recipe(task, stage):
    """The package holds each task's SFT and pretrained model, built from the recipe, build
    procedure and task options the code has now (a change must be shipped anew), and their files
    match their checksums."""
    path = shipped.shipped_dir(task, stage)
    manifest = shipped.read_manifest(path)
    assert manifest["recipe"] == dataclasses.asdict(stage_recipe(task, stage))
    assert manifest["recipe_version"] == build.RECIPE_VERSION
    assert manifest["task_options"] == stage_recipe(task, stage).identity()["task_options"]
    assert (manifest["task"], manifest["stage"], manifest["dtype"]) == (task, stage, "float16")
    assert shipped.task_model(task, stage) == path
    assert (path / "model.safetensors").stat().st_size < 2_000_000
