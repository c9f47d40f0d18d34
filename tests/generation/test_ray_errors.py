"""The "ray" backend's bad input: each a one-line error that says what to do, before any cluster
starts."""

from __future__ import annotations

import socket
import time
from importlib.util import find_spec

import pytest

from alignlab.config.parse import make_config
from alignlab.errors import ConfigError, UserError
from alignlab.generation.ray_workers import check_answers, shares

needs_ray = pytest.mark.skipif(find_spec("ray") is None, reason="ray is not installed (pip install -e '.[ray]')")


def _config(**rollout) -> dict:
    return {"method": "grpo", "model": "m", "data": "task:arithmetic", "output_dir": "out", **rollout}


def test_asking_for_ray_without_ray_installed_names_the_extra(monkeypatch):
    import alignlab.config.schema as schema
    import alignlab.generation.ray_workers as ray_workers

    monkeypatch.setattr(schema, "find_spec", lambda name: None)
    with pytest.raises(ConfigError) as err:
        make_config(_config(generation_backend="ray"))
    assert str(err.value).startswith("generation_backend: ray needs Ray, which is not installed")
    assert "pip install 'alignlab[ray]'" in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setattr(ray_workers, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"needs Ray, which is not installed; install the extra: pip install 'alignlab\[ray\]'"):
        ray_workers.require_ray()


def test_bad_ray_settings_are_config_errors():
    with pytest.raises(ConfigError, match="ray_workers: must be >= 1, got 0"):
        make_config(_config(ray_workers=0))
    with pytest.raises(ConfigError, match="ray_backend: must be native or vllm, got 'hf'"):
        make_config(_config(ray_backend="hf"))
    with pytest.raises(ConfigError, match="generation_backend: must be native, hf, vllm or ray, got 'rey'"):
        make_config(_config(generation_backend="rey"))


def test_an_address_that_does_not_answer_is_one_line_saying_what_to_do():
    with socket.socket() as sock:  # a port nobody listens on once this socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t0 = time.perf_counter()
    with pytest.raises(UserError) as err:
        check_answers(f"127.0.0.1:{port}")
    assert time.perf_counter() - t0 < 10
    message = str(err.value)
    assert message.startswith(f"ray_address '127.0.0.1:{port}' does not answer") and "\n" not in message
    assert f"ray start --head --port={port}" in message and "leave ray_address unset" in message
    with pytest.raises(UserError, match="does not answer"):
        check_answers(f"ray://127.0.0.1:{port}")
    with pytest.raises(UserError, match="ray_address 'somewhere' is not host:port, ray://host:port or auto"):
        check_answers("somewhere")


@needs_ray
def test_a_training_run_with_a_dead_address_stops_with_that_line(tmp_path, tiny_model_dir):
    from alignlab import train
    from tests.training.helpers import base_config

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = base_config(tiny_model_dir, "task:arithmetic", tmp_path / "run", method="grpo", num_generations=4,
                      max_new_tokens=4, generation_backend="ray", ray_address=f"127.0.0.1:{port}")
    with pytest.raises(UserError, match=f"ray_address '127.0.0.1:{port}' does not answer"):
        train(cfg)


def test_rounds_do_not_take_the_ray_backend():
    with pytest.raises(ConfigError, match="generation_backend: ray samples online methods"):
        make_config({**_config(generation_backend="ray"), "method": "sft", "rounds": 2, "recipe": "raft",
                       "reward": ["task:arithmetic"]})


def test_shares_are_contiguous_and_cover_every_prompt_once():
    assert shares(6, 2) == [(0, 3), (3, 6)]
    assert shares(5, 2) == [(0, 3), (3, 5)]
    assert shares(1, 3) == [(0, 1), (1, 1), (1, 1)]
    assert shares(0, 2) == [(0, 0), (0, 0)]


def test_an_offline_method_does_not_take_the_ray_backend():
    """An offline method samples nothing, so Ray would not run: refused, not ignored."""
    with pytest.raises(ConfigError, match="generation_backend: ray samples the rounds of online methods .*method "
                                          "'dpo' trains on fixed data .*leave generation_backend unset"):
        make_config({**_config(generation_backend="ray"), "method": "dpo", "data": "pairs.jsonl"})


def test_a_malformed_address_is_refused_when_the_config_is_read():
    for bad in ("nohost", "host:", ":6379", 6379):
        with pytest.raises(ConfigError, match=f"ray_address: must be host:port, ray://host:port or auto, got '{bad}'"):
            make_config(_config(generation_backend="ray", ray_address=bad))
    for good in ("auto", "10.0.0.5:6379", "ray://head:10001"):
        assert make_config(_config(ray_address=good)).rollout.ray_address == good
