"""DeepSpeed ZeRO-2 and ZeRO-3 on two CPU processes (gloo) give the weights of one process without
DeepSpeed on the same global batch, and their checkpoints resume to the uninterrupted run's
weights. Runs the real CLI under torchrun and under ``accelerate launch`` with the shipped configs.

DeepSpeed keeps its AdamW state in fp32 whatever the model's dtype, so the runs are fp32, and the
weights agree as fp32 sums taken in another order do after Adam's normalisation: over these 3
steps at lr 1e-2 (weights moving by ~3e-2), plain DDP on two processes differs from one process
by 1.0e-5 at most, ZeRO-2 by 1.0e-5 to 2.8e-5 and ZeRO-3 by 0.7e-5 (measured on an AVX2 CPU). On
an AVX-512 one ZeRO-2 differs by 0.7e-4 to 1.1e-4 (before and after one process took the fused
AdamW) and ZeRO-3, whose partitioned output layer takes the model's full logits while one process
takes the chunked output layer, by 3.1e-4: Adam's first step is lr·sign(g), so a gradient within
rounding of 0 moves its weight by up to 2·lr either way. The bound is 5e-4, under 2% of the
weights' movement; the exact equalities are the fp64 tests of FSDP and DDP. A gradient scaled
wrongly (DeepSpeed's own division by the accumulation steps) hardly moves Adam's update but
shows in the logged gradient norm, compared to 1e-4 relative."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alignlab import train
from tests.training.helpers import base_config, max_abs_diff, weights
from tests.training.train_many import free_port

# the runs import DeepSpeed in their own processes; this one never does
pytestmark = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                                   reason="DeepSpeed is not installed (pip install 'alignlab[deepspeed]')")]
ROOT = Path(__file__).resolve().parents[2]
TOL = 5e-4


def _launch(cfg: dict, tmp_path, name: str, launcher: list[str] | None = None):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    launcher = launcher or [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                            "--master_port", free_port()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(launcher + ["-m", "alignlab.cli", "train", str(path)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _train_lines(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def _common(**extra) -> dict:
    # warmup then decay: the schedule changes the lr of the AdamW that DeepSpeed drives; grad_accum 2
    # with DeepSpeed's accumulation scaling off; a clip that binds (max_grad_norm below the norms)
    return dict(method="dpo", max_steps=3, dtype="fp32", grad_accum=2, lr=1e-2, warmup_steps=1, max_grad_norm=0.5,
                eval_fraction=1 / 16, eval_every=2, **extra)


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_zero_two_processes_equal_one_and_resume(tmp_path, tiny_model_dir, pairs_file, stage):
    single = train(base_config(tiny_model_dir, pairs_file, tmp_path / "one", batch_size=2, **_common()))
    cfg = base_config(tiny_model_dir, pairs_file, tmp_path / "two", batch_size=1, deepspeed=stage, save_every=2,
                      keep_checkpoints=0, **_common())
    proc = _launch(cfg, tmp_path, "two")
    assert json.loads(proc.stdout)["steps"] == 3  # stdout is the summary alone: DeepSpeed logs to stderr

    one, two = weights(Path(single.model_dir)), weights(tmp_path / "two" / "model")
    start = weights(tiny_model_dir)
    assert max_abs_diff(one, start) > 1e-2  # the equality is of weights that moved
    assert max_abs_diff(one, two) < TOL
    lines_one, lines_two = _train_lines(tmp_path / "one"), _train_lines(tmp_path / "two")
    assert len(lines_one) == len(lines_two) == 3
    for a, b in zip(lines_one, lines_two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        # rel 1e-4: the later steps start from weights that differ as above (a wrong scaling of
        # the gradient, such as a division by the accumulation steps, is off by a factor)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4) and a["grad_norm"] > 0.5  # clipped
        assert b["lr"] == a["lr"]
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["eval_metrics"]["eval/loss"] == pytest.approx(
        single.eval_metrics["eval/loss"], abs=1e-5)

    # the checkpoint of step 2 holds the engine's files and the whole trainable weights
    ckpt = tmp_path / "two" / "checkpoints" / "step-00000002"
    assert (ckpt / "zero" / "engine").is_dir() and (ckpt / "trainable.safetensors").is_file()
    assert json.loads((ckpt / "state.json").read_text())["deepspeed"] == int(stage[-1])

    # resumed from step 2 in place: step 3 again, through the engine's checkpoint
    shutil.rmtree(tmp_path / "two" / "checkpoints" / "step-00000003")
    shutil.rmtree(tmp_path / "two" / "model")
    _launch({**cfg, "resume": True}, tmp_path, "resumed")
    assert max_abs_diff(weights(tmp_path / "two" / "model"), two) < 1e-6
    assert [x["step"] for x in _train_lines(tmp_path / "two")] == [1, 2, 3]

def test_accelerate_launch_with_the_shipped_zero3_config(tmp_path, tiny_model_dir, pairs_file):
    """``accelerate launch --config_file examples/accelerate/zero3.yaml`` on two CPU processes:
    the config's DeepSpeed settings reach the run (ZeRO-3, read back from the checkpoint)."""
    single = train(base_config(tiny_model_dir, pairs_file, tmp_path / "one", batch_size=2, **_common()))
    cfg = base_config(tiny_model_dir, pairs_file, tmp_path / "two", batch_size=1, **_common())
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(ROOT / "examples" / "accelerate" / "zero3.yaml"), "--num_processes", "2",
                "--main_process_port", free_port()]
    _launch(cfg, tmp_path, "two", launcher)
    assert max_abs_diff(weights(Path(single.model_dir)), weights(tmp_path / "two" / "model")) < TOL
    state = json.loads((tmp_path / "two" / "checkpoints" / "step-00000003" / "state.json").read_text())
    assert state["deepspeed"] == 3 and state["world_size"] == 2


def test_zero3_online_and_lora(tmp_path, tiny_model_dir, pairs_file):
    """GRPO under ZeRO-3: each process samples its prompts from the whole policy (gathered for the
    round, the engine's hooks off); and a LoRA adapter trained under ZeRO-3 beside frozen
    partitioned weights. Both end as one process without DeepSpeed."""
    common = dict(method="grpo", reward=["fn:tests.training.online_rewards:digits"], num_generations=4,
                  max_new_tokens=6, dtype="fp32", warmup_steps=0, lr=1e-2, max_steps=4, updates_per_rollout=2)
    single = train(base_config(tiny_model_dir, "task:arithmetic", tmp_path / "one", batch_size=8, **common))
    _launch(base_config(tiny_model_dir, "task:arithmetic", tmp_path / "two", batch_size=4, deepspeed="zero3", **common),
            tmp_path, "two")
    one = weights(single.model_dir)
    assert max_abs_diff(one, weights(tmp_path / "two" / "model")) < TOL
    assert max_abs_diff(one, weights(tiny_model_dir)) > 1e-3
    for a, b in zip(_train_lines(tmp_path / "one"), _train_lines(tmp_path / "two"), strict=True):
        assert b["reward"] == a["reward"] and b["loss"] == pytest.approx(a["loss"], abs=1e-5)

    from safetensors.torch import load_file

    lora = dict(_common(lora=True, lora_r=4))
    single = train(base_config(tiny_model_dir, pairs_file, tmp_path / "lora-one", batch_size=2, **lora))
    _launch(base_config(tiny_model_dir, pairs_file, tmp_path / "lora-two", batch_size=1, deepspeed="zero3", **lora),
            tmp_path, "lora-two")
    one, two = (load_file(Path(d) / "adapter_model.safetensors") for d in (single.model_dir, tmp_path / "lora-two" / "model"))
    assert max(float(v.abs().max()) for k, v in two.items() if "lora_B" in k) > 1e-3  # B starts at zero
    assert max_abs_diff(one, two) < TOL


def test_one_process_runs_one_after_another(tmp_path, tiny_model_dir, pairs_file):
    """Two one-process ZeRO-2 runs in one Python process (as a notebook or a sweep runs them): the
    first ends the process group of one it started, DeepSpeed's groups cloned from it included, so
    the second starts afresh and ends with the same weights (it failed on DeepSpeed's stale clone
    of the ended group: "Group ... is not registered")."""
    cfg = base_config(tiny_model_dir, pairs_file, tmp_path / "run", batch_size=2, deepspeed="zero2",
                      **{**_common(), "max_steps": 1, "eval_fraction": 0.0})
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    script = ("import json, sys, torch.distributed as tdist\n"
              "from alignlab import train\n"
              "cfg = json.load(open(sys.argv[1]))\n"
              "for name in ('a', 'b'):\n"
              "    train({**cfg, 'output_dir': cfg['output_dir'] + '-' + name})\n"
              "    assert not tdist.is_initialized()\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "cfg.json")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = weights(tmp_path / "run-a" / "model"), weights(tmp_path / "run-b" / "model")
    assert max_abs_diff(a, weights(tiny_model_dir)) > 1e-3 and max_abs_diff(a, b) == 0


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_output_dir_not_shared_is_one_line(tmp_path, tiny_model_dir, pairs_file, stage):
    """Every process writes its part of a DeepSpeed checkpoint into the folder the first process
    made: a process that does not see it (each machine's own disk, simulated on process 1 from
    checkpoint 2 on, as for FSDP in ``test_fsdp_shared.py``) stops the run with one line, and
    nothing of checkpoint 2 is left, where DeepSpeed would otherwise write that process's part on
    a disk of its own and the checkpoint would lack it."""
    from tests.training.test_fsdp import _torchrun

    out = tmp_path / "two"
    cfg = base_config(tiny_model_dir, pairs_file, out, batch_size=1, deepspeed=stage, save_every=1,
                      keep_checkpoints=0, **_common())
    proc = _torchrun(cfg, tmp_path, "two", module="tests.training.test_fsdp_shared", ok=False)
    assert proc.returncode != 0
    lines = [x for x in proc.stderr.splitlines() if x.startswith("alignlab: error:")]
    assert lines and lines[0].startswith("alignlab: error: output_dir: process 1 does not see "), proc.stderr[-3000:]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000001"]
    assert not (out / "elsewhere").exists()
