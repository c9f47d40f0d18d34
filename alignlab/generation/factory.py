"""``make_generator``: the one place a generation backend is built.

Online methods, decoding-time methods, evaluation, judges and the testbed ask this factory for a
``Generator`` and use only the protocol (``generation/base.py``), so a backend can be swapped by
name without touching them.
"""

from __future__ import annotations

import sys

from alignlab.errors import UserError
from alignlab.generation.base import Generator

BACKENDS = ("native", "hf", "vllm", "ray")
OPTIONS = {"native": ("batch_size", "progress", "prefill_tokens"), "hf": ("batch_size", "progress"),
           "vllm": ("model_path", "gpu_memory_utilization", "dtype", "max_model_len", "tensor_parallel_size",
                    "enable_prefix_caching", "seed", "logprobs_mode", "enforce_eager", "batch_size", "progress",
                    "engine_args"),
           "ray": ("workers", "address", "inner", "max_restarts", "model_path", "options", "batch_size", "progress")}


def check_backend(backend: str) -> None:
    """A ``UserError`` naming the known backends unless ``backend`` is one."""
    if backend not in BACKENDS:
        raise UserError(f"generation backend '{backend}' is unknown; known: {', '.join(BACKENDS)}")


def make_generator(model, tokenizer, backend: str = "native", **options) -> Generator:
    """A ``Generator`` that samples from ``model`` (a causal LM itself: a training run hands over
    the network inside its DDP wrapper, ``training.distributed.unwrap``) with ``tokenizer``.

    ``backend``:
    - ``"native"`` (the default): continuous batching over a pre-allocated cache, one random stream
      per (seed, prompt, sample), both kinds of log-probs (``generation/native.py``; options:
      ``batch_size`` sequences decoding at once, default as many as fit in a quarter of the free
      memory, ``generation/memory.py``; ``prefill_tokens``; ``progress``). The
      model is first checked against a plain forward pass; one the engine cannot run exactly
      (sliding-window attention, say) gets the "hf" backend instead, with a one-line notice.
    - ``"hf"``: Hugging Face ``generate`` on the model's own parameters (options: ``batch_size``
      sequences at a time, default 128; ``progress``, a label to show a progress bar under).
    - ``"vllm"``: a vLLM engine on a CUDA GPU (``generation/vllm.py``; untested on this project's
      machines): built from a model directory, ``model_path`` or else the model's own
      ``name_or_path``, with the model's current weights pushed into it (options:
      ``OPTIONS["vllm"]``, documented on ``VLLMGenerator``). ``model`` may be None when
      ``model_path`` is given: the engine keeps the directory's weights until ``load_weights``.
    - ``"ray"``: generation workers as Ray actors, each with its own copy of the model and an inner
      backend (``backend``: "native" on CPU, "vllm" on a GPU each); prompts are fanned out and the
      samples gathered in order, so they equal the inner backend's in one process
      (``generation/ray_workers.py``; options: ``OPTIONS["ray"]``, documented on ``RayGenerator``).

    An unknown backend or option is a ``UserError`` naming the known ones.
    """
    check_backend(backend)
    unknown = sorted(set(options) - set(OPTIONS[backend]))
    if unknown:
        raise UserError(f"generation backend '{backend}': unknown option '{unknown[0]}' (options: "
                        f"{', '.join(OPTIONS[backend])})")
    if not callable(getattr(model, "generate", None)) and not (model is None and backend == "vllm"):
        raise UserError(f"make_generator: {type(model).__name__} cannot generate; give the causal LM itself "
                        "(a DistributedDataParallel wrapper's .module)")
    if backend == "native":
        from alignlab.generation.native import NativeGenerator, unsupported

        reason = unsupported(model)
        if reason is None:
            return NativeGenerator(model, tokenizer, **options)
        print(f"alignlab: the native generation backend cannot run {type(model).__name__} ({reason}); "
              "using the hf backend", file=sys.stderr, flush=True)
        options.pop("prefill_tokens", None)
        backend = "hf"
    if backend == "hf":
        from alignlab.generation.hf import HFGenerator

        return HFGenerator(model, tokenizer, **options)
    if backend == "vllm":
        from alignlab.generation.vllm import VLLMGenerator

        return VLLMGenerator(model, tokenizer, **options)
    if backend == "ray":
        from alignlab.generation.ray_workers import RayGenerator

        return RayGenerator(model, tokenizer, **options)
    raise AssertionError(backend)  # every name in BACKENDS is built above
