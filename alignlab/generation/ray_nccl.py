"""Weights from a GPU trainer to Ray generation workers that run vLLM, over one NCCL group.

Untested on this project's machines, which have no GPU: written against vLLM 0.32.0's
``StatelessProcessGroup`` (a process group outside torch.distributed's global one, rendezvous by
TCP at the trainer's address) and ``PyNcclCommunicator`` (vLLM's NCCL wrapper, whose
``broadcast`` the trainer and every worker call with the same tensor shapes in the same order).

The trainer is rank 0 and worker i is rank i + 1. A push: each worker is told the (name, dtype,
shape) of every tensor, allocates them on its GPU and waits in the broadcasts; the trainer
broadcasts its parameters (``vllm.policy_weights``: LoRA merged) in that order; each worker then
loads what it received into its engine with vLLM's own loader (``VLLMGenerator.load_weights``).
A group whose member died cannot be mended: after a fault the group is formed again with every
worker (the restarted one included) and the whole push repeated.
"""

from __future__ import annotations

import socket

import torch


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def join_group(host: str, port: int, rank: int, world: int, device: int | torch.device | None = None):
    """This process's member of the push group: a ``PyNcclCommunicator`` on ``device`` (the
    current CUDA device by default: a Ray actor with one GPU sees only its own)."""
    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
    from vllm.distributed.utils import StatelessProcessGroup

    group = StatelessProcessGroup.create(host=host, port=port, rank=rank, world_size=world)
    return PyNcclCommunicator(group, device=torch.cuda.current_device() if device is None else device)


def receive(group, meta: list[tuple[str, torch.dtype, tuple[int, ...]]]) -> list[tuple[str, torch.Tensor]]:
    """A worker's side of one push: the tensors ``meta`` describes, broadcast from rank 0."""
    out = []
    stream = torch.cuda.current_stream()
    for name, dtype, shape in meta:
        tensor = torch.empty(shape, dtype=dtype, device="cuda")
        group.broadcast(tensor, src=0, stream=stream)
        out.append((name, tensor))
    stream.synchronize()
    return out


class NcclPush:
    """The trainer's side: forms the group with the workers (Ray actor handles with ``join_group``
    and ``receive``) once, and again after a fault; ``push`` sends the policy's weights."""

    def __init__(self, workers: list):
        self.workers = workers
        self.group = None

    def _form(self, device: torch.device) -> None:
        import ray

        host, port, world = ray.util.get_node_ip_address(), _free_port(), len(self.workers) + 1
        joining = [w.join_group.remote(host, port, i + 1, world) for i, w in enumerate(self.workers)]
        self.group = join_group(host, port, 0, world, device)
        ray.get(joining)

    def push(self, model, version: int, fresh: bool | None = None) -> None:
        """Broadcast ``model``'s parameters to every worker; ``fresh``: form the group again first
        (a worker was restarted)."""
        import ray

        from alignlab.generation.vllm import policy_weights

        named = [(name, t.contiguous()) for name, t in policy_weights(model)]
        device = named[0][1].device
        if device.type != "cuda":
            from alignlab.errors import UserError

            raise UserError("ray_backend vllm pushes weights over NCCL from the trainer's GPU, and the policy is on "
                            f"{device}; train on a CUDA device or use ray_backend native")
        if fresh or self.group is None:
            self._form(device)
        receiving = [w.receive.remote([(n, t.dtype, tuple(t.shape)) for n, t in named], version)
                     for w in self.workers]
        stream = torch.cuda.current_stream()
        for _, tensor in named:
            self.group.broadcast(tensor, src=0, stream=stream)
        stream.synchronize()
        ray.get(receiving)
