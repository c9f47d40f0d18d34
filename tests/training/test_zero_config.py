"""``training/zero_config.py``: what a run asks DeepSpeed for, and the config handed to it: presets, a DeepSpeed JSON with
"auto" values, what ``accelerate launch`` exports from a DeepSpeed accelerate config, and every
conflict with the run's own settings refused in one line naming the file and key. No DeepSpeed
needed, except where a test says so."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from alignlab.cli import main
from alignlab.config import make_config
from alignlab.errors import ConfigError, UserError
from alignlab.training import zero, zero_config

ROOT = Path(__file__).resolve().parents[2]
ENV_KEYS = ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE", "ACCELERATE_DEEPSPEED_CONFIG_FILE",
            "ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "ACCELERATE_GRADIENT_CLIPPING")


@pytest.fixture(autouse=True)
def _no_launcher(monkeypatch):
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)


def _cfg(**kw):
    return make_config({"method": "dpo", "model": "m", "data": "d.jsonl", "output_dir": "o", "batch_size": 4,
                        "grad_accum": 2, "max_grad_norm": 0.5, **kw})


def _json(tmp_path, config: dict) -> str:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    return str(path)


@pytest.mark.parametrize("spec,stage", [("zero2", 2), ("zero3", 3)])
def test_presets_get_the_runs_batch_and_clipping(spec, stage):
    cfg = _cfg(deepspeed=spec)
    assert zero_config.requested(cfg) == spec
    config = zero_config.ds_config(spec, cfg, world_size=3, hidden_size=None)
    assert config["zero_optimization"] == {"stage": stage}
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"],
            config["train_batch_size"], config["gradient_clipping"]) == (4, 2, 24, 0.5)  # 4 × 2 × 3 processes
    assert config["zero_allow_untested_optimizer"] is True
    assert not {"optimizer", "scheduler", "fp16", "bf16"} & set(config)


def test_json_autos_filled_and_its_own_settings_kept(tmp_path):
    path = _json(tmp_path, {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
                            "gradient_accumulation_steps": 2, "gradient_clipping": "auto", "bf16": {"enabled": "auto"},
                            "zero_optimization": {"stage": 3, "overlap_comm": True, "reduce_bucket_size": "auto",
                                                  "stage3_prefetch_bucket_size": "auto",
                                                  "stage3_param_persistence_threshold": "auto"}})
    config = zero_config.ds_config(path, _cfg(deepspeed=path), world_size=2, hidden_size=64)
    assert config["train_batch_size"] == 16 and config["gradient_clipping"] == 0.5
    # the sizes accelerate derives from the width: 64², 0.9 × 64², 10 × 64
    assert config["zero_optimization"] == {"stage": 3, "overlap_comm": True, "reduce_bucket_size": 4096,
                                           "stage3_prefetch_bucket_size": 3686,
                                           "stage3_param_persistence_threshold": 640}
    assert "bf16" not in config


@pytest.mark.parametrize("content,message", [
    ({"gradient_accumulation_steps": 4, "zero_optimization": {"stage": 2}},
     "gradient_accumulation_steps is 4 and the run's grad_accum is 2; set it to auto or remove it"),
    ({"train_micro_batch_size_per_gpu": 1}, "train_micro_batch_size_per_gpu is 1 and the run's batch_size is 4"),
    ({"train_batch_size": 8}, "train_batch_size is 8 and the run's batch_size × grad_accum × processes is 16"),
    ({"gradient_clipping": 1.0}, "gradient_clipping is 1.0 and the run's max_grad_norm is 0.5"),
    ({"optimizer": {"type": "AdamW"}}, "remove its 'optimizer' section: the run brings its own AdamW"),
    ({"scheduler": {"type": "WarmupLR"}}, "remove its 'scheduler' section"),
    ({"bf16": {"enabled": True}}, "bf16.enabled is True; the run's precision is its dtype"),
    ({"fp16": {"enabled": True}}, "fp16.enabled is True"),
    ({"zero_optimization": {"stage": 1}}, "zero_optimization.stage is 1; alignlab runs ZeRO stage 2 or 3"),
    ({"zero_optimization": {"stage": 3, "sub_group_size": "auto"}}, "zero_optimization.sub_group_size is auto"),
])
def test_json_conflicts_name_the_file_and_key(tmp_path, content, message):
    path = _json(tmp_path, content)
    with pytest.raises(ConfigError) as e:
        zero_config.ds_config(path, _cfg(deepspeed=path), world_size=2, hidden_size=64)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)


def test_unreadable_json(tmp_path):
    with pytest.raises(ConfigError, match="deepspeed: cannot read '.*nope.json': No such file"):
        zero_config.ds_config(str(tmp_path / "nope.json"), _cfg(), 1, None)
    bad = tmp_path / "bad.json"
    bad.write_text("{stage: 2")
    with pytest.raises(ConfigError, match="deepspeed: '.*bad.json' is not valid JSON"):
        zero_config.ds_config(str(bad), _cfg(), 1, None)
    bad.write_text("[2]")
    with pytest.raises(ConfigError, match="holds no JSON object"):
        zero_config.ds_config(str(bad), _cfg(), 1, None)


def test_config_field_values():
    with pytest.raises(ConfigError, match="deepspeed: must be zero2, zero3 or a DeepSpeed config file"):
        _cfg(deepspeed="zero4")
    with pytest.raises(ConfigError, match="fsdp: DeepSpeed ZeRO shards the model already"):
        _cfg(deepspeed="zero2", fsdp=True)
    with pytest.raises(ConfigError, match="deepspeed: method 'ppo' trains a critic"):
        zero_config.requested(make_config({"method": "ppo", "model": "m", "data": "task:arithmetic", "output_dir": "o",
                                    "deepspeed": "zero2", "reward": ["fn:tests.training.online_rewards:digits"]}))


def test_accelerate_launch_exports_are_read(monkeypatch, tmp_path):
    """What ``accelerate launch --config_file examples/accelerate/zero3.yaml`` exports (its
    ``deepspeed_config`` as ACCELERATE_* variables) becomes the run's DeepSpeed config."""
    assert zero_config.requested(_cfg()) is None
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert zero_config.requested(_cfg()) == "accelerate"
    config = zero_config.ds_config("accelerate", _cfg(), world_size=2, hidden_size=None)
    assert config["zero_optimization"]["stage"] == 3
    assert (config["train_batch_size"], config["gradient_accumulation_steps"], config["gradient_clipping"]) == (16, 2, 0.5)
    # an accelerate config whose gradient_accumulation_steps is not the run's
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "8")
    with pytest.raises(ConfigError, match="the accelerate config: gradient_accumulation_steps is 8 and the run's grad_accum is 2"):
        zero_config.ds_config("accelerate", _cfg(), world_size=2, hidden_size=None)
    # or one that points at a DeepSpeed JSON
    monkeypatch.delenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS")
    path = _json(tmp_path, {"zero_optimization": {"stage": 2}, "gradient_accumulation_steps": "auto"})
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", path)
    assert zero_config.ds_config("accelerate", _cfg(), world_size=1, hidden_size=None)["zero_optimization"]["stage"] == 2
    # asked for twice, or with fsdp
    with pytest.raises(ConfigError, match="asks for 'zero2' and was launched with a DeepSpeed accelerate config"):
        zero_config.requested(_cfg(deepspeed="zero2"))
    with pytest.raises(ConfigError, match="fsdp: DeepSpeed ZeRO shards the model already"):
        zero_config.requested(_cfg(fsdp=True))


@pytest.mark.parametrize("yaml_name,stage", [("zero2.yaml", "2"), ("zero3.yaml", "3")])
def test_shipped_accelerate_configs(yaml_name, stage):
    import yaml

    config = yaml.safe_load((ROOT / "examples" / "accelerate" / yaml_name).read_text())
    assert config["distributed_type"] == "DEEPSPEED" and config["mixed_precision"] == "no"
    assert str(config["deepspeed_config"]["zero_stage"]) == stage
    # batch sizes, accumulation and clipping are left to the run
    assert not {"gradient_accumulation_steps", "gradient_clipping"} & set(config["deepspeed_config"])


def test_missing_deepspeed_is_one_line(monkeypatch, tmp_path, tiny_model_dir, pairs_file, capsys):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # as if not installed: its import fails
    with pytest.raises(UserError, match=r"DeepSpeed is not installed .*pip install 'alignlab\[deepspeed\]'"):
        zero.import_deepspeed()
    code = main(["train", "--method", "dpo", "--model", str(tiny_model_dir), "--data", str(pairs_file),
                 "--output-dir", str(tmp_path / "out"), "--deepspeed", "zero3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install 'alignlab[deepspeed]'" in err[0], err
    assert not (tmp_path / "out").exists()


def test_deepspeed_start_up_log_stays_off_stdout():
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("DeepSpeed is not installed")
    code = "from alignlab.training import zero; zero.import_deepspeed(); print('only this')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "only this\n"


def test_resume_across_deepspeed_and_not_is_refused(tmp_path):
    plain = __import__("torch").nn.Linear(2, 2)
    zero.check_resume(tmp_path, {"step": 2}, plain)  # written without DeepSpeed, resumed without
    with pytest.raises(ConfigError, match="written with DeepSpeed ZeRO-3 and this run trains without DeepSpeed"):
        zero.check_resume(tmp_path, {"step": 2, "deepspeed": 3}, plain)
