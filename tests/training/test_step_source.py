"""The loop is fed by a step source: one of its own plugs into the same loop, its state travels in
the checkpoints, and a run interrupted and resumed through it ends with the weights of an
uninterrupted one."""

from __future__ import annotations

import pytest
import torch

import alignlab.training.loop as loop
import alignlab.training.run as run
from alignlab import train
from alignlab.training import checkpoint as ckpt
from alignlab.training.source import OfflineSource
from tests.training.helpers import base_config, weights


class CountingSource(OfflineSource):
    """Today's data order, plus a state of its own: how many steps it has served. It refuses to
    serve a step out of turn, so a resumed run passes only if the loop restored its state."""

    asked: list[int] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.served = 0

    def step(self, step: int):
        assert step == self.served, f"asked for step {step} after serving {self.served}"
        CountingSource.asked.append(step)
        self.served += 1
        return super().step(step)

    def state_dict(self, done: int) -> dict:
        return {**super().state_dict(done), "served": self.served}

    def load_state_dict(self, saved: dict) -> None:
        self.served = saved["served"]


class Crash(Exception):
    pass


def test_a_source_of_its_own_feeds_the_loop_and_resumes_from_its_state(tmp_path, tiny_model_dir, pairs_file,
                                                                      monkeypatch):
    cfg = dict(max_steps=6, batch_size=3, save_every=2, lr=1e-3)
    plain = train(base_config(tiny_model_dir, pairs_file, tmp_path / "plain", **cfg))
    monkeypatch.setattr(run, "OfflineSource", CountingSource)
    CountingSource.asked = []
    full = train(base_config(tiny_model_dir, pairs_file, tmp_path / "full", **cfg))
    assert CountingSource.asked == [0, 1, 2, 3, 4, 5]

    real_save = loop.save

    def save_then_crash(inp, unwrapped, optimizer, scheduler, step, *rest):
        real_save(inp, unwrapped, optimizer, scheduler, step, *rest)
        if step == 4:
            raise Crash

    with monkeypatch.context() as m:
        m.setattr(loop, "save", save_then_crash)
        with pytest.raises(Crash):
            train(base_config(tiny_model_dir, pairs_file, tmp_path / "cut", **cfg))
    saved = ckpt.read_state(ckpt.list_checkpoints(tmp_path / "cut" / "checkpoints")[0])
    assert saved["step"] == 4 and saved["data_position"]["served"] == 4
    CountingSource.asked = []
    resumed = train(base_config(tiny_model_dir, pairs_file, tmp_path / "cut", resume=True, **cfg))
    assert CountingSource.asked == [4, 5]

    a, b, c = weights(plain.model_dir), weights(full.model_dir), weights(resumed.model_dir)
    assert all(torch.equal(a[k], b[k]) and torch.equal(b[k], c[k]) for k in a)
    assert any(not torch.equal(a[k], weights(tiny_model_dir)[k]) for k in a)  # it trained


def test_the_data_digest_reads_the_data_and_nothing_computed_from_models():
    """What a resume may compute again to other values (reference log-probs with other threads or
    without the cache, reference samples, KTO's mismatched completion, BCO's UDM weights) or what
    names a file's place (its path) leaves the digest as it is; a token, a label, a score or a
    row changes it. Token tuples are framed by their length: (1, 2) + (3,) is not (1,) + (2, 3)."""
    import dataclasses

    from alignlab.data.render import Response, TokenizedPair, TokenizedUnpaired
    from alignlab.training.source import data_digest

    r = Response((5, 6), (1, 1))
    pair = TokenizedPair((1, 2), r, Response((7,), (1,)), row=3, source="a.jsonl")
    kto = TokenizedUnpaired((1, 2), r, True, row=4, source="a.jsonl")
    base = data_digest([pair, kto])
    same = [dataclasses.replace(pair, ref=(0.5, 0.25), ref_tokens=((0.1,), (0.2,)), source="/moved/a.jsonl"),
            dataclasses.replace(kto, kl_completion=Response((9,), (1,)), udm_weight=2.5, ref=(1.0,))]
    assert data_digest(same) == base
    for changed in ([dataclasses.replace(pair, chosen=Response((5, 8), (1, 1))), kto],
                    [dataclasses.replace(pair, score_gap=1.0), kto], [pair, dataclasses.replace(kto, label=False)],
                    [dataclasses.replace(pair, row=9), kto], [kto, pair],
                    [dataclasses.replace(pair, prompt_ids=(1,), chosen=Response((2, 5, 6), (1, 1, 1))), kto]):
        assert data_digest(changed) != base
    assert data_digest([(1, "2+2=")]) != data_digest([(1, "2+3=")])
