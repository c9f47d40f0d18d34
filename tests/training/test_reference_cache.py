"""Reference log-probs are computed once, cached, reused, and right; reference-free methods never
build a reference model."""

from __future__ import annotations

import contextlib
import gc
import math
import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from alignlab import train
from alignlab.data.load import load_records
from alignlab.data.render import Renderer
from alignlab.errors import UserError
from alignlab.logprobs import completion_logps
from alignlab.models import Reference, load_model, load_tokenizer
from alignlab.testbed.build import intra_op_threads
from alignlab.training import loop as loop_module
from alignlab.training.distributed import Dist
from alignlab.training.reference_cache import attach_reference, cache_key, live_reference
from tests.training.helpers import base_config, max_abs_diff, weights


def _examples(model_dir, pairs_file, max_length=128):
    tok = load_tokenizer(str(model_dir))
    records = load_records(pairs_file, "pair").records
    return tok, Renderer(tok, max_length).render(records).examples


def test_cached_values_equal_a_direct_computation(tiny_model_dir, pairs_file, tmp_path):
    """In fp64, so that batching differently (the cache sorts rows by length) changes nothing."""
    tok, examples = _examples(tiny_model_dir, pairs_file)
    model = load_model(str(tiny_model_dir), dtype="fp64")
    out = attach_reference(examples, lambda: contextlib.nullcontext(model), pad_id=tok.pad_token_id, batch_size=3,
                           dist=Dist(), cache_file=tmp_path / "c.safetensors", tokens=True,
                           autocast=contextlib.nullcontext, log=lambda _: None)
    prompts = [e.prompt_ids for e in examples]
    direct_c = completion_logps(model, prompts, [e.chosen.ids for e in examples], tok.pad_token_id)
    direct_r = completion_logps(model, prompts, [e.rejected.ids for e in examples], tok.pad_token_id)
    got = torch.tensor([e.ref for e in out], dtype=torch.float64)
    assert torch.allclose(got[:, 0], direct_c, atol=1e-9, rtol=0)
    assert torch.allclose(got[:, 1], direct_r, atol=1e-9, rtol=0)
    # per-token values add up to the sums and have one value per response token
    for e in out:
        assert len(e.ref_tokens[0]) == len(e.chosen.ids)
        assert sum(e.ref_tokens[0]) == pytest.approx(e.ref[0], abs=1e-9)
    # read back from the file: the same numbers, and the model is not run
    again = attach_reference(examples, _must_not_run, pad_id=tok.pad_token_id, batch_size=3, dist=Dist(),
                             cache_file=tmp_path / "c.safetensors", tokens=True, autocast=contextlib.nullcontext,
                             log=lambda _: None)
    assert [e.ref for e in again] == [e.ref for e in out]
    assert [e.ref_tokens for e in again] == [e.ref_tokens for e in out]


def _must_not_run():
    raise AssertionError("the reference model was run although the cache holds its values")


def test_a_damaged_cache_file_is_recomputed(tiny_model_dir, pairs_file, tmp_path):
    tok, examples = _examples(tiny_model_dir, pairs_file)
    model = load_model(str(tiny_model_dir))
    bad = tmp_path / "c.safetensors"
    bad.write_bytes(b"not a safetensors file")
    said = []
    out = attach_reference(examples, lambda: contextlib.nullcontext(model), pad_id=tok.pad_token_id, batch_size=4,
                           dist=Dist(), cache_file=bad, tokens=False, autocast=contextlib.nullcontext, log=said.append)
    assert any("unreadable cache" in s for s in said)
    assert all(e.ref is not None and len(e.ref) == 2 for e in out)


def test_non_finite_reference_logps_are_refused_and_never_cached(tiny_model_dir, pairs_file, tmp_path):
    """A model that gives NaN (here: its weights damaged in memory, after the load-time check) is
    named, and its values are not written to the cache. A NaN in the final norm's first weight
    reaches every logit of every position, so every example of the 16 is hit, the first (data row
    1) included."""
    tok, examples = _examples(tiny_model_dir, pairs_file)
    model = load_model(str(tiny_model_dir))
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    cache = tmp_path / "c.safetensors"
    with pytest.raises(UserError) as e:
        attach_reference(examples, lambda: contextlib.nullcontext(model), pad_id=tok.pad_token_id, batch_size=4,
                         dist=Dist(), cache_file=cache, tokens=True, autocast=contextlib.nullcontext,
                         log=lambda _: None, model_name="runs/my-model")
    assert str(e.value).startswith("reference log-probs: the model 'runs/my-model' gives non-finite values for 16 of "
                                   f"16 examples (the first is {pairs_file}, row 1); nothing was cached")
    assert str(e.value).endswith("try dtype='fp32')")  # how a Python caller sets it
    assert not cache.exists() and list(tmp_path.iterdir()) == [pairs_file]


def test_a_moving_references_non_finite_values_are_refused_by_name(tiny_model_dir, pairs_file):
    """The per-batch values of a reference that moves (``ref_sync_steps``) get the same check as
    cached ones: the data row, not a non-finite loss blamed on the learning rate."""
    tok, examples = _examples(tiny_model_dir, pairs_file)
    model = load_model(str(tiny_model_dir))
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    with pytest.raises(UserError, match=r"^reference log-probs: the model 'reference' gives non-finite values for 4 "
                                        rf"of 4 examples \(the first is {re.escape(str(pairs_file))}, row 3\)"):
        live_reference(examples[2:6], lambda: contextlib.nullcontext(model), pad_id=tok.pad_token_id, tokens=False,
                       autocast=contextlib.nullcontext)


@pytest.mark.parametrize("tokens", [False, True])
def test_a_cache_file_holding_non_finite_values_is_recomputed(tokens, tiny_model_dir, pairs_file, tmp_path):
    """Such a file is never written; one that holds them anyway is damaged: its values are computed
    afresh and it is replaced."""
    tok, examples = _examples(tiny_model_dir, pairs_file)
    model = load_model(str(tiny_model_dir))
    cache = tmp_path / "c.safetensors"
    run = dict(pad_id=tok.pad_token_id, batch_size=4, dist=Dist(), cache_file=cache, tokens=tokens,
               autocast=contextlib.nullcontext)
    good = attach_reference(examples, lambda: contextlib.nullcontext(model), log=lambda _: None, **run)
    saved = load_file(cache)
    key = "tokens" if tokens else "sums"
    saved[key][1] = float("nan")  # the same shapes, one value lost
    save_file(saved, cache)
    said = []
    again = attach_reference(examples, lambda: contextlib.nullcontext(model), log=said.append, **run)
    assert any("ignoring cache" in s and "non-finite" in s for s in said), said
    assert [e.ref for e in again] == [e.ref for e in good] and all(math.isfinite(v) for e in again for v in e.ref)
    assert [e.ref_tokens for e in again] == [e.ref_tokens for e in good]
    assert torch.isfinite(load_file(cache)[key]).all()  # replaced by the values computed afresh


def test_cache_key_follows_model_precision_data_and_tokenization(tiny_model_dir, pairs_file):
    _, short = _examples(tiny_model_dir, pairs_file, max_length=12)
    _, full = _examples(tiny_model_dir, pairs_file, max_length=128)
    key = cache_key("model-a", "fp32", full, False)
    assert key == cache_key("model-a", "fp32", full, False)
    assert len({key, cache_key("model-b", "fp32", full, False), cache_key("model-a", "bf16", full, False),
                cache_key("model-a", "fp32", short, False), cache_key("model-a", "fp32", full[:-1], False),
                cache_key("model-a", "fp32", full, True)}) == 6


@pytest.fixture
def count_references(monkeypatch):
    made = []
    original = Reference.__init__

    def counting(self, policy, frozen=None):
        made.append(1)
        original(self, policy, frozen)

    monkeypatch.setattr(Reference, "__init__", counting)
    return made


def test_second_run_reads_the_cache_and_trains_the_same(tiny_model_dir, pairs_file, tmp_path, count_references):
    cfg = base_config(tiny_model_dir, pairs_file, tmp_path / "a", max_steps=3, batch_size=4, cache_dir=str(tmp_path / "c"))
    train(cfg)
    assert len(count_references) == 1
    assert len(list((tmp_path / "c" / "reference_logps").iterdir())) == 1
    train({**cfg, "output_dir": str(tmp_path / "b")})
    assert len(count_references) == 1  # no second reference model: the values came from the cache
    assert max_abs_diff(weights(tmp_path / "a" / "model"), weights(tmp_path / "b" / "model")) == 0.0
    train({**cfg, "output_dir": str(tmp_path / "d"), "cache": False})
    assert len(count_references) == 2
    assert max_abs_diff(weights(tmp_path / "a" / "model"), weights(tmp_path / "d" / "model")) < 1e-6


def test_another_thread_count_or_instruction_set_computes_its_own_entry(tiny_model_dir, pairs_file, tmp_path,
                                                                         count_references, monkeypatch):
    """Reference log-probs differ in the last bits between thread counts and instruction sets: a run
    with another number of threads, or with MKL capped to other instructions, does not reuse the
    entry of the first run; the same setting again does."""
    cfg = base_config(tiny_model_dir, pairs_file, tmp_path / "a", max_steps=1, batch_size=4, cache_dir=str(tmp_path / "c"))
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS", raising=False)  # the run's own setting, whatever the caller's
    with intra_op_threads(1):
        train(cfg)
    with intra_op_threads(2):
        train({**cfg, "output_dir": str(tmp_path / "b")})
        monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "SSE4_2")
        train({**cfg, "output_dir": str(tmp_path / "d")})
        monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS")
        train({**cfg, "output_dir": str(tmp_path / "e")})
    assert len(count_references) == 3
    assert len(list((tmp_path / "c" / "reference_logps").iterdir())) == 3


def _models_alive() -> int:
    gc.collect()
    # whole models only (a LlamaForCausalLM holds a LlamaModel, itself a PreTrainedModel)
    return sum(type(o).__name__.endswith("ForCausalLM") and isinstance(o, PreTrainedModel) for o in gc.get_objects())


@pytest.mark.parametrize("method,expected_references", [("simpo", 0), ("orpo", 0), ("dpo", 1)])
def test_models_in_memory_during_training(method, expected_references, tiny_model_dir, pairs_file, tmp_path,
                                          count_references, monkeypatch):
    """While the loop runs only the policy is alive, whatever the method; a reference-free method
    never builds a reference at all, a reference method builds one once to fill the cache."""
    seen = []
    real = loop_module.run_loop

    def spy(inp):
        seen.append(_models_alive())
        return real(inp)

    monkeypatch.setattr("alignlab.training.run.run_loop", spy)
    gc.collect()
    before = _models_alive()
    train(base_config(tiny_model_dir, pairs_file, tmp_path / "r", method=method, max_steps=1, batch_size=4,
                      cache_dir=str(tmp_path / "c")))
    assert seen == [before + 1]
    assert len(count_references) == expected_references
