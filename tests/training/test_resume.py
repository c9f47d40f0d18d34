"""A run interrupted after step k and resumed ends with exactly the weights of an
uninterrupted run (CPU, fp32, bitwise)."""

from __future__ import annotations

import json

import pytest
import torch

import alignlab.training.loop as loop
from alignlab import train
from alignlab.errors import ConfigError
from alignlab.training import checkpoint as ckpt
from tests.training.helpers import base_config, weights


class Crash(Exception):
    pass


def _crash_after_saving(monkeypatch, at_step: int) -> None:
    real_save = loop.save

    def save_then_crash(inp, unwrapped, optimizer, scheduler, step, *rest):
        real_save(inp, unwrapped, optimizer, scheduler, step, *rest)
        if step == at_step:
            raise Crash(f"simulated crash after the checkpoint of step {at_step}")

    monkeypatch.setattr(loop, "save", save_then_crash)


@pytest.mark.parametrize("method,data_fixture", [("dpo", "pairs_file"), ("sft", "sft_file"), ("lcpo", "pairs_file"),
                                                 ("bco", "unpaired_file"), ("reward_model", "pairs_file")])
def test_resume_is_exact(tmp_path, tiny_model_dir, monkeypatch, request, method, data_fixture):
    data = request.getfixturevalue(data_fixture)
    # 16 examples, batch 3: epochs end mid-batch, so resume also crosses an epoch boundary.
    cfg = dict(method=method, max_steps=8, batch_size=3, save_every=3, scheduler="cosine", warmup_steps=2,
               weight_decay=0.01, eval_fraction=0.2, eval_every=2)
    full = train(base_config(tiny_model_dir, data, tmp_path / "full", **cfg))

    with monkeypatch.context() as m:
        _crash_after_saving(m, at_step=6)
        with pytest.raises(Crash):
            train(base_config(tiny_model_dir, data, tmp_path / "cut", **cfg))
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "cut" / "checkpoints")] == ["step-00000006", "step-00000003"]
    resumed = train(base_config(tiny_model_dir, data, tmp_path / "cut", resume=True, **cfg))

    a, b = weights(full.model_dir), weights(resumed.model_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The metrics file reads as one run: every step once, with the same numbers.
    full_lines = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    cut_lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(x).items() if k != "tokens_per_s"} for x in full_lines]
    strip_cut = [{k: v for k, v in json.loads(x).items() if k != "tokens_per_s"} for x in cut_lines]
    assert strip == strip_cut


def test_a_run_moved_to_another_folder_resumes_exactly(tmp_path, tiny_model_dir, pairs_file, monkeypatch):
    """Interrupted after step 2's checkpoint, its folder moved, resumed there: the same weights as
    an uninterrupted run (the folder is found by its run.yaml; output_dir is not compared)."""
    import shutil

    cfg = dict(max_steps=4, batch_size=4, save_every=2)
    full = train(base_config(tiny_model_dir, pairs_file, tmp_path / "full", **cfg))
    with monkeypatch.context() as m:
        _crash_after_saving(m, at_step=2)
        with pytest.raises(Crash):
            train(base_config(tiny_model_dir, pairs_file, tmp_path / "cut", **cfg))
    shutil.move(tmp_path / "cut", tmp_path / "moved")
    resumed = train(base_config(tiny_model_dir, pairs_file, tmp_path / "moved", resume=True, **cfg))
    assert resumed.steps == 4
    a, b = weights(full.model_dir), weights(resumed.model_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_partial_checkpoint_is_ignored(tmp_path, tiny_model_dir, pairs_file, capsys):
    cfg = base_config(tiny_model_dir, pairs_file, tmp_path / "run", max_steps=4, save_every=2, batch_size=4)
    train(cfg)
    root = tmp_path / "run" / "checkpoints"
    newest = ckpt.list_checkpoints(root)[0]
    (newest / "manifest.json").unlink()  # as if the write had died before its last file
    assert ckpt.verify(newest) is not None
    older = ckpt.list_checkpoints(root)[1]
    assert ckpt.newest_valid(root, report=print) == older
    assert "ignoring checkpoint" in capsys.readouterr().out


def test_corrupted_checkpoint_fails_its_checksum(tmp_path, tiny_model_dir, pairs_file):
    train(base_config(tiny_model_dir, pairs_file, tmp_path / "run", max_steps=2, save_every=1, batch_size=4))
    newest = ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")[0]
    data = bytearray((newest / "trainable.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (newest / "trainable.safetensors").write_bytes(bytes(data))
    assert "checksum" in ckpt.verify(newest)


def test_state_that_matches_its_checksum_but_is_not_json_is_skipped(tmp_path, tiny_model_dir, pairs_file):
    """A state.json edited by hand, manifest and all, is reported as unreadable, never loaded."""
    train(base_config(tiny_model_dir, pairs_file, tmp_path / "run", max_steps=2, save_every=1, batch_size=4))
    root = tmp_path / "run" / "checkpoints"
    newest, older = ckpt.list_checkpoints(root)
    (newest / "state.json").write_text("{not json")
    manifest = json.loads((newest / "manifest.json").read_text())
    manifest["sha256"]["state.json"] = ckpt.sha256_file(newest / "state.json")
    (newest / "manifest.json").write_text(json.dumps(manifest))
    assert ckpt.verify(newest) == "state.json is unreadable"
    assert ckpt.newest_valid(root, report=lambda _: None) == older


def test_pruning_counts_complete_checkpoints_only(tmp_path):
    """keep 2 of steps 2, 4, 6 and a folder step-10 without a manifest: steps 6 and 4 stay, and the
    folder (no run's checkpoint) is left as it is, not counted as one of the two."""
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6, 10):
        (root / ckpt.step_name(step)).mkdir(parents=True)
        if step != 10:
            (root / ckpt.step_name(step) / "manifest.json").write_text("{}")
    ckpt.prune(root, 2)
    assert [c.name for c in ckpt.list_checkpoints(root)] == [ckpt.step_name(s) for s in (10, 6, 4)]


def test_a_file_where_the_run_keeps_its_checkpoints_is_one_line(tmp_path, tiny_model_dir, pairs_file):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("x")
    with pytest.raises(ConfigError, match="checkpoints' is a file, where the run keeps its checkpoints; move it away"):
        train(base_config(tiny_model_dir, pairs_file, tmp_path / "run", max_steps=1, batch_size=4))


def test_output_dir_with_another_run_is_refused(tmp_path, tiny_model_dir, pairs_file):
    train(base_config(tiny_model_dir, pairs_file, tmp_path / "run", max_steps=1, batch_size=4))
    with pytest.raises(ConfigError, match="already holds a run"):
        train(base_config(tiny_model_dir, pairs_file, tmp_path / "run", max_steps=1, batch_size=4))
    with pytest.raises(ConfigError, match="differs in lr"):
        train(base_config(tiny_model_dir, pairs_file, tmp_path / "run", max_steps=1, batch_size=4, lr=0.5,
                          resume=True))
    again = train(base_config(tiny_model_dir, pairs_file, tmp_path / "run", max_steps=1, batch_size=4, lr=0.5,
                              overwrite=True))
    assert again.steps == 1


def test_a_resume_on_changed_data_of_the_same_size_is_refused(tmp_path, tiny_model_dir, pairs_file, monkeypatch):
    """One pair's chosen answer edited after the checkpoint of step 2, as many rows as before: the
    resumed run would train on other examples than the checkpoint's run. Refused in one line; the
    data as it was resumes, to the uninterrupted run's weights."""
    cfg = dict(max_steps=4, batch_size=4, save_every=2)
    with monkeypatch.context() as m:
        _crash_after_saving(m, at_step=2)
        with pytest.raises(Crash):
            train(base_config(tiny_model_dir, pairs_file, tmp_path / "cut", **cfg))
    original = pairs_file.read_text()
    rows = [json.loads(line) for line in original.splitlines()]
    rows[5]["chosen"] = rows[5]["chosen"] + " (edited)"
    pairs_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError) as e:
        train(base_config(tiny_model_dir, pairs_file, tmp_path / "cut", resume=True, **cfg))
    assert str(e.value).startswith("resume: checkpoint step-00000002 was written from other data: as many examples, "
                                   "but what they hold differs") and "\n" not in str(e.value)
    pairs_file.write_text(original)
    resumed = train(base_config(tiny_model_dir, pairs_file, tmp_path / "cut", resume=True, **cfg))
    full = train(base_config(tiny_model_dir, pairs_file, tmp_path / "full", **cfg))
    a, b = weights(full.model_dir), weights(resumed.model_dir)
    assert resumed.steps == 4 and all(torch.equal(a[k], b[k]) for k in a)
