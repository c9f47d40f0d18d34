"""Under fsdp the reference is sharded too: GRPO with a KL term (β > 0) and a task evaluation (the
reference's samples and the KL to it) on 2 FSDP processes holds half of the reference on each and
ends as 1 unsharded process (fp64), with the same evaluation.

Run as ``python -m tests.training.test_fsdp_reference ARGS`` (under torchrun) it is the CLI that
also writes, per process, how many of the reference's parameters it holds."""

from __future__ import annotations

import json
import sys

import pytest

from alignlab import train
from tests.training.helpers import base_config, max_abs_diff, weights
from tests.training.test_fsdp import _torchrun

pytestmark = pytest.mark.slow


def test_reference_sharded_and_two_processes_equal_one(tmp_path, tiny_model_dir):
    common = dict(method="grpo", reward=["fn:tests.training.online_rewards:digits"], num_generations=4, beta=0.1,
                  max_new_tokens=6, dtype="fp64", warmup_steps=0, lr=1e-2, max_steps=2, task="arithmetic",
                  task_eval_prompts=3)
    single = train(base_config(tiny_model_dir, "task:arithmetic", tmp_path / "one", batch_size=8, **common))
    cfg = base_config(tiny_model_dir, "task:arithmetic", tmp_path / "two", batch_size=4, fsdp=True, **common)
    _torchrun(cfg, tmp_path, "two", module="tests.training.test_fsdp_reference")

    assert max_abs_diff(weights(single.model_dir), weights(tmp_path / "two" / "model")) < 1e-9
    two = json.loads((tmp_path / "two" / "summary.json").read_text())["eval_metrics"]
    assert two.keys() == single.eval_metrics.keys() and "eval/gold/kl" in two
    for k, v in single.eval_metrics.items():
        assert two[k] == pytest.approx(v, abs=1e-9), k
    held = [json.loads((tmp_path / "two" / f"reference-{r}.json").read_text()) for r in (0, 1)]
    whole = held[0][1]
    assert whole == sum(p.numel() for p in _load(tiny_model_dir).parameters())
    # each process holds its half of every tensor (an odd row count: one row more on the first)
    assert held[0][0] + held[1][0] == whole and abs(held[0][0] - held[1][0]) < whole // 50


def _load(model_dir):
    from alignlab.models import load_model

    return load_model(str(model_dir), "fp64")


def _record_reference() -> None:
    """Before the loop: how many parameters of the reference's own module this process holds."""
    import alignlab.training.run as run

    real = run.run_loop

    def record(inp):
        own = inp.reference._copy
        local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in own.parameters())
        whole = sum(p.numel() for p in own.parameters())
        (inp.out_dir / f"reference-{inp.dist.rank}.json").write_text(json.dumps([local, whole]))
        return real(inp)

    run.run_loop = record


if __name__ == "__main__":
    from alignlab.cli import main

    _record_reference()
    sys.exit(main())
