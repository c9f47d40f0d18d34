"""Long steps show progress: sampling and scoring feedback, evaluating on held-out prompts, and
building a testbed model each draw a bar (on stderr) when asked, and nothing when not."""

from __future__ import annotations

import pytest

from alignlab.eval.gold import GoldEvaluator
from alignlab.models import load_model, load_tokenizer
from alignlab.tasks import get_task
from alignlab.testbed.build import ModelRecipe, build_testbed_model
from alignlab.testbed.feedback import FeedbackSpec, synthesize


@pytest.mark.parametrize("progress", [True, False])
def test_feedback_shows_sampling_and_scoring(progress, tiny_model_dir, tmp_path, capsys):
    synthesize(tiny_model_dir, FeedbackSpec("arithmetic", num_prompts=3, k=2), tmp_path / "fb", batch_size=2,
               progress=progress)
    err = capsys.readouterr().err
    assert ("sampling 2 answers to 3 prompts" in err and "0/6" in err) is progress  # 6 sequences
    assert ("scoring (gold reward)" in err and "0/3" in err) is progress  # 3 prompts


@pytest.mark.parametrize("progress", [True, False])
def test_evaluation_shows_each_sampling_pass(progress, tiny_model_dir, capsys):
    model = load_model(str(tiny_model_dir))
    evaluator = GoldEvaluator(get_task("arithmetic"), load_tokenizer(str(tiny_model_dir)), num_prompts=4,
                              batch_size=2, progress=progress)
    evaluator(model, model)
    err = capsys.readouterr().err
    for what in ("reference", "sampled", "greedy"):
        assert (f"evaluating: {what} answers to 4 held-out prompts" in err) is progress


def test_a_build_shows_its_training_stages(tmp_path, capsys):
    recipe = ModelRecipe(task="arithmetic", hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                         pretrain_steps=2, sft_steps=3, pretrain_batch=4, sft_batch=4)
    build_testbed_model(recipe, tmp_path, log=lambda msg: None, progress=True)
    err = capsys.readouterr().err
    assert "2/2" in err and "3/3" in err  # one bar per stage, each to its number of steps
