"""Edge cases of a run: output directories, finished runs, dropout, bf16, numeric faults,
evaluation logging, and input that must give a clear error."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from alignlab import cli, train
from alignlab.config import make_config
from alignlab.errors import ConfigError, Interrupted, UserError
from alignlab.models import TinyModelConfig, save_tiny_model
from alignlab.training.forward import preference
from alignlab.training.interrupt import StopRequest
from alignlab.training.loop import NumericError
from tests.conftest import DAMAGED_TENSOR, DAMAGED_VALUES
from tests.training.helpers import base_config, weights


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_eval_is_logged_even_off_the_log_interval(tmp_path, tiny_model_dir, pairs_file):
    train(base_config(tiny_model_dir, pairs_file, tmp_path / "r", max_steps=6, batch_size=4,
                      eval_every=3, log_every=2, eval_fraction=0.25))
    lines = _lines(tmp_path / "r" / "metrics.jsonl")
    assert [x["step"] for x in lines if "loss" in x] == [2, 3, 4, 6]
    assert "eval/loss" in [x for x in lines if x["step"] == 3][0]


def test_epoch_metric_counts_steps_not_repeated_examples(tmp_path, tiny_model_dir, pairs_file):
    """16 examples, global batch 6: 3 steps per epoch (the third repeats 2 examples)."""
    train(base_config(tiny_model_dir, pairs_file, tmp_path / "r", max_steps=4, batch_size=6))
    assert [x["epoch"] for x in _lines(tmp_path / "r" / "metrics.jsonl")] == pytest.approx([1 / 3, 2 / 3, 1, 4 / 3])


def test_resuming_a_finished_run_changes_nothing(tmp_path, tiny_model_dir, pairs_file):
    cfg = base_config(tiny_model_dir, pairs_file, tmp_path / "r", max_steps=2, batch_size=4, eval_fraction=0.25)
    first = train(cfg)
    before = (tmp_path / "r" / "metrics.jsonl").read_text()
    again = train({**cfg, "resume": True})
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == before
    assert again.train_metrics["loss"] == first.train_metrics["loss"]
    assert again.eval_metrics == pytest.approx(first.eval_metrics)


def test_a_failed_start_does_not_block_the_retry(tmp_path, tiny_model_dir, pairs_file):
    cfg = base_config(tiny_model_dir, pairs_file, tmp_path / "r", max_steps=1, batch_size=4, lora=True)
    with pytest.raises(UserError, match="LoRA"):
        train({**cfg, "lora_target_modules": ["no_such_module"]})
    assert not (tmp_path / "r" / "run.yaml").exists()
    assert train(cfg).steps == 1


def test_overwrite_keeps_a_model_that_lives_in_the_output_dir(tmp_path, tiny_model_dir, pairs_file):
    out = tmp_path / "r"
    train(base_config(tiny_model_dir, pairs_file, out, max_steps=1, batch_size=4))
    with pytest.raises(ConfigError, match="inside output_dir"):
        train(base_config(out / "model", pairs_file, out, max_steps=1, batch_size=4, overwrite=True))
    assert (out / "model" / "model.safetensors").exists()


def test_overwrite_keeps_a_reference_model_that_lives_in_the_output_dir(tmp_path, tiny_model_dir, pairs_file):
    """The reference is read as the policy is: an overwrite that would delete it (the earlier
    run's model/, given as reference_model) is refused, and the reference stays as it was."""
    out = tmp_path / "r"
    train(base_config(tiny_model_dir, pairs_file, out, max_steps=1, batch_size=4))
    before = (out / "model" / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match=r"overwrite: the reference_model '.*/r/model' lies inside output_dir"):
        train(base_config(tiny_model_dir, pairs_file, out, max_steps=1, batch_size=4, overwrite=True,
                          reference_model=str(out / "model")))
    assert (out / "model" / "model.safetensors").read_bytes() == before


def test_overwrite_only_clears_an_alignlab_run(tmp_path, tiny_model_dir, pairs_file):
    out = tmp_path / "mine"
    (out / "model").mkdir(parents=True)
    (out / "model" / "keep.txt").write_text("not alignlab's")
    train(base_config(tiny_model_dir, pairs_file, out, max_steps=1, batch_size=4, overwrite=True))
    assert (out / "model" / "keep.txt").exists()


def test_output_dir_that_is_a_file(tmp_path, tiny_model_dir, pairs_file):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        train(base_config(tiny_model_dir, pairs_file, tmp_path / "afile"))
    with pytest.raises(ConfigError, match="not a writable directory"):
        train(base_config(tiny_model_dir, pairs_file, tmp_path / "afile" / "sub"))


def test_run_yaml_that_is_not_a_mapping(tmp_path, tiny_model_dir, pairs_file):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "run.yaml").write_text("- a\n")
    with pytest.raises(ConfigError, match="already holds a run"):
        train(base_config(tiny_model_dir, pairs_file, tmp_path / "r", max_steps=1, batch_size=4))


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path, tiny_model_dir, pairs_file):
    """Even with run.yaml gone, the checkpoint's own record of its config is checked."""
    cfg = base_config(tiny_model_dir, pairs_file, tmp_path / "r", max_steps=2, batch_size=4, save_every=1,
                      keep_checkpoints=0)
    train(cfg)
    (tmp_path / "r" / "run.yaml").unlink()
    with pytest.raises(ConfigError, match="differs in lr"):
        train({**cfg, "lr": 0.5, "resume": True})


def _flags(cfg: dict) -> list[str]:
    """A flat config as `alignlab train` flags."""
    return [x for k, v in cfg.items() for x in (f"--{k}", str(v).lower() if isinstance(v, bool) else str(v))]


def test_refusals_name_the_option_as_the_caller_sets_it(tmp_path, tiny_model_dir, pairs_file, capsys):
    """From Python (a dict or a TrainConfig) a refusal names the config key (overwrite=True), from the
    command line the flag (--overwrite): the refusal of a used output directory, of a resume whose
    run.yaml differs, and of a resume whose checkpoint was written with another config."""
    cfg = base_config(tiny_model_dir, pairs_file, tmp_path / "r", max_steps=1, batch_size=4)
    train(cfg)
    for given in (cfg, make_config(cfg)):
        with pytest.raises(ConfigError) as e:
            train(given)
        assert str(e.value) == (f"output_dir: '{tmp_path / 'r'}' already holds a run; pass resume=True to continue "
                                "it or overwrite=True to start afresh")
    with pytest.raises(ConfigError) as e:
        train({**cfg, "lr": 0.5, "resume": True})
    assert str(e.value).endswith("differs in lr; resume with the same config, or start afresh with overwrite=True "
                                 "without resume=True")
    assert cli.main(["train", *_flags(cfg)]) == 2
    assert capsys.readouterr().err.endswith("already holds a run; pass --resume to continue it or --overwrite to "
                                            "start afresh\n")
    assert cli.main(["train", *_flags({**cfg, "lr": 0.5, "resume": True})]) == 2
    assert capsys.readouterr().err.endswith("start afresh with --overwrite without --resume\n")
    (tmp_path / "r" / "run.yaml").unlink()  # the checkpoint's own record of its config is checked next
    with pytest.raises(ConfigError) as e:
        train({**cfg, "lr": 0.5, "resume": True})
    assert str(e.value).startswith("resume: checkpoint") and "--" not in str(e.value)
    assert str(e.value).endswith("start afresh with overwrite=True without resume=True")
    assert cli.main(["train", *_flags({**cfg, "lr": 0.5, "resume": True})]) == 2
    assert capsys.readouterr().err.endswith("start afresh with --overwrite without --resume\n")


def test_a_bad_row_from_python_says_how_to_skip_it(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "bad.jsonl"  # one good row and one bad: skipping the bad one leaves something
    data.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n"
                    + json.dumps({"prompt": "p", "chosen": "a", "rejected": "a"}) + "\n")
    cfg = base_config(tiny_model_dir, data, tmp_path / "r")
    with pytest.raises(UserError, match=r"bad.jsonl, row 2, .* identical \(pass skip_invalid=True to skip bad rows\)$"):
        train(cfg)
    assert cli.main(["train", *_flags(cfg)]) == 2
    assert capsys.readouterr().err.endswith("(pass --skip-invalid to skip bad rows)\n")


def test_a_stopped_python_run_says_how_to_continue_it(tmp_path, tiny_model_dir, pairs_file, monkeypatch):
    monkeypatch.setattr(StopRequest, "agreed", lambda self, dist: True)  # as if a signal came during step 1
    with pytest.raises(Interrupted, match=r"after step 1 of 3; .* written; continue with resume=True$"):
        train(base_config(tiny_model_dir, pairs_file, tmp_path / "r", max_steps=3, batch_size=4))


def test_resume_wins_over_overwrite(tmp_path, tiny_model_dir, pairs_file):
    """Example configs carry overwrite: true; running them with --resume continues the run."""
    cfg = base_config(tiny_model_dir, pairs_file, tmp_path / "r", max_steps=2, batch_size=4, overwrite=True)
    first = train(cfg)
    again = train({**cfg, "resume": True})
    assert again.train_metrics["loss"] == first.train_metrics["loss"]


def test_overwrite_clears_stale_checkpoints_without_run_yaml(tmp_path, tiny_model_dir, pairs_file):
    cfg = base_config(tiny_model_dir, pairs_file, tmp_path / "r", max_steps=3, batch_size=4, save_every=1,
                      keep_checkpoints=0)
    train(cfg)
    (tmp_path / "r" / "run.yaml").unlink()
    train({**cfg, "max_steps": 1, "overwrite": True})
    steps = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir())
    assert steps == ["step-00000001"]


def test_lora_adapter_records_an_absolute_base_path(tmp_path, tiny_model_dir, pairs_file, monkeypatch):
    monkeypatch.chdir(tiny_model_dir.parent)
    train(base_config(tiny_model_dir.name, pairs_file, tmp_path / "r", max_steps=1, batch_size=4, lora=True))
    base = json.loads((tmp_path / "r" / "model" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str(tiny_model_dir.resolve())


def test_dropout_is_off_so_the_first_dpo_loss_is_log_2(tmp_path, pairs_file):
    """Policy equals reference at step 1, so the loss is exactly log 2 — unless dropout makes the
    two forward passes differ, which it does on a model with attention dropout 0.5."""
    model_dir = save_tiny_model(tmp_path / "m", TinyModelConfig(hidden_size=64, num_layers=2, intermediate_size=128))
    cfg_path = model_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["attention_dropout"] = 0.5
    cfg_path.write_text(json.dumps(cfg))
    off = train(base_config(model_dir, pairs_file, tmp_path / "off", max_steps=1, batch_size=8))
    on = train(base_config(model_dir, pairs_file, tmp_path / "on", max_steps=1, batch_size=8, disable_dropout=False))
    # The reference log-probs are computed once, before training, in batches of another make-up
    # (sorted by length), so fp32 rounding may differ in the last bits: ~1e-7, not dropout's ~1e-2.
    assert off.train_metrics["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert abs(on.train_metrics["loss"] - math.log(2)) > 1e-4


def test_bf16_is_mixed_precision(tmp_path, tiny_model_dir, pairs_file):
    """With bf16 weights, an update of lr 1e-6 would vanish in rounding for most weights; with fp32
    master weights every weight moves. The saved model is bf16."""
    summary = train(base_config(tiny_model_dir, pairs_file, tmp_path / "r", max_steps=2, batch_size=8,
                                dtype="bf16", lr=1e-6, keep_checkpoints=0, save_every=1))
    start = weights(tiny_model_dir)
    master = load_file(tmp_path / "r" / "checkpoints" / "step-00000002" / "trainable.safetensors")
    moved = sum(int((master[k] != start[k]).sum()) for k in start)
    total = sum(v.numel() for v in start.values())
    assert master["model.embed_tokens.weight"].dtype == torch.float32
    assert moved / total > 0.5
    final = weights(summary.model_dir)
    assert all(v.dtype == torch.bfloat16 for v in final.values())
    assert math.isfinite(summary.train_metrics["loss"])
    # The reference runs like the policy (fp32 weights, bf16 autocast): before the first update
    # they agree up to bf16 rounding (the reference's batches are made up differently: sorted by
    # length), so every implicit reward is ~0 and the loss is log 2.
    first = _lines(tmp_path / "r" / "metrics.jsonl")[0]
    assert abs(first["rewards/chosen"]) < 1e-4 and abs(first["rewards/rejected"]) < 1e-4
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)


def test_non_finite_loss_stops_the_run_without_updating(tmp_path, tiny_model_dir, pairs_file, monkeypatch):
    real = preference.PreferenceForward.__call__

    def poisoned(self, model, batch):
        out = real(self, model, batch)
        out.losses = out.losses * float("nan")
        return out

    monkeypatch.setattr(preference.PreferenceForward, "__call__", poisoned)
    with pytest.raises(NumericError, match=r"^step 1: the loss \(nan\).*start afresh with overwrite=True without "
                                           r"resume=True\)$"):
        train(base_config(tiny_model_dir, pairs_file, tmp_path / "r", max_steps=2, batch_size=4))
    assert not (tmp_path / "r" / "model").exists()


@pytest.mark.parametrize("method", ["dpo", "sft"])
def test_non_finite_weights_are_refused_before_anything_is_written(method, tmp_path, damaged_model_dir, pairs_file,
                                                                   sft_file):
    """Not blamed on the data rows and the learning rate at the first step, and none of the
    model's NaN reference log-probs cached: the model is refused as it loads, naming its file."""
    cache = tmp_path / "cache"
    data = sft_file if method == "sft" else pairs_file
    with pytest.raises(UserError) as e:
        train(base_config(damaged_model_dir, data, tmp_path / "r", method=method, cache_dir=str(cache)))
    assert not isinstance(e.value, NumericError)
    assert str(e.value).startswith(f"model '{damaged_model_dir}' has non-finite weights: '{DAMAGED_TENSOR}' "
                                   f"(in {damaged_model_dir}/model.safetensors) holds {DAMAGED_VALUES} NaN")
    assert not (tmp_path / "r").exists() and not cache.exists()


def test_broken_model_config_is_a_user_error(tmp_path, tiny_model_dir, pairs_file):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in tiny_model_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bad / "config.json").read_text())
    cfg["hidden_size"] = "abc"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="cannot load"):
        train(base_config(bad, pairs_file, tmp_path / "r"))


def test_chat_template_that_refuses_a_row_is_a_row_issue(tmp_path, tiny_model_dir):
    """A template that raises on a system role (as some do) makes that row bad, not the run."""
    model = tmp_path / "m"
    model.mkdir()
    for f in tiny_model_dir.iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    (model / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": "good"}],
             "rejected": [{"role": "assistant", "content": "bad"}]} for i in range(4)]
    rows[1]["prompt"].insert(0, {"role": "system", "content": "be nice"})
    data = tmp_path / "conv.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=r"conv.jsonl, row 2: the chat template failed: System role not supported"):
        train(base_config(model, data, tmp_path / "r1", max_steps=1, batch_size=2))
    summary = train(base_config(model, data, tmp_path / "r2", max_steps=1, batch_size=2, skip_invalid=True))
    assert summary.data["train_examples"] == 3 and summary.data["train_skipped_after_tokenizing"] == 1
