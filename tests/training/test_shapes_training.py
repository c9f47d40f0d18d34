"""Training on each data shape: wrong shapes are refused with the converter to use, method inputs
that need extra columns are checked, D2O's samples are cached, KTO's mismatched pairs are right."""

from __future__ import annotations

import json

import pytest

from alignlab import train
from alignlab.errors import ConfigError, DataError, UserError
from alignlab.generation.native import NativeGenerator
from alignlab.training.prepare import add_mismatched
from tests.conftest import make_pairs, write_jsonl
from tests.training.helpers import base_config
from tests.training.shape_data import write_shape


def test_kto_on_pairs_names_the_converter(tmp_path, tiny_model_dir, pairs_file):
    with pytest.raises(UserError) as e:
        train(base_config(tiny_model_dir, pairs_file, tmp_path / "r", method="kto"))
    msg = str(e.value)
    assert "unpaired" in msg and "alignlab convert pairs-to-unpaired" in msg


def test_listmle_on_scored_rows_names_the_converter(tmp_path, tiny_model_dir):
    rows = [{"prompt": "p", "completion": f"answer {i}", "score": float(i)} for i in range(4)]
    data = write_jsonl(tmp_path / "scored.jsonl", rows)
    with pytest.raises(UserError, match="scored-to-ranked"):
        train(base_config(tiny_model_dir, data, tmp_path / "r", method="listmle"))


def test_dpo_on_unpaired_data_says_there_is_no_converter(tmp_path, tiny_model_dir):
    data = write_shape(tmp_path, "unpaired")
    with pytest.raises(UserError) as e:
        train(base_config(tiny_model_dir, data, tmp_path / "r", method="dpo"))
    assert "pair" in str(e.value) and "unpaired" in str(e.value)


def test_listmle_refuses_ties_with_the_row(tmp_path, tiny_model_dir):
    rows = [{"prompt": "p", "completions": ["a", "b", "c"], "scores": [3.0, 2.0, 1.0]},
            {"prompt": "q", "completions": ["a", "b", "c"], "scores": [3.0, 3.0, 1.0]}]
    data = write_jsonl(tmp_path / "ranked.jsonl", rows)
    with pytest.raises(DataError) as e:
        train(base_config(tiny_model_dir, data, tmp_path / "r", method="listmle"))
    assert "ranked.jsonl, row 2" in str(e.value)
    # listnet allows ties: the same file trains
    train(base_config(tiny_model_dir, data, tmp_path / "r2", method="listnet", max_steps=1))


def test_soft_preference_needs_a_strength_per_pair(tmp_path, tiny_model_dir, pairs_file):
    with pytest.raises(DataError) as e:
        train(base_config(tiny_model_dir, pairs_file, tmp_path / "r", method="soft-preference"))
    assert "pairs.jsonl, row 1, field 'strength'" in str(e.value)


def test_bvpo_needs_mix_data_and_others_refuse_it(tmp_path, tiny_model_dir, pairs_file):
    with pytest.raises(ConfigError, match="mix_data"):
        train(base_config(tiny_model_dir, pairs_file, tmp_path / "r", method="bvpo"))
    with pytest.raises(ConfigError, match="mix_data"):
        train(base_config(tiny_model_dir, pairs_file, tmp_path / "r", method="dpo", mix_data=str(pairs_file)))


def test_bvpo_weights_the_two_sets_by_their_share(tmp_path, tiny_model_dir):
    """12 trace pairs and 4 empty-trace pairs, α = 0.8: trace_fraction f = 12/16 = 0.75, weights
    α/f = 1.0667 (trace) and (1−α)/(1−f) = 0.8 (empty); over the whole set their mean is
    (12·0.8/0.75 + 4·0.2/0.25)/16 = (12.8 + 3.2)/16 = 1. A wrong f (say 0.5) would give
    (12·1.6 + 4·0.4)/16 = 1.3."""
    trace = write_jsonl(tmp_path / "trace.jsonl", make_pairs(12, seed=3))
    empty = write_jsonl(tmp_path / "empty.jsonl", make_pairs(4, seed=4))
    s = train(base_config(tiny_model_dir, trace, tmp_path / "r", method="bvpo", mix_data=str(empty), max_steps=1,
                          batch_size=16, alpha=0.8))
    assert s.data["train_examples"] == 16
    assert s.train_metrics["bvpo/weight"] == pytest.approx(1.0, abs=1e-6)


def test_d2o_samples_are_drawn_once_and_cached(tmp_path, tiny_model_dir, negatives_file, monkeypatch):
    calls = []
    real = NativeGenerator.generate_ids

    def counting(self, contexts, n, params, start=0):
        calls.append((len(contexts), n))
        return real(self, contexts, n, params, start)

    monkeypatch.setattr(NativeGenerator, "generate_ids", counting)
    cfg = base_config(tiny_model_dir, negatives_file, tmp_path / "a", method="d2o", num_samples=3,
                      sample_max_new_tokens=5, max_steps=1, cache_dir=str(tmp_path / "c"))
    first = train(cfg)
    assert calls == [(8, 3), (8, 3)]  # two chunks of SAMPLE_CHUNK = 8 prompts
    second = train({**cfg, "output_dir": str(tmp_path / "b")})
    assert calls == [(8, 3), (8, 3)]  # two chunks of SAMPLE_CHUNK = 8 prompts
    assert second.train_metrics["loss"] == pytest.approx(first.train_metrics["loss"], abs=1e-12)


def test_kto_mismatched_completions_come_from_other_prompts(tmp_path):
    from alignlab.data.render import Response, TokenizedUnpaired

    examples = [TokenizedUnpaired((i % 3,), Response((10 + i,), (1,)), bool(i % 2), row=i + 1) for i in range(6)]
    out = add_mismatched(examples, seed=0)
    completions = sorted(e.kl_completion.ids for e in out)
    assert completions == sorted(e.completion.ids for e in examples)  # a permutation of the completions
    by_completion = {e.completion.ids: e.prompt_ids for e in examples}
    for e in out:
        assert by_completion[e.kl_completion.ids] != e.prompt_ids
    assert [e.kl_completion for e in add_mismatched(examples, seed=0)] == [e.kl_completion for e in out]


def test_kto_logs_its_reference_point(tmp_path, tiny_model_dir, unpaired_file):
    s = train(base_config(tiny_model_dir, unpaired_file, tmp_path / "r", method="kto", max_steps=2, batch_size=8))
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # step 1: policy = reference, z0 = 0
    assert s.steps == 2


def test_mismatched_completions_fit_max_length():
    from alignlab.data.render import Response, TokenizedUnpaired

    long_prompt = TokenizedUnpaired(tuple(range(30)), Response((1, 2), (1, 1)), True, row=1)
    short_prompt = TokenizedUnpaired((5,), Response(tuple(range(100, 120)), (1,) * 20), False, row=2)
    out = add_mismatched([long_prompt, short_prompt], seed=0, max_length=35)
    assert out[0].kl_completion.ids == tuple(range(100, 105))  # 35 − 30 tokens of the other response
    assert out[1].kl_completion.ids == (1, 2)


def test_a_cache_that_cannot_be_written_is_reported_and_the_run_goes_on(tmp_path, tiny_model_dir, pairs_file,
                                                                         negatives_file, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    s = train(base_config(tiny_model_dir, pairs_file, tmp_path / "r", max_steps=1, cache_dir=str(blocker / "c")))
    assert s.steps == 1
    assert "reference log-probs: not cached, cannot write" in capsys.readouterr().err
    s = train(base_config(tiny_model_dir, negatives_file, tmp_path / "d", method="d2o", num_samples=2,
                          sample_max_new_tokens=4, max_steps=1, cache_dir=str(blocker / "c")))
    assert s.steps == 1
    assert "samples: not cached, cannot write" in capsys.readouterr().err


def test_bvpo_with_an_empty_set_is_refused_before_training(tmp_path, tiny_model_dir, pairs_file):
    long_rows = [{"prompt": "word " * 200, "chosen": "a", "rejected": "b"}] * 3
    mix = write_jsonl(tmp_path / "mix.jsonl", long_rows)
    with pytest.raises(ConfigError, match="mix_data: no training example is left"):
        train(base_config(tiny_model_dir, pairs_file, tmp_path / "r", method="bvpo", mix_data=str(mix),
                          skip_invalid=True, max_length=64))
