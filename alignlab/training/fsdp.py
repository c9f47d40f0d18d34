"""FSDP2: parameters, gradients and optimizer state sharded over the processes, one unit per layer.

``shard`` applies ``torch.distributed.fsdp.fully_shard`` to each decoder layer (the classes a
transformers model lists in ``_no_split_modules``: the layers it never splits across devices) and
then to the whole model, whose own unit holds the rest (embeddings, final norm, output layer,
a reward model's head). A PPO critic hanging on the policy (``critic.py``) is sharded apart from
the policy: its network (a separate critic's decoder, with its own layers as units) and its
head are units of their own, gathered when the critic runs. A layer's parameters are gathered just before its forward and backward
passes and freed after them; the root unit's stay gathered from its forward to the end of the
backward pass (``reshard_after_forward=False``), because the output layer is read again there
(``logprobs.py`` computes the response log-probs inside the forward pass, from its weight). Each
process keeps 1/N of every parameter, of its gradient and of the AdamW moments.

Gradients are reduce-scattered as averages, like DDP's all-reduce: the loop's loss scaling holds.
With gradient accumulation only the last micro-batch's backward pass reduce-scatters (``no_sync``).
With ``dtype: bf16`` the mixed precision policy gathers parameters in bf16 (fp32 masters and
optimizer state stay sharded) and reduces gradients in fp32.

A reference model of its own (a frozen copy of the starting policy, or ``reference_model``) is
sharded the same way, with no gradient or optimizer state, and is only run whole (``full_params``).

Code that runs the model outside the training step (evaluation, sampling, a round's log-probs)
goes through ``full_params``: every unit gathered once and kept so, so each process can run any
number of forward passes without the others (processes sample sequences of different lengths).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator

import torch

from alignlab.errors import ConfigError
from alignlab.training.critic import ATTR
from alignlab.training.distributed import Dist


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def layer_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules sharded one by one: those whose class a transformers model inside ``model``
    names in ``_no_split_modules`` (``LlamaDecoderLayer``, ...). A ConfigError when there are none."""
    names: set[str] = set()
    for module in model.modules():
        names |= set(getattr(module, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names and m is not model]
    if not layers:
        kind = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
        raise ConfigError(f"fsdp: cannot find the decoder layers of model type '{kind}' (its class lists none in "
                          "_no_split_modules); train it without fsdp (DDP keeps a whole copy per process)")
    return layers


def meta_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model``'s modules with every parameter and buffer on the meta device (no memory):
    the plain module the final weights are exported into (``export``)."""
    memo: dict[int, object] = {}
    for p in model.parameters():
        memo[id(p)] = torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def shard(model: torch.nn.Module, dist: Dist, bf16: bool) -> torch.nn.Module:
    """``model`` sharded in place over every process (see the module docstring); returns it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    layers = layer_units(model)
    mesh = init_device_mesh(dist.device.type, (dist.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    for unit in critic_units(model):
        fully_shard(unit, mesh=mesh, mp_policy=mp)
    # A head's output (B, T, 1) is a view of its matmul; FSDP warns that an in-place op on it would
    # skip its backward hook. ``critic.token_values`` only reads it.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPLinear\) returned a view tensor")
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
    # FSDP settles which unit is the root at the first forward pass through any unit, and refuses
    # the root afterwards if that pass ran an inner one first. Code outside the training step can
    # do that: a LoRA policy's rollouts run the PEFT model's base network (``native.runnable``),
    # not the wrapper that is the root. So the root is settled here, before anything runs.
    model._get_fsdp_state()._lazy_init()
    return model


def critic_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """A PPO critic's modules that are run directly (``critic.token_values``), each a unit: a
    separate critic's backbone (embeddings, final norm; its layers are units already) and the
    head, for either kind. Empty without a critic."""
    critic = getattr(model, ATTR, None)
    if critic is None:
        return []
    backbone = getattr(critic, "backbone", None)
    return ([backbone] if backbone is not None else []) + [critic.head]


@contextlib.contextmanager
def full_params(model: torch.nn.Module, *others: torch.nn.Module | None) -> Iterator[torch.nn.Module]:
    """Within the block every parameter of a sharded ``model`` (and of ``others``: a sharded
    reference; None is skipped) is whole on every process (one all-gather on entry, freed on exit)
    and forward passes need no collective; for code that runs the model a different number of
    times on each process. A no-op for a model not sharded. For forward passes without gradient
    only. Yields ``model``."""
    with contextlib.ExitStack() as stack:
        for module in (model, *others):
            if module is not None:
                stack.enter_context(_gathered(module))
        yield model


@contextlib.contextmanager
def _gathered(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    if not is_sharded(model):
        yield model
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
    model.set_reshard_after_forward(False)
    try:
        yield model
    finally:
        for unit in units:
            unit.reshard()
        model.set_reshard_after_forward(True)
        model.set_reshard_after_forward(False, recurse=False)


@contextlib.contextmanager
def no_sync(model: torch.nn.Module) -> Iterator[None]:
    """Backward passes in the block accumulate gradients on each process without the collective
    (gradient accumulation's micro-batches before the last): DDP's ``no_sync``, or FSDP2's
    ``set_requires_gradient_sync(False)``. Under FSDP each process then holds its whole unsharded
    gradient until the next synced backward pass reduce-scatters the sum. A no-op for a plain model."""
    if is_sharded(model):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    elif hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    else:
        yield


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every process takes part; the first gets the whole state dict on the CPU, the others {}."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def export(model: torch.nn.Module, skeleton: torch.nn.Module, dist: Dist) -> torch.nn.Module | None:
    """The trained weights of a sharded ``model`` in a plain module (``skeleton``, from
    ``meta_copy`` before sharding) on the first process, to save as any model is saved; None on
    the others. Every process takes part."""
    state = full_state(model)
    if not dist.is_main:
        return None
    # parameters registered under several names (tied embeddings) are re-tied by those names: through
    # a LoRA layer's base layer too, where transformers' tie_weights cannot set a LoRA layer's weight
    names: dict[int, list[str]] = {}
    for name, p in skeleton.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    skeleton.to_empty(device="cpu")
    with torch.no_grad():
        buffers = dict(model.named_buffers())  # not sharded: the same on every process
        for name, buf in skeleton.named_buffers():
            buf.copy_(buffers[name])
    skeleton.load_state_dict(state)
    for shared in (n for n in names.values() if len(n) > 1):
        first = skeleton.get_parameter(shared[0])
        for name in shared[1:]:
            parent, _, attr = name.rpartition(".")
            skeleton.get_submodule(parent)._parameters[attr] = first
    return skeleton


def grad_norm(total: torch.Tensor) -> float:
    """``clip_grad_norm_``'s result as a number; over sharded gradients it is a DTensor."""
    full = getattr(total, "full_tensor", None)
    return float(full() if full is not None else total)
