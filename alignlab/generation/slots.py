"""The native backend's key/value cache and decode attention, behind transformers' APIs.

Why by hand: transformers' caches hold one batch whose rows start and stop together (the dynamic
cache concatenates every step; the static cache is pre-allocated but its rows share one
position), its paged continuous-batching cache is built for GPUs (measured in
``bench/generate_vs_hf.py``), and none shares a prompt's keys between the samples drawn from it.

Layout. A *group* is one prompt prefilled once; its keys and values sit in one row of the prefix
store, ``(groups, kv heads, longest prompt, head dim)`` per layer. A *slot* is one sequence being
sampled from a group; the keys and values of its generated tokens sit in its row of the suffix
store, ``(slots, kv heads, max new tokens, head dim)``. The n samples of a prompt read its prompt
once per decode step instead of n times: on a CPU, where decode attention is bound by memory
bandwidth, that is most of its cost.

The model's attention layers call ``update(keys, values, layer)`` and then the attention function
named by the config. While the engine runs (``SlotAttention``), that name points to
``slot_attention``:
- prefill: the batch is left-padded prompts; ``update`` copies each prompt's keys (shifted past
  its padding) into its group's row, and the attention is transformers' own SDPA over the prompts'
  keys with the engine's 4D mask;
- decode: row ``b`` of the batch is slot ``b``; ``update`` writes its new key into the slot's next
  suffix position, and ``slot_attention`` attends over the group's prompt and the slot's own
  tokens, one softmax over both: for a small float32 or float64 cache by gathering each slot's
  prompt keys beside its own (one SDPA over the row), otherwise with the prompt's scores computed
  per group (``attend``).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache

NAME = "alignlab_slots"
_ACTIVE: contextvars.ContextVar[SlotCache | None] = contextvars.ContextVar("alignlab_slot_cache", default=None)


@dataclass
class DecodePlan:
    """Who is where in one decode step, as every layer reads it (built once per step).

    Slot ``b`` belongs to group ``g`` as its ``m``-th member; in the *group layout* of a step
    (``groups in use × width`` rows, ``width`` the most members of a group) it is row
    ``g × width + m``. ``steps``: where each slot writes its new key in its suffix;
    ``live_slots``: the slots that hold a sequence, and ``live_rows`` their group-layout rows;
    ``slot_rows``: every slot's row (a free slot reads some row: finite, and never used);
    ``prefix_bias`` ``(groups in use, prefix width)`` and ``suffix_bias`` ``(slots, suffix width)``:
    0 where a key is, -inf where none is (a free slot sees only its suffix position 0, so no row
    is empty). ``slot_groups``: every slot's group (a free slot's some group in use), and
    ``bias`` ``(slots, 1, 1, prefix width + suffix width)`` its prompt's and its own biases side by
    side, for attention over a slot's keys gathered into one row (``attend``)."""

    steps: torch.Tensor
    live_slots: torch.Tensor
    live_rows: torch.Tensor
    slot_rows: torch.Tensor
    prefix_bias: torch.Tensor
    suffix_bias: torch.Tensor
    width: int
    slot_groups: torch.Tensor
    bias: torch.Tensor

    def to(self, device) -> DecodePlan:
        return DecodePlan(*(t.to(device) for t in (self.steps, self.live_slots, self.live_rows, self.slot_rows,
                                                   self.prefix_bias, self.suffix_bias)), self.width,
                          self.slot_groups.to(device), self.bias.to(device))


class SlotCache(Cache):
    def __init__(self, slots: int, prompt_length: int, new_tokens: int, groups: int | None = None):
        """``groups``: prompt rows to allocate at first (default ``slots``); ``reserve_groups``
        grows the prefix stores when more are needed, so that the n samples of a prompt do not pay
        for n prompt rows."""
        super().__init__(layers=[])
        self.slots, self.prompt_length, self.new_tokens = slots, prompt_length, new_tokens
        self.groups = slots if groups is None else max(1, min(groups, slots))
        self.prefix_k: list[torch.Tensor] = []
        self.prefix_v: list[torch.Tensor] = []
        self.suffix_k: list[torch.Tensor] = []
        self.suffix_v: list[torch.Tensor] = []
        self._prefill: tuple[torch.Tensor, torch.Tensor] | None = None  # (pads, groups)
        self.plan: DecodePlan | None = None
        self._buffers: list[torch.Tensor | None] = [None, None, None]  # ``buffer``'s

    # -- modes, set by the engine before each forward pass --------------------------------------

    def prefill(self, pads: torch.Tensor, groups: torch.Tensor) -> None:
        """The next pass prefills left-padded prompts: batch row ``r``, padded by ``pads[r]``, into
        group ``groups[r]``."""
        self._prefill, self.plan = (pads, groups), None

    def decode(self, plan: DecodePlan) -> None:
        """The next pass decodes one token for each slot ``0..B-1`` as ``plan`` says."""
        self._prefill, self.plan = None, plan

    def reserve_groups(self, count: int) -> None:
        """Make room for group ids ``0..count-1`` (doubling, at most ``slots``), keeping the rows."""
        if count <= self.groups:
            return
        self.groups = min(self.slots, max(count, 2 * self.groups))
        for store in (self.prefix_k, self.prefix_v):
            for i, t in enumerate(store):
                grown = t.new_zeros(self.groups, *t.shape[1:])
                grown[:len(t)] = t
                store[i] = grown

    def move_slots(self, sources: list[int], targets: list[int]) -> None:
        """Copy each source slot's keys and values to its target (no slot is both)."""
        if not sources:
            return
        src, dst = torch.tensor(sources), torch.tensor(targets)
        for store in (self.suffix_k, self.suffix_v):
            for t in store:
                t[dst.to(t.device)] = t[src.to(t.device)]

    def move_group(self, source: int, target: int) -> None:
        for store in (self.prefix_k, self.prefix_v):
            for t in store:
                t[target].copy_(t[source])

    def buffer(self, which: int, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A contiguous tensor of ``shape`` in ``like``'s dtype and device over memory this cache
        keeps (``which``: 0 a slot's gathered prompt part, 1 its keys, 2 its values), so that a
        decode step's gathered copies land in memory already mapped: a fresh tensor of more than
        128 KB comes from glibc's ``mmap`` and pays a page fault for each page it writes."""
        size = math.prod(shape)
        buf = self._buffers[which]
        if buf is None or buf.numel() < size or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._buffers[which] = like.new_empty(2 * size)
        return buf[:size].view(shape)

    # -- transformers' Cache API ------------------------------------------------------------------

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx == len(self.prefix_k):
            heads, dim = key_states.shape[1], key_states.shape[3]
            for store, rows, length in ((self.prefix_k, self.groups, self.prompt_length),
                                        (self.suffix_k, self.slots, self.new_tokens)):
                store.append(key_states.new_zeros(rows, heads, length, dim))
            for store, rows, length in ((self.prefix_v, self.groups, self.prompt_length),
                                        (self.suffix_v, self.slots, self.new_tokens)):
                store.append(value_states.new_zeros(rows, heads, length, value_states.shape[3]))
        if self._prefill is not None:
            pads, groups = self._prefill
            width = key_states.shape[2]
            # position j of a group's row holds the prompt's token j; what lands after the prompt's
            # end is never attended to
            shift = (pads.view(-1, 1) + torch.arange(width, device=pads.device)).clamp_(max=width - 1)
            for store, new in ((self.prefix_k, key_states), (self.prefix_v, value_states)):
                index = shift.view(len(pads), 1, width, 1).expand(-1, new.shape[1], -1, new.shape[3])
                store[layer_idx][:, :, :width].index_copy_(0, groups, new.gather(2, index))
            return key_states, value_states
        self.write(layer_idx, key_states[:, :, 0], value_states[:, :, 0])
        self._layer = layer_idx
        return key_states, value_states

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Decode: the new key and value of each slot ``0..B-1``, ``(B, kv heads, head dim)``,
        into its next suffix position."""
        if self.plan is None:
            raise RuntimeError("SlotCache: the engine set no mode before the forward pass")
        rows = torch.arange(len(keys), device=keys.device)
        self.suffix_k[layer][rows, :, self.plan.steps] = keys
        self.suffix_v[layer][rows, :, self.plan.steps] = values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.prompt_length + self.new_tokens

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return self.prompt_length + self.new_tokens

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        raise RuntimeError("SlotCache: the engine passes a prepared 4D attention mask")

    @property
    def is_compileable(self) -> bool:
        return False


def slot_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention-function signature. Outside a decode step of the engine, SDPA on
    the tensors given; in one, ``attend`` for the layer whose keys the cache took last."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cache = _ACTIVE.get()
    if cache is None or cache.plan is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    return attend(cache, cache._layer, query, scaling), None


# Gathering each slot's prompt keys beside its own (``attend``'s one-row path) copies them once
# per slot and layer; up to this many bytes of keys per layer that copy costs less than the
# group layout's two dozen further small operations. Measured on 2 CPU cores, float32, alternating
# in one process: a generation call of the testbed's 4-layer model, 4 prompts × 8 samples of up to
# 6 tokens (4 heads of 32, up to 12 positions: 0.2 MB), took 13.9 ms (median of ten rounds of 50)
# against 16.6 ms with the group layout; one of the 30M benchmark model, 2 prompts × 8 samples of
# 64 tokens (6 heads of 64, up to 70 positions: 1.7 MB), 854 ms against 916 (median of six). Alone,
# one layer of 32 slots with 8 heads of 64 over 193 positions (12 MB) took 3.0 ms against 0.55. The
# copies go to buffers the cache keeps (``SlotCache.buffer``): measured alone in a loop, 1 MB of
# keys took 0.7 ms against the group layout's 0.24 when every copy went to fresh memory (page
# faults), 0.14 ms into the kept buffers.
GATHER_BYTES = 2 << 20


def attend(cache: SlotCache, layer: int, query: torch.Tensor, scaling: float | None = None) -> torch.Tensor:
    """A decode step's attention of ``query`` ``(slots, heads, 1, head dim)`` over each slot's
    group prompt and its own tokens, one softmax over both; returns ``(slots, 1, heads, head dim)``.

    Two ways, the same function up to rounding: for a float32 or float64 cache whose gathered keys
    stay within ``GATHER_BYTES``, each slot's prompt keys and values are gathered beside its own
    and one SDPA attends over the row; otherwise the prompt part is computed once per group."""
    plan = cache.plan
    batch, heads, _, dim = query.shape
    kv_heads = cache.prefix_k[layer].shape[1]
    rep = heads // kv_heads
    scale = dim ** -0.5 if scaling is None else scaling
    n_groups, prefix_width = plan.prefix_bias.shape
    suffix_width = plan.suffix_bias.shape[1]
    rows = n_groups * plan.width
    prefix_k = cache.prefix_k[layer][:n_groups, :, :prefix_width]
    prefix_v = cache.prefix_v[layer][:n_groups, :, :prefix_width]
    suffix_k = cache.suffix_k[layer][:batch, :, :suffix_width]
    suffix_v = cache.suffix_v[layer][:batch, :, :suffix_width]
    dtype = prefix_k.dtype
    if dtype in (torch.float32, torch.float64) and query.dtype == dtype \
            and batch * kv_heads * (prefix_width + suffix_width) * dim * prefix_k.element_size() <= GATHER_BYTES:
        def gather(prefix: torch.Tensor, suffix: torch.Tensor, which: int) -> torch.Tensor:
            if torch.is_grad_enabled():  # (the engine's check runs with gradients; out= has none)
                return torch.cat((prefix.index_select(0, plan.slot_groups), suffix), 2)
            part = cache.buffer(0, (batch, kv_heads, prefix_width, dim), prefix)
            row = cache.buffer(which, (batch, kv_heads, prefix_width + suffix_width, dim), prefix)
            return torch.cat((torch.index_select(prefix, 0, plan.slot_groups, out=part), suffix), 2, out=row)

        keys, values = gather(prefix_k, suffix_k, 1), gather(prefix_v, suffix_v, 2)
        # the bias in the keys' dtype: torch's CPU kernel reads a float32 mask of float64 inputs
        # as float64 memory, without a word
        bias = plan.bias if plan.bias.dtype == dtype else plan.bias.to(dtype)
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=bias, scale=scale, enable_gqa=rep > 1)
        return out.transpose(1, 2)
    acc = torch.promote_types(dtype, torch.float32)  # scores and sums: float32 for 16-bit keys, else theirs
    q = (query.view(batch, kv_heads, rep, dim).to(acc) * scale).to(dtype)

    def to_groups(x: torch.Tensor) -> torch.Tensor:
        """Per-slot ``(slots, kv heads, rep, F)`` -> group layout ``(groups, kv heads, width ×
        rep, F)``: the live slots at their rows, zeros elsewhere (small tensors only)."""
        out = x.new_zeros(rows, kv_heads, rep, x.shape[-1])
        out[plan.live_rows] = x[plan.live_slots]
        return out.view(n_groups, plan.width, kv_heads, rep, -1).transpose(1, 2).reshape(n_groups, kv_heads, -1,
                                                                                         x.shape[-1])

    def to_slots(x: torch.Tensor) -> torch.Tensor:
        """Group layout ``(groups, kv heads, width × rep, F)`` -> per slot ``(slots, kv heads, rep, F)``."""
        x = x.view(n_groups, kv_heads, plan.width, rep, -1).transpose(1, 2).reshape(rows, kv_heads, rep, -1)
        return x.index_select(0, plan.slot_rows)

    # The prompt part is computed in the group layout, so the big score tensors are never copied
    # between layouts: only per-row maxima, sums and outputs are.
    s_prefix = (to_groups(q) @ prefix_k.transpose(-1, -2)).to(acc).add_(plan.prefix_bias.view(n_groups, 1, 1, -1))
    # keys @ query (not query @ keysᵀ): the BLAS reads each slot's keys as stored, about 1.2 times
    # faster for one query row (memory-bound)
    s_suffix = (suffix_k @ q.transpose(-1, -2)).transpose(-1, -2).to(acc)
    s_suffix.add_(plan.suffix_bias.view(batch, 1, 1, -1))
    top = torch.maximum(to_slots(s_prefix.amax(-1, keepdim=True)), s_suffix.amax(-1, keepdim=True))
    e_prefix = s_prefix.sub_(to_groups(top)).exp_()
    e_suffix = s_suffix.sub_(top).exp_()
    total = to_slots(e_prefix.sum(-1, keepdim=True)) + e_suffix.sum(-1, keepdim=True)
    out = to_slots((e_prefix.to(dtype) @ prefix_v).to(acc)) + (e_suffix.to(dtype) @ suffix_v).to(acc)
    return (out / total).to(query.dtype).view(batch, 1, heads, dim)


@contextlib.contextmanager
def active(model, cache: SlotCache):
    """Route ``model``'s attention through ``slot_attention`` with ``cache``, for the duration."""
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(NAME, slot_attention)
    config = model.config
    saved = config._attn_implementation
    token = _ACTIVE.set(cache)
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = saved
        _ACTIVE.reset(token)
