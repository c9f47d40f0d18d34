"""Bad or unusual input to an online run: each is a one-line error naming what is wrong (the field,
the file and row, the reward), reported before anything is sampled where it can be, never a run
that silently learns nothing or drops what the user gave."""

from __future__ import annotations

import re

import pytest

from alignlab.config import make_config
from alignlab.errors import ConfigError

BASE = {"model": "m", "data": "task:arithmetic", "reward": ["task:arithmetic"]}


@pytest.mark.parametrize("method,extra", [
    ("grpo", {}), ("dapo", {}), ("dr_grpo", {}), ("gspo", {}), ("grpo", {"scale_rewards": "batch"}),
    ("rloo", {}), ("reinforce++", {"baseline": "group"}),
])
def test_one_sample_per_prompt_is_refused_where_the_advantage_compares_a_prompts_samples(method, extra):
    """With G = 1 a group's mean is its one reward, so every group-relative advantage is exactly 0
    and the run would train on nothing."""
    with pytest.raises(ConfigError, match=rf"^num_generations: method '{re.escape(method)}' compares each prompt's "
                                          r"samples with each other \(.+\); with 1 sample per prompt the reward adds "
                                          r"nothing to any advantage, so nothing is learned from it: set "
                                          r"num_generations to 2 or more$"):
        make_config({**BASE, "method": method, "num_generations": 1, **extra})


@pytest.mark.parametrize("method,extra", [("remax", {}), ("reinforce++", {}), ("ppo", {})])
def test_one_sample_per_prompt_is_fine_where_the_baseline_is_not_the_group(method, extra):
    assert make_config({**BASE, "method": method, "num_generations": 1, **extra}).rollout.num_generations == 1


@pytest.mark.parametrize("given,specs", [
    ("length:coef=0.01,target=5", ["length:coef=0.01,target=5"]),
    ("openai:http://127.0.0.1:9/v1,model=judge,swap=false", ["openai:http://127.0.0.1:9/v1,model=judge,swap=false"]),
    ("task:arithmetic,length:coef=0.5,unit=chars", ["task:arithmetic", "length:coef=0.5,unit=chars"]),
    ("task:arithmetic,length,fn:m:f", ["task:arithmetic", "length", "fn:m:f"]),
    ('["length:coef=0.01,target=5", "task:arithmetic"]', ["length:coef=0.01,target=5", "task:arithmetic"]),
])
def test_a_reward_given_as_one_text_splits_only_between_scorer_specs(given, specs):
    """A spec's own options (key=value after a comma) stay with it, from YAML, a flag or Python."""
    weights = {"reward_weights": [1.0] * len(specs)}
    assert make_config({**BASE, "method": "grpo", "reward": given, **weights}).rollout.reward == specs


def test_a_reward_flag_with_options_reaches_the_scorer_whole(tmp_path, tiny_model_dir, capsys):
    """From the command line: the endpoint's model is not lost to a split at the comma, so the
    judge is built and asked (nothing listens on port 9: the run stops at its first request)."""
    from alignlab.cli import main

    code = main(["train", "--method", "grpo", "--model", str(tiny_model_dir), "--data", "task:arithmetic",
                 "--reward", "openai:http://127.0.0.1:9/v1,model=judge", "--num-generations", "2",
                 "--batch-size", "2", "--max-new-tokens", "2", "--max-steps", "1", "--progress", "false",
                 "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert err.startswith("alignlab: error: reward 'openai:http://127.0.0.1:9/v1,model=judge': prompt row 1, "
                          "sample 1: raised UserError: judge request to http://127.0.0.1:9/v1/chat/completions "
                          "failed: cannot connect")
