"""TrainConfig's sections: a key is given flat, by its section or dotted, and means the same;
flags override a file's key however either is spelled; run.yaml is sectioned and runs written
before (flat run.yaml) still resume; errors name the key, and the file it came from."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from alignlab import cli
from alignlab.config import (
    TrainConfig,
    bool_keys,
    config_differences,
    flat_config,
    load_config,
    make_config,
    sections,
)
from alignlab.errors import ConfigError
from alignlab.losses import REGISTRY

BASE = {"model": "m", "data": "d"}


def test_field_names_are_unique_and_no_section_is_named_like_a_field():
    """What makes flat keys unambiguous: every field name once, across the top level and the
    sections; no section named like a field or like a method hyperparameter."""
    names = [f.name for f in dataclasses.fields(TrainConfig) if not f.metadata.get("section")]
    for s in sections():
        names += [f.name for f in dataclasses.fields(s.cls)]
    assert len(names) == len(set(names))
    hyper = {f.name for spec in REGISTRY.values() for f in dataclasses.fields(spec.params)}
    assert not hyper & set(names)
    assert not {s.name for s in sections()} & (set(names) | hyper)
    assert {s.name for s in sections()} == {"dataset", "optim", "checkpoint", "adapter", "eval", "rollout", "iterate",
                                          "tracking"}


@pytest.mark.parametrize("raw", [
    {**BASE, "lr": 1e-4, "lora": True, "columns": {"prompt": "q"}, "max_length": 64, "eval_every": 3},
    {**BASE, "optim": {"lr": 1e-4}, "adapter": {"lora": True}, "dataset": {"columns": {"prompt": "q"},
                                                                          "max_length": 64}, "eval": {"eval_every": 3}},
    {**BASE, "optim.lr": "1e-4", "adapter.lora": "true", "dataset.columns.prompt": "q", "dataset.max_length": "64",
     "eval.eval_every": "3"},
    {**BASE, "optim": {"lr": 1e-4}, "lora": True, "columns.prompt": "q", "dataset": {"max_length": 64},
     "eval.eval_every": 3},
])
def test_flat_by_section_and_dotted_keys_mean_the_same(raw):
    cfg = make_config(raw)
    assert cfg.optim.lr == 1e-4 and cfg.adapter.lora is True and cfg.dataset.columns == {"prompt": "q"}
    assert cfg.dataset.max_length == 64 and cfg.eval.eval_every == 3
    assert cfg == make_config({**BASE, "lr": 1e-4, "lora": True, "columns": {"prompt": "q"}, "max_length": 64,
                               "eval_every": 3})


def test_a_flag_overrides_the_files_key_however_either_is_spelled(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**BASE, "optim": {"lr": 0.1, "batch_size": 4}, "max_length": 64,
                                    "dataset": {"columns": {"prompt": "q"}}}))
    cfg = load_config(path, {"lr": "0.2", "dataset.max_length": "32", "columns.chosen": "good"})
    assert cfg.optim.lr == 0.2 and cfg.optim.batch_size == 4 and cfg.dataset.max_length == 32
    assert cfg.dataset.columns == {"prompt": "q", "chosen": "good"}


@pytest.mark.parametrize("raw,message", [
    ({"lr": 0.1, "optim": {"lr": 0.2}}, "lr: given twice, as 'lr' and as 'optim.lr'"),
    ({"dataset": "pairs.jsonl"}, "dataset: is a section and takes a mapping of its keys"),
    ({"dataset": "pairs.jsonl"}, "did you mean 'data'?"),
    ({"optim": {"columns": {"prompt": "q"}}}, "optim.columns: not a key of section 'optim'; columns is in section "
                                              "'dataset'"),
    ({"optim": {"seed": 1}}, "optim.seed: not a key of section 'optim'; seed is a top-level key"),
    ({"optim": {"lrr": 1}}, "optim.lrr: unknown key for section 'optim'; did you mean 'lr'?"),
    ({"optim.beta": 0.1}, "optim.beta: not a key of section 'optim'; method hyperparameters are top-level keys"),
    ({"optm.lr": 0.1}, "optm: unknown key for method 'dpo'; did you mean 'optim'?"),
    ({"optim": {"lr": -1}}, "lr: must be > 0, got -1"),
    ({"adapter": {"lora_r": 0}}, "lora_r: must be >= 1, got 0"),
    ({"seed": -1}, "seed: must be in [0, 2**63), got -1"),
    ({"seed": 2**63}, "seed: must be in [0, 2**63), got 9223372036854775808"),
])
def test_section_mistakes_are_named(raw, message):
    with pytest.raises(ConfigError) as e:
        make_config({**BASE, **raw})
    assert message in str(e.value)


def test_a_bad_key_inside_a_files_section_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: m\ndata: d\noptim:\n  lr: -1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: lr: must be > 0, got -1"):
        load_config(path)
    path.write_text("model: m\ndata: d\noptim:\n  batch_sise: 4\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: optim\.batch_sise: unknown key for section 'optim'; did you "
                                          r"mean 'batch_size'\?"):
        load_config(path)
    path.write_text("model: m\ndata: d\noptim:\n  lr: 0.1\n")
    with pytest.raises(ConfigError) as e:  # the flag's value is at fault, not the file's
        load_config(path, {"lr": "-1"})
    assert str(e.value) == "lr: must be > 0, got -1.0"


def test_to_dict_is_sectioned_and_reads_back():
    cfg = make_config({**BASE, "method": "simpo", "lr": 1e-4, "lora": True, "beta": 3.0})
    saved = cfg.to_dict()
    assert saved["method"] == "simpo" and saved["beta"] == 3.0
    assert saved["optim"]["lr"] == 1e-4 and saved["adapter"]["lora"] is True and "lr" not in saved
    assert make_config(yaml.safe_load(yaml.safe_dump(saved))) == cfg
    assert make_config(flat_config(saved)) == cfg  # the flat form of earlier versions reads the same


def test_config_differences_compare_flat_and_sectioned_configs():
    cfg = make_config({**BASE, "lr": 1e-4, "save_every": 5})
    old = flat_config(cfg.to_dict())  # what a run.yaml written before the sections holds
    assert "optim" not in old and old["lr"] == 1e-4
    assert config_differences(old, cfg.to_dict()) == []
    assert config_differences({**old, "lr": 0.5, "save_every": 1}, cfg.to_dict()) == ["lr"]  # save_every may differ
    assert config_differences(cfg.to_dict(), {**old, "batch_size": 3}) == ["batch_size"]


def test_config_differences_read_a_folder_however_it_is_written():
    """The output_dir is where the run was found; a source path written another way from the same
    folder is the same path; another path, or the same name in another folder, is not."""
    a = {**BASE, "output_dir": "runs/x", "model": "models/m", "data": "d/pairs.jsonl"}
    b = {**BASE, "output_dir": "/elsewhere/x/", "model": "./models/m/", "data": "d//pairs.jsonl"}
    assert config_differences(a, b) == []
    assert config_differences(a, {**b, "model": "models/m2", "data": "e/pairs.jsonl"}) == ["data", "model"]
    assert config_differences({**a, "method": "dpo"}, {**a, "method": "./dpo"}) == ["method"]  # not a path key


def test_a_run_with_a_flat_run_yaml_resumes(tmp_path, tiny_model_dir, pairs_file):
    """A run written before the sections (its run.yaml flat) resumes; one with another lr does not."""
    import shutil

    from alignlab import train
    from alignlab.training.checkpoint import list_checkpoints

    cfg = {**BASE, "model": str(tiny_model_dir), "data": str(pairs_file), "output_dir": str(tmp_path / "r"),
           "max_steps": 2, "batch_size": 4, "save_every": 1, "keep_checkpoints": 0, "max_length": 64,
           "progress": False}
    train(cfg)
    run_yaml = tmp_path / "r" / "run.yaml"
    saved = yaml.safe_load(run_yaml.read_text())
    assert saved["optim"]["max_steps"] == 2  # written by section
    run_yaml.write_text(yaml.safe_dump(flat_config(saved), sort_keys=False))
    newest = list_checkpoints(tmp_path / "r" / "checkpoints")[0]
    assert newest.name.endswith("2")
    shutil.rmtree(newest)  # as if stopped after step 1
    with pytest.raises(ConfigError, match="differs in lr"):
        train({**cfg, "lr": 0.5, "resume": True})
    assert train({**cfg, "resume": True}).steps == 2


def test_a_field_of_a_section_read_flat_says_where_it_is():
    cfg = make_config(BASE)
    with pytest.raises(AttributeError, match=r"cfg\.optim\.lr"):
        cfg.lr  # noqa: B018
    assert not hasattr(cfg, "no_such_field")


def test_python_callers_may_give_sections_as_dicts():
    cfg = TrainConfig(model="m", data="d", optim={"lr": 1e-4}, method_params={"beta": 0.2})
    assert cfg.optim.lr == 1e-4 and cfg.method_params.beta == 0.2
    with pytest.raises(ConfigError, match="section 'optim'"):
        TrainConfig(model="m", data="d", optim={"lrr": 1e-4})


def test_flags_by_section(capsys, tmp_path):
    """Dotted flags, dashes in them, and boolean flags given bare by their section."""
    assert {"lora", "adapter.lora", "packing", "dataset.packing"} <= bool_keys()
    config, over, _ = cli._parse_flags(["--adapter.lora", "--optim.max-steps", "3", "--dataset.columns.prompt", "q"],
                                       frozenset(bool_keys()))
    cfg = load_config(None, {**BASE, **cli._bare_flags_to_true(over)})
    assert cfg.adapter.lora is True and cfg.optim.max_steps == 3 and cfg.dataset.columns == {"prompt": "q"}
    code = cli.main(["train", "--model", "m", "--data", "d", "--optim"])
    assert code == 2 and "--optim needs a value" in capsys.readouterr().err
    code = cli.main(["train", "--model", "m", "--data", "d", "--output-dir", str(tmp_path), "--optim.lr", "-1"])
    assert code == 2 and capsys.readouterr().err == "alignlab: error: lr: must be > 0, got -1.0\n"


def test_the_example_configs_read_the_same_flat_and_by_section():
    """examples/dpo_tiny.yaml is flat, examples/sft_tiny.yaml by section; both load, and the
    sectioned one means what its flat form means."""
    from pathlib import Path

    from alignlab.config import read_yaml

    examples = Path(__file__).resolve().parents[2] / "examples"
    assert load_config(examples / "dpo_tiny.yaml").optim.lr == 2e-3
    sectioned = read_yaml(examples / "sft_tiny.yaml")
    assert {"optim", "eval", "dataset", "checkpoint"} <= set(sectioned)
    cfg = load_config(examples / "sft_tiny.yaml")
    assert cfg == make_config(flat_config(sectioned))
    assert (cfg.method, cfg.optim.epochs, cfg.eval.eval_fraction, cfg.dataset.max_length) == ("sft", 3.0, 0.1, 256)


def test_a_mapping_after_dotted_keys_into_it_keeps_both(tmp_path):
    """YAML ``columns.prompt: q`` then ``columns: {chosen: c}``: both mappings are kept, in either order."""
    for lines in (["columns.prompt: q", "columns: {chosen: c}"], ["columns: {chosen: c}", "columns.prompt: q"]):
        path = tmp_path / "c.yaml"
        path.write_text("model: m\ndata: d\n" + "\n".join(lines) + "\n")
        assert load_config(path).dataset.columns == {"prompt": "q", "chosen": "c"}
