"""A run whose output_dir some process does not see (each machine's own disk instead of a
shared file system) stops with one line at the checkpoint it cannot write whole (FSDP) or that a
process cannot see (DDP), or at resume when
the processes find different checkpoints; a sharded checkpoint that lacks a process's shards is
reported and skipped on resume.

Run as ``python -m tests.training.test_fsdp_shared ARGS`` (under torchrun) it is the CLI in which
process 1, from checkpoint 2 on, sees the directory the first process makes for a checkpoint under
another path (``elsewhere/`` instead of ``checkpoints/``), as a second machine with a disk of its
own would: a directory of that name is not there; and process 1 finds no checkpoint to resume."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from alignlab.training.checkpoint import newest_valid
from tests.training.helpers import base_config
from tests.training.test_fsdp import _torchrun

pytestmark = pytest.mark.slow


def test_output_dir_not_shared_is_one_line_and_a_checkpoint_missing_shards_is_skipped(tmp_path, tiny_model_dir,
                                                                                        pairs_file):
    out = tmp_path / "two"
    cfg = base_config(tiny_model_dir, pairs_file, out, batch_size=2, fsdp=True, max_steps=3, save_every=1,
                      keep_checkpoints=0)
    proc = _torchrun(cfg, tmp_path, "two", module="tests.training.test_fsdp_shared", ok=False)
    assert proc.returncode != 0
    lines = [x for x in proc.stderr.splitlines() if x.startswith("alignlab: error:")]
    assert lines and lines[0].startswith("alignlab: error: output_dir: process 1 does not see ")
    assert "every machine of the run sees" in lines[0]
    root = out / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["step-00000001"]  # nothing of step 2, not even a temporary
    assert not (out / "elsewhere").exists()  # process 1 wrote nothing where the others cannot see it

    # step 1 as a run whose processes each wrote on a disk of their own would leave it: one shard,
    # and a manifest that lists only that one
    step1 = root / "step-00000001"
    gone = "shards/shard-00002-model-00001-of-00001.safetensors"
    (step1 / gone).unlink()
    manifest = json.loads((step1 / "manifest.json").read_text())
    del manifest["sha256"][gone]
    (step1 / "manifest.json").write_text(json.dumps(manifest))
    reports: list[str] = []
    assert newest_valid(root, report=reports.append) is None
    assert reports == [f"ignoring checkpoint {step1}: it holds the shards of 1 of the 2 processes that wrote it"]


def test_ddp_output_dir_not_shared_is_one_line_at_the_checkpoint_the_others_cannot_see(tmp_path, tiny_model_dir,
                                                                                       pairs_file):
    """DDP: the first process writes each checkpoint alone; a process that cannot see it could not
    resume from it, so the run stops there (not at a resume after a crash, when it is too late)."""
    out = tmp_path / "ddp"
    cfg = base_config(tiny_model_dir, pairs_file, out, batch_size=2, max_steps=3, save_every=1, keep_checkpoints=0)
    proc = _torchrun(cfg, tmp_path, "ddp", module="tests.training.test_fsdp_shared", ok=False)
    assert proc.returncode != 0
    lines = [x for x in proc.stderr.splitlines() if x.startswith("alignlab: error:")]
    step2 = out / "checkpoints" / "step-00000002"
    # every process says it; the first names the folder as it wrote it (process 1 is handed another)
    assert (f"alignlab: error: output_dir: process 1 does not see {step2}, which the first process wrote as a "
            "checkpoint (it alone writes them); output_dir must be on a file system that every machine of the run "
            "sees (a shared or network file system)") in lines, proc.stderr[-3000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]
    assert newest_valid(out / "checkpoints", report=lambda _: None) == step2  # what was written stays whole


def test_resuming_processes_that_find_different_checkpoints_is_one_line(tmp_path, tiny_model_dir, pairs_file):
    """DDP: the first process alone writes the checkpoints; a process on a disk of its own finds
    none (simulated on process 1) and would start from step 0 beside the others."""
    cfg = base_config(tiny_model_dir, pairs_file, tmp_path / "ddp", batch_size=2, max_steps=3, save_every=1,
                      keep_checkpoints=0)
    _torchrun(cfg, tmp_path, "ddp")
    shutil.rmtree(tmp_path / "ddp" / "checkpoints" / "step-00000003")
    proc = _torchrun({**cfg, "resume": True}, tmp_path, "resume",
                     module="tests.training.test_fsdp_shared", ok=False)
    assert proc.returncode != 0
    lines = [x for x in proc.stderr.splitlines() if x.startswith("alignlab: error:")]
    assert lines and lines[0] == (
        f"alignlab: error: resume: the processes find different newest checkpoints in {tmp_path / 'ddp' / 'checkpoints'} "
        "(process 0: step-00000002, process 1: none); output_dir must be on a file system that every machine of the "
        "run sees (a shared or network file system)")


def _finds_nothing_on_process_1() -> None:
    import os

    import alignlab.training.loop as loop

    real = loop.ckpt.newest_valid

    def newest_valid(root, report=print):
        return None if os.environ.get("RANK") == "1" else real(root, report)

    loop.ckpt.newest_valid = newest_valid


def _blind_from_step_2() -> None:
    """Process 1 is handed, from checkpoint 2 on, the first process's new checkpoint folder under
    ``elsewhere/``: whatever engine writes the checkpoint (FSDP's shards, DeepSpeed's), the folder
    every process writes into comes through ``Dist.from_main`` (``checkpoint.shared_tmp``), and so
    does the checkpoint the first process writes alone (DDP)."""
    import re

    from alignlab.training.distributed import Dist

    real = Dist.from_main

    def from_main(self, read):
        value = real(self, read)
        made = re.search(r"/checkpoints/(?:\.tmp-)?step-(\d+)", value) if isinstance(value, str) else None
        if self.rank == 1 and made and int(made[1]) >= 2:
            return value.replace("/checkpoints/", "/elsewhere/")
        return value

    Dist.from_main = from_main


if __name__ == "__main__":
    from alignlab.cli import main

    _blind_from_step_2()
    _finds_nothing_on_process_1()
    sys.exit(main())
