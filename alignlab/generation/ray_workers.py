"""The "ray" backend: generation workers as Ray actors, built by ``make_generator(..., "ray")``.

Each worker is a Ray actor with a copy of the model and an inner backend on it: "native" on CPU
(one CPU each), or "vllm" on a GPU each (its engine built from ``model_path``). Ray is the
scheduler, the transport and the restarter; this module only says what runs where.

Order. A call's prompts are split into ``workers`` contiguous shares; worker i samples share i,
its prompts numbered from ``start`` plus the share's offset, and the shares are gathered in order.
Both inner backends draw from one random stream per (seed, prompt index, sample index), so the
samples are the ones the inner backend gives in one process, whatever the split: the same tokens,
and log-probs equal up to the last bits of a batched matmul (a share is a smaller batch).

Weights. ``update_weights`` sends the policy's current weights (``vllm.policy_weights``: wrappers
looked through, LoRA merged) to every worker and bumps a version. On CPU they go through Ray's
object store: one ``ray.put`` per round, which every worker reads. On GPU (inner "vllm") the
trainer broadcasts them over a NCCL group it forms with the workers (``ray_nccl.py``; untested on
this project's machines, which have no GPU).

Faults. Workers are created with ``max_restarts`` and ``max_task_retries``: when a worker's process
dies, Ray starts it again (from its first arguments) and re-runs the call it was running. Every call
names the weight version it needs; a restarted worker has none, so it refuses (``StaleWeights``),
and the caller pushes it the current weights and asks again. Each share's samples are taken once,
from the one call that returned them: a round with a worker killed in it completes with the
samples of an uninterrupted one, nothing lost or duplicated.
"""

from __future__ import annotations

import copy
import os
import socket
from collections.abc import Sequence
from importlib.util import find_spec

import torch

from alignlab.errors import UserError
from alignlab.generation.base import Sample, SamplingParams
from alignlab.generation.memory import torchrun_processes
from alignlab.generation.prompts import RendersPrompts

INNER_BACKENDS = ("native", "vllm")
INSTALL_HINT = "install the extra: pip install 'alignlab[ray]' (from a checkout: pip install -e '.[ray]')"
ANSWER_TIMEOUT_S = 5.0


def require_ray() -> None:
    """A one-line ``UserError`` naming the extra unless Ray is installed. Imports nothing."""
    if find_spec("ray") is None:
        raise UserError(f"the ray generation backend needs Ray, which is not installed; {INSTALL_HINT}")


def check_answers(address: str) -> None:
    """A one-line ``UserError`` unless something listens at ``address`` (``host:port`` or
    ``ray://host:port``; ``auto`` is left to Ray), asked with a short timeout: Ray itself waits
    minutes for a head node that does not answer, then exits the process."""
    if address == "auto":
        return
    where = address.removeprefix("ray://")
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"ray_address '{address}' is not host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=ANSWER_TIMEOUT_S).close()
    except OSError as exc:
        raise UserError(f"ray_address '{address}' does not answer ({exc.strerror or type(exc).__name__}); start "
                        f"Ray there first (ray start --head --port={port}) or leave ray_address unset to start a "
                        "local cluster") from None


def connect(address: str | None, cpus: int) -> bool:
    """Join the Ray cluster at ``address``, or start a local one with ``cpus`` CPUs (and this
    machine's GPUs) when it is None; a process that has joined one already keeps it. True when
    this call joined or started the cluster (the caller then leaves it: ``ray.shutdown``)."""
    require_ray()
    import ray

    if address is not None:
        check_answers(address)
    if ray.is_initialized():
        return False
    try:
        if address is None:
            ray.init(num_cpus=cpus, include_dashboard=False)
        else:
            ray.init(address=address, include_dashboard=False)
    except (ConnectionError, SystemExit) as exc:
        raise UserError(f"could not join the Ray cluster at '{address}': {str(exc).splitlines()[0]}; check "
                        "ray_address (ray status there shows the address) or leave it unset") from None
    return True


def check_room(workers: int, resource: str) -> None:
    """A one-line ``UserError`` unless the cluster has ``workers`` of ``resource`` (CPU or GPU) in
    all: an actor that asks for more than the cluster has waits for it forever."""
    import ray

    have = ray.cluster_resources().get(resource, 0.0)
    if have < workers:
        raise UserError(f"ray_workers: {workers} workers need {workers} {resource}s and the Ray cluster has "
                        f"{have:g}; lower ray_workers, or give the cluster more (a local cluster started by a "
                        "run has ray_workers CPUs, and one this process joined before is kept as it is)")


class StaleWeights(Exception):
    """A worker was asked to sample with weights it has not loaded (it was restarted)."""


def _model_device(model) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _model_dtype(model) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


class GenerationWorker:
    """The body of one generation actor: a model of its own and the inner backend on it.

    ``spec``: in a list (so that Ray hands over the object ref, which a restart reads again), the
    ref of a dict: ``backend`` ("native" or "vllm"), ``tokenizer``, ``options`` for the inner
    backend, and for "native" the model's ``config`` and ``dtype`` (a model is built from them and
    gets its weights from ``load``), for "vllm" the ``model_path`` its engine is built from."""

    def __init__(self, spec: list):
        import ray

        from alignlab.generation.factory import make_generator

        spec = ray.get(spec[0])

        self.version = -1
        self.exit_next = False
        self.model = None
        if spec["backend"] == "vllm":
            self.generator = make_generator(None, spec["tokenizer"], "vllm", model_path=spec["model_path"],
                                            **spec["options"])
            return
        from transformers import AutoModelForCausalLM

        config = spec["config"]
        self.model = AutoModelForCausalLM.from_config(config, dtype=spec["dtype"],
                                                      attn_implementation=config._attn_implementation).eval()
        self.generator = make_generator(self.model, spec["tokenizer"], spec["backend"], **spec["options"])

    def load(self, weights: dict[str, torch.Tensor], version: int) -> None:
        """Copy ``weights`` (parameter name -> tensor, ``policy_weights``' names) into the model;
        every parameter must get one, and no name may be unknown."""
        params = dict(self.model.named_parameters())
        missing, unknown = sorted(params.keys() - weights.keys()), sorted(weights.keys() - params.keys())
        if missing or unknown:
            raise UserError(f"ray generation worker: the policy's weights do not fit the worker's model "
                            f"({'missing ' + missing[0] if missing else 'unknown ' + unknown[0]}); the worker "
                            "is built from the policy's config")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(weights[name])
        self.version = version

    def join_group(self, host: str, port: int, rank: int, world: int) -> None:
        """Join the trainer's NCCL group for weight pushes (inner "vllm")."""
        from alignlab.generation.ray_nccl import join_group

        self.group = join_group(host, port, rank, world)

    def receive(self, meta: list[tuple[str, torch.dtype, tuple[int, ...]]], version: int) -> None:
        """Receive the trainer's broadcast of the tensors ``meta`` describes into the engine."""
        from alignlab.generation.ray_nccl import receive

        self.generator.load_weights(receive(self.group, meta))
        self.version = version

    def generate_ids(self, version: int, contexts: list[tuple[int, ...]], n: int, params: SamplingParams,
                     start: int, host_processes: int | None = None) -> list[list[Sample]]:
        """``host_processes``: the run's processes on this worker's host, which share its memory
        (the native engine's default batch takes its part of a quarter of the free memory)."""
        if version != self.version:
            raise StaleWeights(f"worker has weights {self.version}, asked for {version}")
        if hasattr(self.generator, "host_processes"):
            self.generator.host_processes = host_processes
        out = self.generator.generate_ids(contexts, n, params, start)
        if self.exit_next:  # the fault drill: die with the work done, as a lost machine would
            os._exit(1)
        return out

    def exit_during_next_call(self) -> None:
        """Fault drill: the worker's process exits in the middle of its next ``generate_ids``,
        after sampling and before answering (its state, this flag included, is lost with it)."""
        self.exit_next = True

    def pid(self) -> int:
        return os.getpid()

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def host_processes(self) -> int | None:
        """What the last call said about the processes on this host (the tests read it)."""
        return getattr(self.generator, "host_processes", None)


def _get(refs):
    """``ray.get``, with a ``UserError`` raised in a worker raised here as one line."""
    import ray
    from ray.exceptions import RayTaskError

    try:
        return ray.get(refs)
    except RayTaskError as exc:
        if isinstance(exc.cause, UserError):
            raise UserError(str(exc.cause)) from None
        raise


def shares(count: int, parts: int) -> list[tuple[int, int]]:
    """``count`` items in ``parts`` contiguous (start, stop) ranges, the first ones one longer."""
    size, extra = divmod(count, parts)
    bounds = [0]
    for i in range(parts):
        bounds.append(bounds[-1] + size + (i < extra))
    return list(zip(bounds[:-1], bounds[1:], strict=True))


class RayGenerator(RendersPrompts):
    """Sampling fanned out over Ray actors (see the module docstring).

    ``workers``: how many actors; ``address``: the cluster to join (``host:port``,
    ``ray://host:port`` or ``auto``), or None to start a local cluster with ``workers`` CPUs;
    ``inner``: the inner backend, "native" (one CPU per worker) or "vllm" (one GPU per worker,
    engine built from ``model_path``, weights over NCCL; untested here); ``max_restarts``: how
    often Ray may restart a worker that died; ``batch_size``, ``options``: the inner backend's
    ``batch_size`` (per worker) and further options; ``progress`` is not shown (workers sample
    in other processes). Every worker must be able to import alignlab (a local cluster's are
    started from this process's environment)."""

    numbers_prompts = True  # both inner backends draw per (seed, prompt index, sample index)

    def __init__(self, model, tokenizer, workers: int = 2, address: str | None = None, inner: str = "native",
                 max_restarts: int = 3, model_path: str | None = None, options: dict | None = None,
                 batch_size: int | None = None, progress: str | None = None):
        if workers < 1:
            raise UserError(f"ray_workers must be >= 1, got {workers}")
        if inner not in INNER_BACKENDS:
            raise UserError(f"ray_backend must be one of {', '.join(INNER_BACKENDS)}, got '{inner}' (hf draws "
                            "depend on the batch, so its samples would change with the split)")
        if max_restarts < 0:
            raise UserError(f"max_restarts must be >= 0, got {max_restarts}")
        if inner == "vllm" and _model_device(model).type != "cuda":  # before any cluster starts
            raise UserError("ray_backend vllm pushes weights over NCCL from the trainer's GPU, and the policy is on "
                            f"{_model_device(model).type}; train on a CUDA device or use ray_backend native")
        self._joined = connect(address, workers)
        import ray

        try:
            check_room(workers, "GPU" if inner == "vllm" else "CPU")
        except UserError:
            self.close()
            raise

        self.tok, self.backend, self.max_restarts = tokenizer, inner, max_restarts
        options = {**(options or {}), **({} if batch_size is None else {"batch_size": batch_size})}
        spec = {"backend": inner, "tokenizer": tokenizer, "options": options}
        if inner == "vllm":
            from alignlab.generation.vllm import model_directory, refuse_tied_lora

            try:
                refuse_tied_lora(model)
            except UserError:
                self.close()
                raise
            spec["model_path"] = model_directory(model, model_path)
            resources = {"num_gpus": 1}
        else:
            from alignlab.generation.vllm import unwrap
            from alignlab.models import lora_unties_embeddings, untie

            net = unwrap(model)
            base = net.get_base_model() if hasattr(net, "get_base_model") else net
            config = base.config
            if lora_unties_embeddings(net):  # the merged output layer is a weight of its own
                config = copy.deepcopy(config)
                untie(config)
            spec.update(config=config, dtype=_model_dtype(model))
            resources = {"num_cpus": 1}
        actor = ray.remote(GenerationWorker).options(max_restarts=max_restarts, max_task_retries=max_restarts,
                                                     **resources)
        self._spec = ray.put(spec)
        self.workers = [actor.remote([self._spec]) for _ in range(workers)]
        self._hosts = self._host_counts()
        self.version = 0
        self.model = None
        self._weights = None  # this version's object ref (CPU) or the NCCL pusher (GPU)
        if inner == "vllm":
            from alignlab.generation.ray_nccl import NcclPush

            self._weights = NcclPush(self.workers)
        self.update_weights(model)

    def _host_counts(self) -> list[int]:
        """For each worker, the run's processes on its host: the workers Ray placed there, and
        this process's torchrun group (``LOCAL_WORLD_SIZE``) when it is this process's host, which
        it is not through Ray Client (``ray://``: the node Ray names for this process is then the
        head node). A worker Ray restarts elsewhere keeps its first host's count."""
        import ray
        import ray.util.client

        nodes = _get([w.node.remote() for w in self.workers])
        here = None if ray.util.client.ray.is_connected() else ray.get_runtime_context().get_node_id()
        local = torchrun_processes()
        return [nodes.count(node) + (local if node == here else 0) for node in nodes]

    def update_weights(self, model) -> None:
        """Send ``model``'s current weights to every worker (see the module docstring)."""
        self.model, self.version = model, self.version + 1
        self._push(range(len(self.workers)))

    def _push(self, which) -> None:
        import ray

        if self.backend == "vllm":  # a NCCL group takes every worker: all of them, formed afresh on a fault
            self._weights.push(self.model, self.version, fresh=len(which) < len(self.workers))
            return
        if len(which) == len(self.workers):
            from alignlab.generation.vllm import policy_weights

            self._weights = ray.put({name: t.cpu() for name, t in policy_weights(self.model)})
        _get([self.workers[i].load.remote(self._weights, self.version) for i in which])

    def generate_ids(self, contexts: Sequence[tuple[int, ...]], n: int, params: SamplingParams,
                     start: int = 0) -> list[list[Sample]]:
        """``n`` samples per context, context ``k`` numbered ``start + k``: shares sampled by the
        workers at once and gathered in order."""
        if n < 1:
            raise UserError(f"n must be >= 1, got {n}")
        contexts = [tuple(c) for c in contexts]
        parts = [(i, lo, hi) for i, (lo, hi) in enumerate(shares(len(contexts), len(self.workers))) if hi > lo]
        calls = {i: self._submit(i, contexts[lo:hi], n, params, start + lo) for i, lo, hi in parts}
        out: list[list[Sample]] = []
        for i, lo, hi in parts:
            out.extend(self._result(i, calls[i], contexts[lo:hi], n, params, start + lo))
        return out

    def _submit(self, i: int, contexts, n: int, params: SamplingParams, start: int):
        return self.workers[i].generate_ids.remote(self.version, contexts, n, params, start, self._hosts[i])

    def _result(self, i: int, call, contexts, n: int, params: SamplingParams, start: int) -> list[list[Sample]]:
        """Worker ``i``'s share: a restarted worker gets the current weights and is asked again."""
        from ray.exceptions import ActorDiedError, RayTaskError

        for _ in range(self.max_restarts + 1):
            try:
                return _get(call)
            except RayTaskError as exc:
                if not isinstance(exc.cause, StaleWeights):
                    raise
            except ActorDiedError:
                break
            self._push([i])
            call = self._submit(i, contexts, n, params, start)
        raise UserError(f"ray generation worker {i} died more than max_restarts={self.max_restarts} times; "
                        "its log is under the Ray session folder (/tmp/ray/session_latest/logs)")

    def pids(self) -> list[int]:
        """Each worker's process id (a restarted worker has a new one)."""
        import ray

        return ray.get([w.pid.remote() for w in self.workers])

    def close(self) -> None:
        """Stop the workers, and leave the cluster when this generator joined or started it (a local
        cluster then stops with its processes); a cluster this process had joined before is kept."""
        import ray

        for w in getattr(self, "workers", []):
            ray.kill(w, no_restart=True)
        self.workers = []
        if getattr(self, "_joined", False) and ray.is_initialized():
            ray.shutdown()
        self._joined = False
