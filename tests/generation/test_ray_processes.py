"""Ray generation workers under a run of several training processes: the first process starts
them and samples every process's prompts; the run trains the weights of one process that samples
the whole round itself. Runs the real CLI under torchrun (2 gloo processes, FSDP) with a local
cluster of 2 workers."""

from __future__ import annotations

from importlib.util import find_spec

import pytest

from alignlab import train
from tests.training.helpers import base_config, max_abs_diff, weights
from tests.training.test_fsdp import _torchrun, _train_lines

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray"),
              pytest.mark.skipif(find_spec("ray") is None, reason="ray is not installed (pip install -e '.[ray]')")]


def test_two_training_processes_on_two_workers_equal_one_process(tmp_path, tiny_model_dir):
    """GRPO, 3 rounds of 2 prompts × 4 samples (fp64): 2 FSDP processes, each with one prompt a
    round, sampled by 2 Ray workers that the first process drives with the gathered policy, end
    with the weights, losses and rewards of 1 process sampling with the native backend. The reward
    reads the prompt: each process must get the completions of its own prompt."""
    common = dict(method="grpo", reward=["fn:tests.training.online_rewards:shared_with_prompt"], num_generations=4,
                  max_new_tokens=6, dtype="fp64", warmup_steps=0, lr=1e-2, max_steps=3)
    single = train(base_config(tiny_model_dir, "task:arithmetic", tmp_path / "one", batch_size=8, **common))
    proc = _torchrun(base_config(tiny_model_dir, "task:arithmetic", tmp_path / "two", batch_size=4, fsdp=True,
                                 generation_backend="ray", ray_workers=2, **common), tmp_path, "two")
    assert "the first process samples the prompts of all 2 processes on 2 Ray workers" in proc.stderr
    one = weights(single.model_dir)
    assert max_abs_diff(one, weights(tmp_path / "two" / "model")) < 1e-9
    assert max_abs_diff(one, weights(tiny_model_dir)) > 1e-4
    for a, b in zip(_train_lines(tmp_path / "one"), _train_lines(tmp_path / "two"), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-9) and b["reward"] == a["reward"]
