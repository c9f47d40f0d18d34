"""A run's Ray workers end with the run: the workers and the local cluster the run started stop
when ``train`` returns, so a second run in the same process starts afresh; a cluster too small for
``ray_workers`` and ``ray_backend: vllm`` on a CPU policy are one-line errors, not a wait forever."""

from __future__ import annotations

import threading
from importlib.util import find_spec

import pytest

from alignlab.errors import UserError
from tests.conftest import process_alive
from tests.training.helpers import base_config

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray"),
              pytest.mark.skipif(find_spec("ray") is None, reason="ray is not installed (pip install -e '.[ray]')")]


def test_a_run_stops_its_workers_and_the_cluster_it_started(tmp_path, tiny_model_dir, monkeypatch):
    import ray

    from alignlab import train
    from alignlab.generation.ray_workers import RayGenerator

    assert not ray.is_initialized()
    pids: list[int] = []
    real_close = RayGenerator.close

    def close(self):
        pids.extend(self.pids() if self.workers else [])
        real_close(self)

    monkeypatch.setattr(RayGenerator, "close", close)
    cfg = base_config(tiny_model_dir, "task:arithmetic", tmp_path / "run", method="grpo", num_generations=2,
                      max_new_tokens=3, batch_size=2, max_steps=1, generation_backend="ray", ray_workers=1)
    train(cfg)
    assert not ray.is_initialized()  # the local cluster this run started is gone
    assert len(pids) == 1
    for _ in range(100):  # the worker's process ends with the cluster
        if not process_alive(pids[0]):
            break
        threading.Event().wait(0.1)
    assert not process_alive(pids[0])


def test_a_cluster_without_room_for_the_workers_is_one_line_and_kept(tiny_model_dir):
    """A process that joined a 1-CPU cluster asks for 2 workers: refused at once (an actor that
    cannot be placed would wait forever), and the cluster it had is left as it was."""
    import ray
    from transformers import AutoTokenizer

    from alignlab.generation import make_generator
    from alignlab.models import load_model

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = load_model(str(tiny_model_dir), "fp32")
    ray.init(num_cpus=1, include_dashboard=False, object_store_memory=128 * 2**20)
    caught: list[BaseException] = []

    def build():
        try:
            make_generator(model, tok, "ray", workers=2)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            caught.append(exc)

    try:
        thread = threading.Thread(target=build, daemon=True)
        thread.start()
        thread.join(timeout=60)
        assert not thread.is_alive(), "building 2 workers on a 1-CPU cluster waited instead of failing"
        assert len(caught) == 1 and isinstance(caught[0], UserError)
        message = str(caught[0])
        assert message.startswith("ray_workers: 2 workers need 2 CPUs and the Ray cluster has 1;") and "\n" not in message
        assert ray.is_initialized()  # not this generator's to stop
    finally:
        ray.shutdown()


def test_vllm_workers_for_a_cpu_policy_are_refused_before_a_cluster_starts(tiny_model_dir):
    import ray
    from transformers import AutoTokenizer

    from alignlab.generation import make_generator
    from alignlab.models import load_model

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = load_model(str(tiny_model_dir), "fp32")
    with pytest.raises(UserError, match="ray_backend vllm pushes weights over NCCL from the trainer's GPU, and the "
                                        "policy is on cpu; train on a CUDA device or use ray_backend native"):
        make_generator(model, tok, "ray", workers=1, inner="vllm")
    assert not ray.is_initialized()


def test_a_worker_that_dies_more_than_max_restarts_times_is_one_line(tiny_model_dir):
    """A worker past its restarts stops the call with one line pointing to Ray's logs (the CLI
    prints a UserError as one line), not a traceback."""
    import ray
    from transformers import AutoTokenizer

    from alignlab.generation import SamplingParams, make_generator
    from alignlab.models import load_model

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = load_model(str(tiny_model_dir), "fp32")
    ray.init(num_cpus=1, include_dashboard=False, object_store_memory=128 * 2**20)
    try:
        workers = make_generator(model, tok, "ray", workers=1, max_restarts=0)
        ray.get(workers.workers[0].exit_during_next_call.remote())
        with pytest.raises(UserError) as e:
            workers.generate(["1+2="], 2, SamplingParams(max_new_tokens=3, seed=0))
        message = str(e.value)
        assert message.startswith("ray generation worker 0 died more than max_restarts=0 times;"), message
        assert "/tmp/ray/session_latest/logs" in message and "\n" not in message
        workers.close()
    finally:
        ray.shutdown()
