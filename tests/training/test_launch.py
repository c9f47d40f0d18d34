"""The multi-node launch: the shipped SLURM script runs the same command on one machine, and two
"nodes" that meet at a c10d rendezvous (two torchrun launchers on this machine, one process each)
train the same weights as one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alignlab import train
from tests.training.helpers import base_config, max_abs_diff, weights
from tests.training.train_many import free_port as _free_port

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "slurm" / "train.sbatch"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}  # run as outside SLURM
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd(), "PYTHON": sys.executable}


def _configs(tmp_path, tiny_model_dir, pairs_file) -> tuple[Path, Path]:
    """One process with batch 4 (trained here), and the config of two processes with batch 2 each."""
    common = dict(max_steps=2, dtype="fp64", save_every=1, keep_checkpoints=0)
    single = train(base_config(tiny_model_dir, pairs_file, tmp_path / "one", batch_size=4, **common))
    cfg_path = tmp_path / "two.yaml"
    cfg_path.write_text(yaml.safe_dump(base_config(tiny_model_dir, pairs_file, tmp_path / "two", batch_size=2,
                                                   **common)))
    return Path(single.model_dir), cfg_path


def test_the_slurm_script_runs_the_same_command_on_one_machine(tmp_path, tiny_model_dir, pairs_file):
    one, cfg_path = _configs(tmp_path, tiny_model_dir, pairs_file)
    env = {**_env(), "NPROC_PER_NODE": "2", "MASTER_PORT": _free_port()}
    proc = subprocess.run(["bash", str(SCRIPT), str(cfg_path)], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert max_abs_diff(weights(one), weights(tmp_path / "two" / "model")) < 1e-9


def test_two_nodes_at_a_rendezvous_equal_one_process(tmp_path, tiny_model_dir, pairs_file):
    one, cfg_path = _configs(tmp_path, tiny_model_dir, pairs_file)
    endpoint = f"127.0.0.1:{_free_port()}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
           "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", "test-two-nodes",
           "-m", "alignlab.cli", "train", str(cfg_path)]
    nodes = [subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, err) in zip(nodes, outs, strict=True):
        assert node.returncode == 0, err[-3000:]
    assert max_abs_diff(weights(one), weights(tmp_path / "two" / "model")) < 1e-9
