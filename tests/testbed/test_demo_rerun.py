"""A second demo into the same folder does not silently replace the first one's report, and every
report records where its model came from (the shipped model's build machine and build time)."""

from __future__ import annotations

import hashlib
import json

import pytest

from alignlab.cli import main
from alignlab.errors import UserError
from alignlab.testbed.demo import DemoSettings, default_out_dir, run_demo
from alignlab.testbed.shipped import shipped_dir

pytestmark = pytest.mark.slow


def tiny() -> DemoSettings:
    return DemoSettings(num_prompts=16, k=2, epochs=1.0, eval_prompts=8, eval_every=0)


def test_a_rerun_keeps_the_earlier_report_unless_told_to_replace_it(tmp_path):
    out = tmp_path / "demo"
    first = run_demo(tiny(), out, tmp_path / "cache", progress=False, report_to=["tensorboard"])
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))  # the training run logged there too
    saved = (out / "metrics.json").read_text()
    with pytest.raises(UserError, match=r"holds an earlier demo.s report; .* pass overwrite=True to replace it"):
        run_demo(tiny(), out, tmp_path / "cache", progress=False)
    assert (out / "metrics.json").read_text() == saved  # nothing was touched
    second = run_demo(tiny(), out, tmp_path / "cache", progress=False, overwrite=True)
    assert second["after"] == first["after"]

    folder = shipped_dir("arithmetic", "sft")
    manifest = json.loads((folder / "testbed.json").read_text())
    provenance = json.loads((out / "metrics.json").read_text())["sft_model_provenance"]
    assert provenance == {"shipped": True, "key": manifest["key"], "built_on": manifest["built_on"],
                          "build_seconds": manifest["build_seconds"],
                          "sha256": hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()}


def test_an_unfinished_demo_is_called_one(tmp_path):
    (tmp_path / "demo" / "feedback").mkdir(parents=True)
    (tmp_path / "demo" / "feedback" / "metadata.json").write_text("{}")
    with pytest.raises(UserError, match=r"earlier demo's feedback \(from a demo that did not finish\)"):
        run_demo(tiny(), tmp_path / "demo", tmp_path / "cache", progress=False)


def test_the_default_folder_names_what_differs_from_the_gold_demo():
    assert default_out_dir(DemoSettings()) == "runs/demo-arithmetic-dpo-s0"
    assert default_out_dir(DemoSettings(reward="proxy", seed=2)) == "runs/demo-arithmetic-dpo-s2-proxy"
    assert default_out_dir(DemoSettings(label_noise=0.3)) == "runs/demo-arithmetic-dpo-s0-noise0.3"
    assert default_out_dir(DemoSettings(rounds=2)) == "runs/demo-arithmetic-dpo-s0-rounds2"


def test_an_unknown_sink_fails_before_anything_runs(tmp_path, capsys):
    assert main(["demo", "--report-to", "tensorbored", "--out", str(tmp_path / "d")]) != 0
    err = capsys.readouterr().err.strip()
    assert "unknown sink 'tensorbored'" in err and "did you mean 'tensorboard'" in err and "\n" not in err
    assert not (tmp_path / "d").exists()


def test_an_online_demo_says_when_its_batch_is_rounded_to_whole_prompts(tmp_path, monkeypatch, capsys):
    """``--k 3 --batch-size 16``: a step trains on 15 answers (5 prompts × 3), and the demo says so
    before training (it rounded silently); the config it trains with has batch size 15."""
    import alignlab
    import alignlab.testbed.demo as demo

    seen = {}

    class Stop(Exception):
        pass

    def fake_train(config):
        seen.update(config)
        raise Stop

    monkeypatch.setattr(alignlab, "train", fake_train)  # run_demo imports it when it runs
    settings = demo.DemoSettings(method="grpo", k=3, batch_size=16, num_prompts=16, eval_prompts=4)
    with pytest.raises(Stop):
        demo.run_demo(settings, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    assert seen["batch_size"] == 15 and seen["num_generations"] == 3
    assert "batch size 16 is not a multiple of --k 3: each step trains on 15 answers (5 prompts)" in \
        capsys.readouterr().err
