"""A key/value cache of fixed slots for the native backend, behind transformers' ``Cache`` API.

Why by hand: transformers' caches hold one batch whose rows start and stop together (the dynamic
cache concatenates every step; the static cache is pre-allocated but its rows share one
position), and its paged continuous-batching cache is built for GPUs (measured in
``bench/generate_vs_hf.py``). This cache holds ``slots`` sequences, each in its own pre-allocated
row of ``(kv heads, length, head dim)`` per layer, each at its own position, so a finished
sequence's slot can take a new one while the others keep decoding.

The model's attention layers call ``update(keys, values, layer)``; what the cache does depends on
the mode the engine set before the forward pass:
- prefill: the batch is ``m`` left-padded prompts; each prompt's keys (shifted past its padding)
  are copied into every slot that samples from it (the n samples of one prompt share one
  prefill), and the attention of this pass uses the prompts' own keys;
- decode: row ``b`` of the batch is slot ``b``; its new key goes to the slot's next position and
  the attention sees the first ``width`` positions of every slot (the engine's mask hides the
  positions a slot has not filled).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache


class SlotCache(Cache):
    def __init__(self, slots: int, length: int):
        super().__init__(layers=[])
        self.slots = slots
        self.length = length
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._prefill: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (pads, rows, slots)
        self._decode: tuple[torch.Tensor, int] | None = None  # (positions, width)

    # -- modes, set by the engine before each forward pass --------------------------------------

    def prefill(self, pads: torch.Tensor, rows: torch.Tensor, slots: torch.Tensor) -> None:
        """The next pass is a prefill of left-padded prompts, batch row ``r`` padded by ``pads[r]``;
        slot ``slots[i]`` takes the prompt of batch row ``rows[i]``."""
        self._prefill, self._decode = (pads, rows, slots), None

    def decode(self, positions: torch.Tensor, width: int) -> None:
        """The next pass decodes one token per slot ``0..B-1``, writing slot b's at ``positions[b]``;
        attention reads the first ``width`` positions."""
        self._prefill, self._decode = None, (positions, width)

    def move(self, source: int, target: int) -> None:
        """Copy slot ``source``'s keys and values to slot ``target`` (to keep the live slots at the front)."""
        for k, v in zip(self.keys, self.values, strict=True):
            k[target].copy_(k[source])
            v[target].copy_(v[source])

    # -- transformers' Cache API ------------------------------------------------------------------

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx == len(self.keys):
            shape = (self.slots, key_states.shape[1], self.length, key_states.shape[3])
            self.keys.append(key_states.new_zeros(shape))
            self.values.append(value_states.new_zeros(shape[:3] + (value_states.shape[3],)))
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if self._prefill is not None:
            pads, rows, slots = self._prefill
            width = key_states.shape[2]
            # shift each row left by its padding (position j of a slot holds the prompt's token j;
            # what lands after the prompt's end is never attended to and is overwritten later)
            shift = (pads.view(-1, 1) + torch.arange(width, device=pads.device)).clamp_(max=width - 1)
            for cache, new in ((keys, key_states), (values, value_states)):
                index = shift.view(len(pads), 1, width, 1).expand(-1, new.shape[1], -1, new.shape[3])
                cache[:, :, :width].index_copy_(0, slots, new.gather(2, index).index_select(0, rows))
            return key_states, value_states
        if self._decode is None:
            raise RuntimeError("SlotCache: the engine set no mode before the forward pass")
        positions, width = self._decode
        batch = key_states.shape[0]
        rows = torch.arange(batch, device=positions.device)
        keys[rows, :, positions] = key_states[:, :, 0]
        values[rows, :, positions] = value_states[:, :, 0]
        return keys[:batch, :, :width], values[:batch, :, :width]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        raise RuntimeError("SlotCache: the engine passes a prepared 4D attention mask")

    @property
    def is_compileable(self) -> bool:
        return False
