"""The "ray" backend: generation workers as Ray actors on a local cluster.

Two workers give the samples one process gives (the native backend draws from one stream per
(seed, prompt index, sample index), and the workers number their shares' prompts from the
caller's index); an online run with them trains the same weights as the single-process run; a
worker killed in the middle of a call is restarted by Ray, gets the current weights and samples
its share again, so the round is the uninterrupted round. One local cluster (2 CPUs) serves the
whole module; these tests run on one xdist worker."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from alignlab import train
from alignlab.generation import SamplingParams, make_generator
from alignlab.models import load_model
from tests.generation import ray_rewards
from tests.training.helpers import base_config, max_abs_diff, weights

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray"),
              pytest.mark.skipif(find_spec("ray") is None, reason="ray is not installed (pip install -e '.[ray]')")]

REWARD = "fn:tests.generation.ray_rewards:digits_seen"
PROMPTS = ["1+2=", "hello there", "x", "a much longer prompt of several words", "7*8=", "z z"]


@pytest.fixture(scope="module")
def cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20)
    yield
    ray.shutdown()


def same_samples(a, b) -> bool:
    """The same tokens, prompts and ends, sample for sample; log-probs equal to float32 rounding (a
    worker's share is a smaller batch, whose matmuls may round the last bit differently)."""
    assert [len(g) for g in a] == [len(g) for g in b]
    for ga, gb in zip(a, b, strict=True):
        for x, y in zip(ga, gb, strict=True):
            if (x.prompt_ids, x.token_ids, x.finished, x.text) != (y.prompt_ids, y.token_ids, y.finished, y.text):
                return False
            assert max(abs(p - q) for p, q in zip(x.logprobs, y.logprobs, strict=True)) < 2e-6
    return True


def test_two_workers_sample_what_one_process_samples_even_when_one_is_killed(cluster, tiny_model_dir):
    import ray

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = load_model(str(tiny_model_dir), "fp64")
    native = make_generator(model, tok, "native")
    workers = make_generator(model, tok, "ray", workers=2)
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=11)
    # 6 prompts: shares of 3 and 3, numbered from start=4 as one call would number them
    one, two = native.generate(PROMPTS, 3, params, start=4), workers.generate(PROMPTS, 3, params, start=4)
    assert same_samples(one, two)
    assert len({s.token_ids for g in two for s in g}) > 6  # they are samples, not copies
    # both workers and this process are on this host: each worker's default batch takes a third of
    # the memory share, not all of it
    assert ray.get([w.host_processes.remote() for w in workers.workers]) == [3, 3]
    # an odd count (shares of 3 and 2) and a single prompt (one worker idle)
    assert same_samples(native.generate(PROMPTS[:5], 2, params), workers.generate(PROMPTS[:5], 2, params))
    assert same_samples(native.generate(PROMPTS[:1], 2, params, start=9),
                        workers.generate(PROMPTS[:1], 2, params, start=9))

    # new weights reach the workers only through update_weights
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype) * 0.1)
    stale = workers.generate(PROMPTS, 3, params, start=4)
    assert same_samples(stale, one) and not same_samples(stale, native.generate(PROMPTS, 3, params, start=4))
    workers.update_weights(model)
    assert same_samples(workers.generate(PROMPTS, 3, params, start=4), native.generate(PROMPTS, 3, params, start=4))

    # worker 1 dies in the middle of its next call, with its share sampled and not yet returned:
    # Ray restarts it (with the weights it was built with), it gets the pushed ones and samples
    # its share again
    before = workers.pids()
    ray.get(workers.workers[1].exit_during_next_call.remote())
    got = workers.generate(PROMPTS, 4, params)
    after = workers.pids()
    assert after[0] == before[0] and after[1] != before[1]  # worker 1's process died and was replaced
    assert same_samples(got, native.generate(PROMPTS, 4, params))  # nothing lost, nothing twice
    assert ray.get([w.host_processes.remote() for w in workers.workers]) == [3, 3]  # the restarted one too
    workers.close()


def _online(model_dir, out, **extra) -> dict:
    return base_config(model_dir, "task:arithmetic", out, method="grpo", reward=[REWARD], num_generations=4,
                       max_new_tokens=6, dtype="fp64", warmup_steps=0, lr=1e-2, max_steps=3, **extra)


def _run(cfg) -> tuple[dict, list[dict], list[tuple[str, str]]]:
    ray_rewards.SCORED.clear()
    summary = train(cfg)
    lines = [json.loads(x) for x in (Path(cfg["output_dir"]) / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    return weights(summary.model_dir), lines, list(ray_rewards.SCORED)


def test_an_online_run_on_two_workers_equals_the_single_process_run(cluster, tiny_model_dir, tmp_path, monkeypatch):
    """GRPO, 3 rounds of 2 prompts × 4 samples (fp64), one prompt per worker, worker 0 killed in
    the middle of round 2: the same completions are scored in the same order as in one process,
    and the weights and losses agree to 1e-9."""
    import ray

    from alignlab.generation.ray_workers import RayGenerator

    one_w, one_m, one_s = _run(_online(tiny_model_dir, tmp_path / "one"))
    pushes, pids = [], []
    real = RayGenerator.update_weights

    def push_then_drill(self, model):
        real(self, model)
        pushes.append(1)
        if len(pushes) == 3:  # the push of round 2 (the first is the workers' start)
            pids.append(self.pids())
            ray.get(self.workers[0].exit_during_next_call.remote())
        elif len(pushes) == 4:
            pids.append(self.pids())

    monkeypatch.setattr(RayGenerator, "update_weights", push_then_drill)
    two_w, two_m, two_s = _run(_online(tiny_model_dir, tmp_path / "two", generation_backend="ray", ray_workers=2))
    assert len(pushes) == 4 and pids[0][0] != pids[1][0] and pids[0][1] == pids[1][1]  # worker 0 replaced
    assert two_s == one_s and len(one_s) == 3 * 8
    assert max_abs_diff(one_w, two_w) < 1e-9
    assert max_abs_diff(one_w, weights(tiny_model_dir)) > 1e-4  # it learned something
    for a, b in zip(one_m, two_m, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-9) and b["reward"] == a["reward"]


@pytest.mark.parametrize("adapted", ["lm_head", "embed_tokens"])
def test_a_lora_run_on_a_worker_equals_the_single_process_run_with_tied_embeddings_adapted(cluster, tied_model_dir,
                                                                                         tmp_path, adapted):
    """A LoRA policy whose output layer shares the input embeddings' weight, with a LoRA on one of
    them: the worker gets the two merged layers as weights of their own (one of them adapted), so
    its model is built untied (built tied, it had no output weight to take them: every round was
    refused). The single process samples on the native engine with the adapter in place; the same
    completions are scored and the adapters agree to 1e-9 (fp64)."""
    from safetensors.torch import load_file

    extra = dict(lora=True, lora_r=2, lora_alpha=4, lora_target_modules=["q_proj", adapted])
    _, _, one_s = _run(_online(tied_model_dir, tmp_path / "one", **extra))
    _, _, two_s = _run(_online(tied_model_dir, tmp_path / "two", generation_backend="ray", ray_workers=1, **extra))
    assert two_s == one_s and len(one_s) == 3 * 8
    one_a, two_a = (load_file(tmp_path / run / "model" / "adapter_model.safetensors") for run in ("one", "two"))
    assert max_abs_diff(one_a, two_a) < 1e-9
    assert max(float(v.abs().max()) for k, v in one_a.items() if "lora_B" in k) > 1e-4  # it learned something
