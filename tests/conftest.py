"""Shared fixtures: a tiny model saved to disk and small preference/SFT data files."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
from pathlib import Path

import pytest

from alignlab.models import TinyModelConfig, save_tiny_model

GOOD = ["great", "lovely", "superb", "solid", "reliable", "charming"]
BAD = ["awful", "flimsy", "broken", "dull", "noisy", "clumsy"]


def pytest_configure(config):
    """Under pytest-xdist each worker is one of ``-n`` processes sharing the machine's cores: one
    intra-op thread each, instead of every worker starting a thread per core."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist the slow tests come first, the rest after them, each part in collection
    order: the workers take tests one at a time in this order (``--dist loadgroup``), so the tests
    that take minutes start at once, side by side, and the many short ones fill in around them.
    Without xdist the order stays as collected."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def shared_tmp(tmp_path_factory) -> Path:
    """This run's temporary folder, the same for all xdist workers (each worker's own basetemp is
    a subfolder of it); without xdist, the session's basetemp."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(autouse=True)
def no_process_group_left():
    """A test that starts a process group ends it: one left behind breaks a later test in the same
    worker that starts its own (the order differs from run to run under xdist). Checked after every
    test, which then fails here, naming itself, with the group ended for the next."""
    yield
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()
        pytest.fail("the test left a torch.distributed process group running; end it (end_own_group)")


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Reference log-probs and samples that runs cache, and testbed models, go to a folder of this
    test run, not ~/.cache: one folder for all xdist workers, so a model is built once per run
    (builds of the same entry take turns on its lock)."""
    old = os.environ.get("ALIGNLAB_CACHE")
    cache = shared_tmp(tmp_path_factory) / "alignlab-cache"
    cache.mkdir(exist_ok=True)
    os.environ["ALIGNLAB_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("ALIGNLAB_CACHE", None)
    else:
        os.environ["ALIGNLAB_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A ~0.2M-parameter Llama (smaller than the default, for speed) saved with its tokenizer."""
    out = tmp_path_factory.mktemp("tiny-model")
    return save_tiny_model(out, TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128))


@pytest.fixture
def tied_model_dir(tmp_path):
    """A tiny Llama whose output layer shares the input embeddings' weight (tie_word_embeddings),
    as GPT-2, Gemma, Qwen2-0.5B and Llama 3.2 1B have it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignlab.models import build_tiny_tokenizer, save_pretrained

    tok = build_tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    out = tmp_path / "tied"
    save_pretrained(model, out)
    tok.save_pretrained(out)
    return out


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        item = rng.choice(["lamp", "desk", "phone", "kettle", "bike"])
        rows.append({
            "prompt": f"Review the {item}.",
            "chosen": f"The {item} is {' and '.join(rng.sample(GOOD, 2))}.",
            "rejected": f"The {item} is {' and '.join(rng.sample(BAD, rng.choice([1, 2])))}.",
        })
    return rows


def bench_module(name: str):
    """``bench/NAME.py`` imported as module ``bench_NAME`` (bench/ is scripts, not a package)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).resolve().parents[1] / "bench" /
                                                  f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"bench_{name}"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_pairs_file(folder: Path) -> Path:
    return write_jsonl(folder / "pairs.jsonl", make_pairs(16))


def write_sft_file(folder: Path) -> Path:
    rows = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in make_pairs(16, seed=1)]
    return write_jsonl(folder / "sft.jsonl", rows)


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    return write_pairs_file(tmp_path)


@pytest.fixture
def sft_file(tmp_path) -> Path:
    return write_sft_file(tmp_path)


def overwrite_values(file: Path, tensor: str, values: list[float]) -> None:
    """Overwrite the first values of a float32 ``tensor`` of a safetensors file in place, as damage
    on disk would: the file keeps its size and its header."""
    with open(file, "r+b") as f:
        (header_size,) = struct.unpack("<Q", f.read(8))
        entry = json.loads(f.read(header_size))[tensor]
        assert entry["dtype"] == "F32"
        f.seek(8 + header_size + entry["data_offsets"][0])
        f.write(struct.pack(f"<{len(values)}f", *values))


# The tiny model with damaged weights: in parameter order (embeddings, layer 0, layer 1, norm, head),
# the first tensor holding them is layer 1's MLP up-projection (intermediate 128 x hidden 64).
DAMAGED_TENSOR, DAMAGED_VALUES, DAMAGED_SIZE = "model.layers.1.mlp.up_proj.weight", 3, 128 * 64


def damage(model_dir: Path, out: Path, prefix: str = "model.") -> Path:
    """A copy of ``model_dir`` whose model.safetensors holds NaN and inf (see DAMAGED_TENSOR);
    ``prefix``: of the names in the file (none for a saved backbone)."""
    shutil.copytree(model_dir, out)
    overwrite_values(out / "model.safetensors", f"{prefix}norm.weight", [float("nan")])
    overwrite_values(out / "model.safetensors", prefix + DAMAGED_TENSOR.removeprefix("model."),
                     [float("nan"), 0.5, float("inf"), float("nan")])
    return out


@pytest.fixture
def damaged_model_dir(tiny_model_dir, tmp_path) -> Path:
    return damage(tiny_model_dir, tmp_path / "damaged-model")
