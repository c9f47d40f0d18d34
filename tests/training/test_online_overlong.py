"""An online run with DAPO's soft overlong punishment beside another reward: the punishment is
logged as its own ``reward/<spec>`` component, with the values of the token counts sampled."""

from __future__ import annotations

import dataclasses
import json

import pytest

from alignlab import train
from alignlab.models import load_tokenizer
from tests.training import online_rewards
from tests.training.helpers import base_config

DIGITS = "fn:tests.training.online_rewards:digits"
OVERLONG = "overlong:cache=6"


def test_grpo_logs_the_punishment_of_the_sampled_lengths(tmp_path, tiny_model_dir, monkeypatch):
    """Each round's samples are recorded as the generator returns them; the logged component is the
    mean of TRL 1.16's ``get_soft_overlong_punishment(12, 6)`` over their ``token_ids`` (max is the
    run's max_new_tokens, 12), and the logged reward the mean of digits + punishment. The random
    tiny model seldom samples EOS within 12 tokens, so the sampler also stops on a tenth of the
    vocabulary (kept in the sample, as EOS is): lengths then fall inside and outside the buffer."""
    from trl.rewards import get_soft_overlong_punishment

    import alignlab.training.online_run as online_run

    drawn, made = [], online_run.make_generator

    def recording(*args, **kwargs):
        generator = made(*args, **kwargs)
        generate = generator.generate

        def record(prompts, n, params, start=0):
            stops = tuple(range(3, generator.tok.vocab_size, 10))
            out = generate(prompts, n, dataclasses.replace(params, stop_token_ids=stops), start=start)
            drawn.append([s for group in out for s in group])
            return out

        generator.generate = record
        return generator

    monkeypatch.setattr(online_run, "make_generator", recording)
    cfg = base_config(tiny_model_dir, "task:arithmetic", tmp_path / "run", method="grpo", reward=[DIGITS, OVERLONG],
                      num_generations=4, max_new_tokens=12, dtype="fp64", warmup_steps=0, lr=1e-2, max_steps=3)
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [m for m in rows if "loss" in m]
    assert len(rows) == 3 and len(drawn) == 3
    punish = get_soft_overlong_punishment(max_completion_len=12, soft_punish_cache=6)
    seen = []
    for m, samples in zip(rows, drawn, strict=True):
        expected = punish(completion_ids=[list(s.token_ids) for s in samples])
        digits = [online_rewards.digits("", s.text) for s in samples]
        assert m[f"reward/{OVERLONG}"] == pytest.approx(sum(expected) / len(expected), abs=1e-12)
        assert m["reward"] == pytest.approx(sum(d + e for d, e in zip(digits, expected, strict=True)) / len(samples),
                                            abs=1e-12)
        seen += expected
    assert len(set(seen)) > 1  # lengths inside and outside the buffer, so the check can tell them apart
    # the sampled count, not the text counted again: a finished sample ends with EOS, which its text lacks
    tok = load_tokenizer(str(tiny_model_dir))
    samples = [s for round_ in drawn for s in round_]
    assert any(len(tok(s.text, add_special_tokens=False)["input_ids"]) != len(s.token_ids) for s in samples)
