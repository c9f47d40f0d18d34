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
