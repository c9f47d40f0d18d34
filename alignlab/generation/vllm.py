"""The vLLM backend: sampling with a vLLM engine, built by ``make_generator(..., "vllm")``.

Untested on this project's machines, which have no GPU: it is written against the API of vLLM
0.32.0 (the release whose torch pin, 2.13.0, is alignlab's) as read from its source, and
``bench/vllm_check.py`` is the check to run on a GPU machine before trusting it.

vLLM is imported only when a generator is built. The pure pieces (which tensors to push and under
which names, how alignlab's ``SamplingParams`` become vLLM's, how vLLM's outputs become ``Sample``s)
are functions of this module, tested on the CPU with objects shaped like vLLM's.

What vLLM reports: one log-prob per sampled token, of the kind the engine was built for
(``logprobs_mode``, one per engine). With ``"raw_logprobs"`` (the default) it is the log-softmax
of the model's logits before any processing, in float32, which is ``Sample.logprobs``; with
``"processed_logprobs"`` it is the log-prob after temperature, top-k and top-p (renormalised over
the tokens the cut keeps), which is ``Sample.sampling_logprobs``. The other field is filled
wherever it is known without the model:

=====================  ====================================  =======================================
params                 raw_logprobs                          processed_logprobs
=====================  ====================================  =======================================
greedy                 logprobs; sampling_logprobs all 0.0   the same (vLLM applies no temperature
                                                             to greedy requests: it reports raw)
temperature 1, no cut  both fields hold the reported values  the same (processing changes nothing)
anything else          logprobs; sampling_logprobs empty     sampling_logprobs; logprobs from a
                                                             second, teacher-forced pass (vLLM's
                                                             prompt log-probs, which are raw)
=====================  ====================================  =======================================
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib.util import find_spec
from pathlib import Path

import torch

from alignlab.errors import UserError
from alignlab.generation.base import Sample, SamplingParams
from alignlab.generation.prompts import RendersPrompts

VLLM_VERSION = "0.32.0"
INSTALL_HINT = (f'install it on a CUDA machine with: pip install "vllm=={VLLM_VERSION}" && pip install -e . '
                '(README: "Sampling with vLLM")')
LOGPROBS_MODES = ("raw_logprobs", "processed_logprobs")
# vLLM raises any temperature in (0, 0.01) to 0.01 (its _MAX_TEMP) with a warning: the tokens would
# then be drawn from another distribution than the one asked for.
MIN_TEMPERATURE = 0.01
# Names that wrappers insert into parameter names (torch.compile, activation checkpointing, FSDP):
# the engine knows the bare model's names.
WRAPPER_PARTS = ("_orig_mod", "_checkpoint_wrapped_module", "_fsdp_wrapped_module")
CHUNK_BYTES = 1 << 30  # weights handed to the engine per call


# ------------------------------------------------------------------------------ environment

def require_vllm() -> None:
    """A one-line ``UserError`` unless vLLM is installed and torch sees a CUDA GPU. Imports nothing."""
    if find_spec("vllm") is None:
        raise UserError(f"the vllm generation backend needs vLLM, which is not installed; {INSTALL_HINT}")
    if not torch.cuda.is_available():
        raise UserError("the vllm generation backend needs a CUDA GPU and torch sees none; "
                        "use the 'hf' backend on this machine")


def model_directory(model, model_path: str | os.PathLike | None = None) -> str:
    """The directory vLLM builds its engine from: ``model_path`` if given, else the policy's own
    ``name_or_path`` (what ``from_pretrained`` was given; a PEFT model answers with its base
    model's) when that is a local directory. Either must hold a ``config.json``; the engine's
    weights are replaced by the policy's at once (``VLLMGenerator`` pushes them), so the directory
    supplies the architecture, not the weights."""
    if model_path is not None:
        if not (Path(model_path) / "config.json").is_file():
            raise UserError(f"model_path '{model_path}' is not a model directory (it has no config.json)")
        return str(Path(model_path).resolve())
    inner = unwrap(model)
    name = getattr(inner, "name_or_path", None) or getattr(getattr(inner, "config", None), "_name_or_path", None) or ""
    if name and (Path(name) / "config.json").is_file():
        return str(Path(name).resolve())
    raise UserError(f"the vllm generation backend builds its engine from a model directory, and the policy's "
                    f"name_or_path ({name!r}) is not one: pass model_path=DIR, a directory with the "
                    "model's config.json (and its tokenizer), e.g. written by save_pretrained")


# ------------------------------------------------------------------------------ weights

def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside DistributedDataParallel / DataParallel (``.module``) and torch.compile
    (``._orig_mod``) wrappers, however nested."""
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def _bare_name(name: str) -> str:
    return ".".join(part for part in name.split(".") if part not in WRAPPER_PARTS)


# A submodule that training hangs on the policy but the sampled network does not contain (PPO's
# critic) carries this attribute, set true: ``policy_weights`` leaves it out.
NOT_SAMPLED = "alignlab_not_sampled"


def policy_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter of ``model`` as the engine should load it: ``(name, tensor)`` with the
    Hugging Face model's own names (``model.layers.0.self_attn.q_proj.weight``, ``lm_head.weight``),
    which are a dense checkpoint's keys and what vLLM's ``load_weights`` maps onto its layers.

    Wrappers are looked through: DDP and torch.compile are unwrapped, and the name parts that
    compile, activation checkpointing and FSDP insert are dropped (an FSDP-sharded parameter is a
    shard, not the weight: gather it before calling). A parameter shared by two modules (tied
    embeddings) is given once, under its first name, as ``named_parameters`` does.

    A PEFT model is given with its LoRA adapters merged, as ``merge_and_unload`` would merge them
    (the active adapters not merged yet, the LoRA variants such as DoRA through peft's own
    ``merge_safe``, a LoRA bias added to the layer's bias) but into new tensors: the training
    model is not touched. The names are the base model's (no ``base_model.model.`` prefix, no
    ``base_layer`` part, no adapter tensors), and a ``modules_to_save`` copy is given under the
    original module's names. Only LoRA adapters can be merged; another tuner is a ``UserError``.
    A submodule marked ``NOT_SAMPLED`` (PPO's critic) is left out.
    Tensors are detached and yielded one at a time (a merged one is made when it is reached)."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper, ModulesToSaveWrapper

    seen: set[int] = set()

    def walk(module: torch.nn.Module, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
        if isinstance(module, LoraLayer):
            yield from _merged_lora(module, prefix)
            return
        if isinstance(module, ModulesToSaveWrapper):
            active = [a for a in module.active_adapters if a in module.modules_to_save]
            yield from walk(module.modules_to_save[active[0]] if active else module.original_module, prefix)
            return
        if isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            raise UserError(f"update_weights merges LoRA adapters only; '{prefix.rstrip('.')}' is a "
                            f"{type(module).__name__}")
        for name, param in module._parameters.items():
            if param is not None and id(param) not in seen:
                seen.add(id(param))
                yield _bare_name(prefix + name), param.detach()
        for name, child in module._modules.items():
            if child is not None and not getattr(child, NOT_SAMPLED, False):
                yield from walk(child, f"{prefix}{name}.")

    model = unwrap(model)
    if isinstance(model, PeftModel):
        model = unwrap(model.get_base_model())
    with torch.no_grad():
        yield from walk(model, "")


def refuse_tied_lora(model: torch.nn.Module) -> None:
    """A ``UserError`` where ``model`` is a PEFT LoRA model whose adapter changes an output layer
    that shares its weight with the input embeddings (``lora_unties_embeddings``). A vLLM engine
    built from the model's directory ties the two as the config says and loads the embeddings
    only, so the merged output layer would be dropped without a word and the engine would sample
    from another policy. (The native and Ray-native backends build an untied model instead.)"""
    from alignlab.models import lora_unties_embeddings

    if lora_unties_embeddings(unwrap(model)):
        raise UserError("vllm: the policy's output layer shares its weight with the input embeddings (tied) and its "
                        "LoRA adapter changes one of them; a vLLM engine ties them too and would load the "
                        "embeddings only. Sample with the native backend (or ray with ray_backend native), or leave "
                        "lm_head and embed_tokens out of lora_target_modules")


def _merged_lora(layer, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    """The parameters of a LoRA layer's base layer with the adapters merged in (see policy_weights)."""
    base = layer.get_base_layer()
    pending = [a for a in layer.active_adapters if a not in layer.merged_adapters
               and (a in layer.lora_A or a in layer.lora_embedding_A)]
    for name, param in base.named_parameters():
        value = param.detach()
        if name == "weight" and pending:
            if not value.is_floating_point():
                raise UserError(f"update_weights cannot merge a LoRA adapter into '{prefix.rstrip('.')}': its base "
                                "weight is quantized")
            value = value.clone()
            for adapter in pending:
                if adapter in layer.lora_variant:
                    value = layer.lora_variant[adapter].merge_safe(layer, adapter, value)
                else:
                    value += layer.get_delta_weight(adapter)
        elif name == "bias":
            for adapter in pending:
                if layer.lora_bias.get(adapter, False):
                    value = value + layer.lora_B[adapter].bias * layer.scaling[adapter]
        yield _bare_name(prefix + name), value


def weight_chunks(weights: Iterable[tuple[str, torch.Tensor]], max_bytes: int = CHUNK_BYTES,
                  to_cpu: bool = False) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """``weights`` in lists of at most ``max_bytes`` (a larger tensor alone), moved to the CPU if
    ``to_cpu`` (for an engine whose workers are other processes: the tensors are pickled to them)."""
    chunk: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in weights:
        nbytes = tensor.numel() * tensor.element_size()
        if chunk and size + nbytes > max_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append((name, tensor.cpu() if to_cpu else tensor))
        size += nbytes
    if chunk:
        yield chunk


def _load_on_worker(worker, weights: list[tuple[str, torch.Tensor]]) -> list[str]:
    """Run on each engine worker (``LLM.collective_rpc``): vLLM's own checkpoint loader for the
    model (``load_weights``: it maps checkpoint names onto its fused layers, shards for tensor
    parallelism and copies in place, so captured CUDA graphs stay valid). Returns the engine
    parameters it wrote."""
    return sorted(worker.model_runner.get_model().load_weights(weights))


def _engine_parameters(worker) -> list[str]:
    """Run on each engine worker: the names of the engine model's parameters that a checkpoint
    must supply (all but quantization scales, ``..._scale``, which a training policy has none of)."""
    return sorted(name for name, _ in worker.model_runner.get_model().named_parameters()
                  if not name.rsplit(".", 1)[-1].endswith("_scale"))


# ------------------------------------------------------------------------------ sampling

def request_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The seed of one sampled request, in [0, 2**63) (vLLM keeps seeds as int64): a hash of
    (``seed``, prompt index, sample index), so each sample has its own stream and the same triple
    always gets the same one."""
    digest = hashlib.blake2b(f"{seed}/{prompt_index}/{sample_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def untouched(params: SamplingParams) -> bool:
    """Whether ``params`` sample from the model's own distribution (temperature 1, no cut)."""
    return params.temperature == 1.0 and params.top_p == 1.0 and params.top_k == 0


def sampling_kwargs(params: SamplingParams, prompt_index: int, sample_index: int, eos: int | None) -> dict:
    """Keyword arguments of ``vllm.SamplingParams`` for one request: one sample (``n=1``) of the
    prompt at ``prompt_index``, its ``sample_index``-th.

    Every request carries its own seed (``request_seed``), so a sample depends on (seed, prompt
    index, sample index) and not on which other requests share the engine's batch (up to the
    numerics of batched kernels). A greedy request has no seed and no cut. ``top_k`` 0 is "no cut"
    in alignlab and in vLLM 0.32 alike (vLLM also reads -1 so). Generation stops on ``eos`` and
    ``params.stop_token_ids`` only (``ignore_eos`` with those as the stop tokens: not on other end
    tokens the checkpoint's generation config may list), as the other backends do; the engine reports the sampled token's
    log-prob (``logprobs=0``) and does not detokenize (the text is decoded here). Every other
    processor is set to neutral, so the samples come from the model's distribution.
    """
    if 0 < params.temperature < MIN_TEMPERATURE:
        raise UserError(f"the vllm backend samples at temperatures of {MIN_TEMPERATURE} or more (vLLM raises lower "
                        f"ones to {MIN_TEMPERATURE}), got {params.temperature}; use 0 for greedy decoding")
    return {
        "n": 1,
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": 1.0 if params.greedy else params.top_p,
        "top_k": 0 if params.greedy else params.top_k,
        "seed": None if params.greedy else request_seed(params.seed, prompt_index, sample_index),
        "stop_token_ids": params.stops(eos),
        "ignore_eos": True,
        "logprobs": 0,
        "detokenize": False,
        "min_p": 0.0,
        "min_tokens": 0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
    }


def scoring_kwargs() -> dict:
    """Keyword arguments of ``vllm.SamplingParams`` for a teacher-forced pass: the prompt's own
    log-probs (``prompt_logprobs=0``: each prompt token's, which vLLM computes from the raw logits
    in either ``logprobs_mode``) and one greedy token that nobody reads."""
    return {"n": 1, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0, "detokenize": False}


def sample_from_completion(completion, context: tuple[int, ...], eos: int | None, decode: Callable[[list[int]], str],
                           params: SamplingParams, logprobs_mode: str) -> Sample:
    """A ``Sample`` from one of vLLM's ``CompletionOutput``s (``token_ids``; ``logprobs``: per
    position a mapping token id -> ``Logprob`` with a ``.logprob``, the sampled token among them).

    The tokens run to the first ``eos`` or ``params.stop_token_ids`` token included (``finished``)
    or to the length cap; the text is ``decode`` of them without that token. Which log-prob field holds the reported values is the
    table of the module docstring; where the raw log-probs need a second pass (processed mode,
    tempered or cut params), ``logprobs`` is left empty for ``with_scored_logprobs``."""
    tokens = list(completion.token_ids)
    stops = set(params.stops(eos))
    end = next((i for i, t in enumerate(tokens) if t in stops), None)
    finished = end is not None
    if finished:
        tokens = tokens[:end + 1]
    positions = completion.logprobs
    if positions is None or len(positions) < len(tokens):
        raise RuntimeError(f"vLLM reported log-probs for {0 if positions is None else len(positions)} of "
                           f"{len(tokens)} sampled tokens")
    reported = tuple(float(positions[i][t].logprob) for i, t in enumerate(tokens))
    if params.greedy:
        logprobs, sampling = reported, (0.0,) * len(tokens)
    elif untouched(params):
        logprobs, sampling = reported, reported
    elif logprobs_mode == "raw_logprobs":
        logprobs, sampling = reported, ()
    else:
        logprobs, sampling = (), reported
    body = tokens[:-1] if finished else tokens
    return Sample(decode(body), tuple(context), tuple(tokens), finished, logprobs, sampling)


def needs_scoring(params: SamplingParams, logprobs_mode: str) -> bool:
    """Whether samples drawn with ``params`` lack their raw log-probs (see the module docstring)."""
    return logprobs_mode == "processed_logprobs" and not params.greedy and not untouched(params)


def with_scored_logprobs(sample: Sample, output) -> Sample:
    """``sample`` with ``logprobs`` read off the ``RequestOutput`` of a teacher-forced pass over
    ``prompt_ids + token_ids`` (``scoring_kwargs``): ``prompt_logprobs[k]`` maps token id ->
    ``Logprob`` for prompt position ``k`` (``None`` at position 0)."""
    start = len(sample.prompt_ids)
    positions = output.prompt_logprobs
    values = tuple(float(positions[start + i][t].logprob) for i, t in enumerate(sample.token_ids))
    return dataclasses.replace(sample, logprobs=values)


# ------------------------------------------------------------------------------ the generator

class VLLMGenerator(RendersPrompts):
    """Sample with a vLLM engine (``vllm.LLM``) built from a model directory, with the policy's
    weights pushed into it (``update_weights``) when built and whenever training asks.

    The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set here for the whole
    process, as TRL's colocate mode does), so with one GPU per engine the weights reach it by
    reference, with no copy through the CPU or the disk. It shares the GPU with the trainer: it
    takes ``gpu_memory_utilization`` of the GPU's memory (weights and key-value cache) and leaves
    the rest. Building it takes a while (a minute or more: loading, compiling, capturing CUDA graphs
    unless ``enforce_eager``); build one and keep it.

    Each sample is one request with its own seed (``sampling_kwargs``); a greedy prompt is one
    request, copied ``n`` times. Prompts are rendered exactly as the "hf" backend renders them.
    """

    numbers_prompts = True  # draws depend only on (seed, prompt index, sample index)

    def __init__(self, model, tokenizer, model_path: str | os.PathLike | None = None,
                 gpu_memory_utilization: float = 0.4, dtype: str = "auto", max_model_len: int | None = None,
                 tensor_parallel_size: int = 1, enable_prefix_caching: bool = True, seed: int = 0,
                 logprobs_mode: str = "raw_logprobs", enforce_eager: bool = False, batch_size: int | None = None,
                 progress: str | None = None, engine_args: dict | None = None):
        """``model``: the policy to sample from (its weights are pushed into the engine now), or
        None to keep the directory's weights until ``load_weights`` (a Ray generation worker, whose
        weights arrive over NCCL: ``generation/ray_nccl.py``).
        ``model_path``: the directory the engine is built from (``model_directory``; default: the
        policy's ``name_or_path``). ``dtype``: vLLM's (``"auto"``: vLLM's choice for the checkpoint,
        ``"bfloat16"``, ``"float16"``, ``"float32"``). ``seed``: the engine's own seed; alignlab
        gives every sampled request its own, so it decides nothing alignlab draws.
        ``logprobs_mode``: ``"raw_logprobs"`` or ``"processed_logprobs"``, what the engine reports
        (module docstring). ``batch_size``: at most that many sequences in one engine step
        (vLLM's ``max_num_seqs``; default: vLLM's). ``progress``: a label for a progress bar over
        the requests of each call, or None. ``engine_args``: further keyword arguments of
        ``vllm.LLM`` (e.g. ``max_num_batched_tokens``), passed as they are."""
        if not 0 < gpu_memory_utilization <= 1:
            raise UserError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        if tensor_parallel_size < 1:
            raise UserError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
        if logprobs_mode not in LOGPROBS_MODES:
            raise UserError(f"logprobs_mode must be one of {', '.join(LOGPROBS_MODES)}, got '{logprobs_mode}'")
        if batch_size is not None and batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        path = model_directory(model, model_path)
        require_vllm()

        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # read when the engine is built
        import vllm

        tok_dir = getattr(tokenizer, "name_or_path", None)
        args = {
            "model": path,
            # The engine only needs a tokenizer for what alignlab does not ask of it (it gets token
            # ids and returns token ids); the policy's own tokenizer directory when it has one.
            "tokenizer": tok_dir if tok_dir and Path(tok_dir).is_dir() else path,
            "dtype": dtype,
            "gpu_memory_utilization": gpu_memory_utilization,
            "tensor_parallel_size": tensor_parallel_size,
            "enable_prefix_caching": enable_prefix_caching,
            "seed": seed,
            "logprobs_mode": logprobs_mode,
            "enforce_eager": enforce_eager,
            # Nothing from the checkpoint's generation_config.json (default sampling settings, a
            # server-wide max_new_tokens): the samples follow SamplingParams alone.
            "generation_config": "vllm",
            **({} if max_model_len is None else {"max_model_len": max_model_len}),
            **({} if batch_size is None else {"max_num_seqs": batch_size}),
            **(engine_args or {}),
        }
        self.llm = vllm.LLM(**args)
        self.make_params = vllm.SamplingParams
        self.tok = tokenizer
        self.eos = tokenizer.eos_token_id
        self.logprobs_mode = logprobs_mode
        self.progress = progress
        self.by_reference = tensor_parallel_size == 1
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        if model is not None:
            self.update_weights(model)

    def generate_ids(self, contexts: Sequence[tuple[int, ...]], n: int, params: SamplingParams,
                     start: int = 0) -> list[list[Sample]]:
        """``generate`` for prompts given as token ids, exactly as the model should see them;
        context ``k``'s requests are seeded as prompt ``start + k``'s."""
        if n < 1:
            raise UserError(f"n must be >= 1, got {n}")
        contexts = [tuple(c) for c in contexts]
        scoring = needs_scoring(params, self.logprobs_mode)
        # vLLM refuses a prompt that fills the context (it must generate at least one token); the
        # teacher-forced pass takes a whole sample as its prompt.
        longest = self.max_model_len - (params.max_new_tokens if scoring else 0)
        for i, c in enumerate(contexts):
            if len(c) >= longest:
                raise UserError(f"prompt {start + i} has {len(c)} tokens; the vllm engine takes fewer than {longest} "
                                f"(max_model_len {self.max_model_len}" + (f" less max_new_tokens {params.max_new_tokens}"
                                                                           " for the second pass of processed_logprobs"
                                                                           if scoring else "") + ")")
        copies = 1 if params.greedy else n
        plan = [(i, j) for i in range(len(contexts)) for j in range(copies)]
        outputs = self._run([{"prompt_token_ids": list(contexts[i])} for i, _ in plan],
                            [self.make_params(**sampling_kwargs(params, start + i, j, self.eos)) for i, j in plan])
        decode = functools.partial(self.tok.decode, skip_special_tokens=True)
        samples = [sample_from_completion(out.outputs[0], contexts[i], self.eos, decode, params, self.logprobs_mode)
                   for (i, _), out in zip(plan, outputs, strict=True)]
        if scoring:
            scored = self._run([{"prompt_token_ids": list(s.prompt_ids + s.token_ids)} for s in samples],
                               [self.make_params(**scoring_kwargs())] * len(samples))
            samples = [with_scored_logprobs(s, out) for s, out in zip(samples, scored, strict=True)]
        return [[samples[i * copies + (0 if params.greedy else j)] for j in range(n)] for i in range(len(contexts))]

    def _run(self, prompts: list[dict], params: list) -> list:
        if not prompts:
            return []
        return self.llm.generate(prompts, params, use_tqdm=False if self.progress is None else self._bar)

    def _bar(self, **kwargs):
        """vLLM's progress bar under this generator's label (vLLM passes its own ``desc``)."""
        from tqdm.auto import tqdm

        return tqdm(**{**kwargs, "desc": self.progress, "leave": False})

    def update_weights(self, model) -> None:
        """Load ``model``'s current weights into the engine (``policy_weights``: DDP and compile
        unwrapped, LoRA merged without touching ``model``) through vLLM's own loader on every
        worker (``LLM.collective_rpc``), ``CHUNK_BYTES`` at a time, then drop the engine's prefix
        cache (it holds keys and values of the old weights).

        With one GPU the tensors are handed over by reference (the engine runs in this process);
        with tensor parallelism they go to the worker processes through the CPU. A name the engine
        does not know is refused by vLLM's loader; every parameter of the engine's model (but
        quantization scales) must be written, or the policy is not the directory's model: that is a
        ``UserError`` naming the first one missing."""
        refuse_tied_lora(model)
        self.load_weights(policy_weights(model))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """``update_weights`` for weights given as ``(name, tensor)`` pairs with the Hugging Face
        model's names (``policy_weights``' output, or tensors received from a trainer)."""
        expected = self.llm.collective_rpc(_engine_parameters)
        written = [set() for _ in expected]
        for chunk in weight_chunks(weights, to_cpu=not self.by_reference):
            for names, done in zip(written, self.llm.collective_rpc(_load_on_worker, args=(chunk,)), strict=True):
                names.update(done)
        self.llm.reset_prefix_cache()
        for rank, (names, loaded) in enumerate(zip(expected, written, strict=True)):
            missing = sorted(set(names) - loaded)
            if missing:
                raise UserError(f"update_weights: the vllm engine's parameter '{missing[0]}' (worker {rank}; "
                                f"{len(missing)} in all) got no value from the policy: is the policy the model of "
                                "the engine's directory (model_path)?")
