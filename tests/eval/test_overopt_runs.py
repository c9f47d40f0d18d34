"""`alignlab eval overopt` on the runs it meets: an online run (its own reward is the proxy by
default), a reward-model run (refused), a LoRA run (its checkpoints load as plain models), a prompts
file whose column is not `prompt`, and a scorer that returns no number."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import yaml

from alignlab.cli import main
from alignlab.data.records import PromptRecord
from alignlab.errors import UserError, command_line
from alignlab.eval.overopt import measure
from alignlab.eval.overopt_cli import _run_reward
from alignlab.eval_cli import cmd_overopt
from alignlab.generation import SamplingParams
from alignlab.rewards.base import Scorer
from tests.conftest import make_pairs, write_jsonl
from tests.decoding.fakes import EOS, Markov, logp
from tests.eval.test_overopt import CountA, TableSampler


def online_run(tmp_path, model, **rollout):
    """A GRPO run's folder as training leaves it, its final model a copy of ``model``."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.yaml").write_text(yaml.safe_dump({"model": str(model), "method": "grpo", "data": "task:arithmetic",
                                                  "rollout": {"reward": [], "reward_weights": None, **rollout}}))
    shutil.copytree(model, run / "model")
    return run


def test_the_proxy_of_a_run_is_the_reward_it_optimised():
    """An online run without a reward optimised its task's gold reward; one with rewards, those
    (weights kept); an offline run on a data file names none."""
    assert _run_reward({"method": "grpo", "data": "task:arithmetic", "rollout": {"reward": []}}) == (
        ["task:arithmetic:gold"], None)
    assert _run_reward({"method": "rloo", "data": "task:chainsum",
                        "rollout": {"reward": ["task:chainsum:proxy", "length"], "reward_weights": [1.0, 0.5]}}) == (
        ["task:chainsum:proxy", "length"], [1.0, 0.5])
    assert _run_reward({"method": "dpo", "data": "pairs.jsonl", "rollout": {"reward": []}}) is None


def test_an_online_run_is_measured_against_its_own_reward(tiny_model_dir, tmp_path):
    """GRPO on task:arithmetic without a reward trained on the gold reward: the proxy column is
    that reward (the same numbers as gold), not the task's proxy. With two weighted rewards, their
    weighted sum. The prompts come from a file whose column is `question` (--prompt-column)."""
    run = online_run(tmp_path, tiny_model_dir)
    prompts = write_jsonl(tmp_path / "q.jsonl", [{"question": f"{a}+{a}="} for a in range(3)])
    common = ["--run", str(run), "-n", "2", "--bootstrap", "0", "--device", "cpu", "--max-new-tokens", "4"]
    assert main(["eval", "overopt", *common, "--prompts", str(prompts), "--prompt-column", "question",
                 "--gold", "task:arithmetic"]) == 0
    report = json.loads((run / "overopt.json").read_text())
    assert report["proxy_scorer"] == "task:arithmetic:gold"
    assert [r["model"] for r in report["rows"]] == ["start", "final"] and report["rows"][0]["prompts"] == 3
    assert all(r["proxy"] == r["gold"] for r in report["rows"])
    assert report["left_out"] == {}
    damaged = run / "checkpoints" / "step-00000001"  # its manifest names a file it lacks: left out, and said so
    damaged.mkdir(parents=True)
    (damaged / "manifest.json").write_text(json.dumps({"step": 1, "sha256": {"trainable.safetensors": "0" * 64}}))
    (run / "run.yaml").write_text(yaml.safe_dump({
        "model": str(tiny_model_dir), "method": "grpo", "data": "task:arithmetic",
        "rollout": {"reward": ["task:arithmetic:gold", "length:coef=1,unit=chars"], "reward_weights": [2.0, 0.5]}}))
    assert main(["eval", "overopt", *common, "--task", "arithmetic", "--limit", "3"]) == 0
    report = json.loads((run / "overopt.json").read_text())
    assert report["proxy_scorer"].startswith("2*") and " + 0.5*" in report["proxy_scorer"]
    assert report["left_out"] == {"step-00000001": "trainable.safetensors is missing"}
    assert [r["model"] for r in report["rows"]] == ["start", "final"]
    assert main(["report", str(run)]) == 0
    assert "Left out step-00000001: trainable.safetensors is missing." in (run / "report.md").read_text()


def test_a_reward_model_run_is_refused_before_anything_is_drawn(tiny_model_dir, tmp_path):
    run = tmp_path / "rm-run"
    run.mkdir()
    (run / "run.yaml").write_text(yaml.safe_dump({"model": str(tiny_model_dir), "method": "reward_model"}))
    shutil.copytree(tiny_model_dir, run / "model")
    with command_line(), pytest.raises(UserError) as e:
        cmd_overopt(["--run", str(run), "--task", "arithmetic"])
    assert "a reward-model run (method reward_model)" in str(e.value) and "\n" not in str(e.value)


def test_a_lora_runs_checkpoints_load_as_the_final_model_does(tiny_model_dir, tmp_path):
    """A LoRA run's checkpoint is its adapter merged into the starting model: a plain model, as the
    saved final model loads (the native sampler runs it: every model of the run is sampled alike),
    with the final model's logits (the last checkpoint is the final step)."""
    import torch

    from alignlab.generation.native import unsupported
    from alignlab.training.saved import run_models

    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(8))
    run = tmp_path / "lora"
    assert main(["train", "--method", "dpo", "--model", str(tiny_model_dir), "--data", str(data), "--output-dir",
                 str(run), "--max-steps", "2", "--batch-size", "4", "--lr", "5e-2", "--save-every", "2",
                 "--lora", "true", "--progress", "false"]) == 0
    models = dict(run_models(run))
    step, final = models["step-00000002"](), models["final"]()
    assert type(step) is type(final) and unsupported(step) is None
    ids = torch.tensor([[5, 9, 20, 31, 7]])
    with torch.no_grad():  # the same weights up to float rounding of the merge (adapter products summed)
        moved = (step(ids).logits - models["start"]()(ids).logits).abs().max()
        assert moved > 1e-3
        torch.testing.assert_close(step(ids).logits, final(ids).logits, rtol=0, atol=1e-6)


class NotANumber(Scorer):
    name = "broken"

    def score(self, prompts, responses):
        return [math.nan if i == 1 else 1.0 for i in range(len(responses))]


def test_a_scorer_that_returns_no_number_is_one_line():
    model = Markov({t: logp(1 / 2, 1 / 4, 1 / 4) for t in range(3)}, start=logp(1 / 2, 1 / 4, 1 / 4))
    prompts = [PromptRecord("x", source="test", row=i) for i in range(2)]
    with pytest.raises(UserError, match=r"scorer broken: returned nan for answer 2 "):
        measure(model, model, TableSampler((0.5, 0.25, 0.25)), prompts, 2, SamplingParams(max_new_tokens=5, seed=1),
                CountA(), NotANumber(), pad_id=EOS, resamples=0)


def test_a_scorer_that_fails_names_the_prompts_file_and_row(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """--gold a function that raises on every answer to the second prompt of q.jsonl: one line
    naming q.jsonl, row 2 (not the prompt's text), for the gold scorer and for the run's own
    reward as the proxy."""
    (tmp_path / "picky.py").write_text("def f(prompt, response):\n"
                                       "    if prompt == '2+2=':\n"
                                       "        raise RuntimeError('no')\n"
                                       "    return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    run = online_run(tmp_path, tiny_model_dir)
    prompts = write_jsonl(tmp_path / "q.jsonl", [{"prompt": f"{a}+{a}="} for a in range(1, 4)])
    common = ["eval", "overopt", "--run", str(run), "-n", "2", "--bootstrap", "0", "--device", "cpu",
              "--max-new-tokens", "4", "--prompts", str(prompts)]
    for flags in (["--gold", "fn:picky:f"], ["--gold", "task:arithmetic", "--proxy", "fn:picky:f"]):
        assert main([*common, *flags]) != 0
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "fn:picky:f failed on the answer" in err and f"to prompt ({prompts}, row 2): raised RuntimeError: no" \
            in err, err
    (run / "run.yaml").write_text(yaml.safe_dump({"model": str(tiny_model_dir), "method": "grpo",
                                                  "data": "task:arithmetic", "rollout": {"reward": ["fn:picky:f"]}}))
    assert main([*common, "--gold", "task:arithmetic"]) != 0
    assert f"to prompt ({prompts}, row 2): raised RuntimeError: no" in capsys.readouterr().err
