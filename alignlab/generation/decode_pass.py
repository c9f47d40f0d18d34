"""The native backend's forward passes (prefill and decode steps) for Llama, Mistral and Qwen2
models, written out.

Why by hand: a decode step feeds one token per sequence, so its matrix products are small and a
step costs mostly the calls around them. transformers' layers run every projection, norm,
activation and rotary embedding as a module call of its own, with its argument handling; on the
testbed's 4-layer model a decode step of 32 sequences took about 3.3 ms through the model's
forward pass, of which the products were 0.6 ms, and 2.5 ms through this pass. This pass computes
the same function as plain tensor operations: the rotary embedding once per step for every layer
and for the query and key heads of a layer at once, a float32 model's norms as torch's fused
``rms_norm``, its projections of at least 64K weights from weights packed once per call for
oneDNN (``packed_linear.py``: a generation call of the 30M benchmark model took 0.76-0.93 s
against 1.40-1.49 s), and the keys, values and attention of the ``SlotCache`` (the same functions
the model's forward pass reaches through the cache API). Prefill runs the same layers over the
left-padded prompts, with transformers' SDPA attention under the engine's mask and the cache's
own ``update``; the testbed's 4 prompts took 2.7 ms against 4.0 ms through the model's forward
pass. vLLM writes out its models' forward passes in the same way; transformers has nothing of
the kind for a CPU.

Only a model whose layers are exactly these takes this path: ``DecodePass.build`` checks the
classes of the model, its layers and norms, that every projection is a plain ``nn.Linear`` of
plain float32 or float64 CPU tensors, that the activation is SiLU and that no module has hooks
(but the one gradient checkpointing puts on the input embeddings) or a ``forward`` of its own. It
is built again for every generation call, and a model that no longer passes (a hook, a dtype or a
device changed since the check) samples through its own forward pass.
Any other model samples through its own forward pass: one wrapped for LoRA or sharded, one on a
GPU (where this pass has not been run), and one in 16 bits, whose rounding differs with the
shapes of the products (on the test Llama in bfloat16 the pass's log-probs differ from a plain
forward pass's by 0.06, more than the engine's check allows). The engine also checks the pass
against a plain forward pass of the model before its first use (``native.decode_pass_ok``),
prefill and decode steps both, as it checks its own path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignlab.generation.slots import SlotCache, attend
from alignlab.packed_linear import Linear


def _layer_classes() -> tuple[type, ...]:
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from transformers.models.mistral.modeling_mistral import MistralDecoderLayer
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

    return LlamaDecoderLayer, MistralDecoderLayer, Qwen2DecoderLayer


def _model_classes() -> tuple[type, ...]:
    from transformers.models.llama.modeling_llama import LlamaForCausalLM
    from transformers.models.mistral.modeling_mistral import MistralForCausalLM
    from transformers.models.qwen2.modeling_qwen2 import Qwen2ForCausalLM

    return LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM


def _plain(module: torch.nn.Module, called: bool = False) -> bool:
    """No hooks, no ``forward`` set on the module itself (as accelerate's hooks set one: code the
    pass would skip; allowed where the pass ``called`` the module), and every parameter of its own a
    plain float32 or float64 CPU tensor (not a DTensor, not offloaded). The one hook allowed is
    transformers' ``make_inputs_require_grads`` (``enable_input_require_grads``, which gradient
    checkpointing turns on, on the input embeddings): it only marks an output as needing
    gradients, which under ``no_grad`` (where generation runs) changes no value."""
    hooks = [h for h in module._forward_hooks.values() if not _marks_grads(h)]
    if hooks or module._forward_pre_hooks or (not called and "forward" in vars(module)):
        return False
    return all(type(p.data) is torch.Tensor and p.device.type == "cpu" and p.dtype in (torch.float32, torch.float64)
               for p in module.parameters(recurse=False))


def _marks_grads(hook) -> bool:
    return getattr(hook, "__name__", "") == "make_inputs_require_grads" \
        and getattr(hook, "__module__", "").startswith("transformers.")


def _linear(module, called: bool = False) -> bool:
    return type(module) is torch.nn.Linear and _plain(module, called)


_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm")


def _rms(module) -> tuple[torch.Tensor, float] | None:
    """(weight, eps) of one of these models' own RMSNorm modules, or None."""
    weight, eps = getattr(module, "weight", None), getattr(module, "variance_epsilon", None)
    if type(module).__name__ in _NORMS and isinstance(weight, torch.Tensor) and isinstance(eps, float) \
            and _plain(module):
        return weight.detach(), eps
    return None


class _Layer:
    """One decoder layer's weights as the pass uses them."""

    def __init__(self, layer):
        attn, mlp = layer.self_attn, layer.mlp
        self.norm1, self.norm2 = _rms(layer.input_layernorm), _rms(layer.post_attention_layernorm)
        self.q, self.k, self.v, self.o = (_weights(p) for p in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj))
        self.gate, self.up, self.down = (_weights(p) for p in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
        self.head_dim, self.scaling = attn.head_dim, attn.scaling


def _weights(linear) -> Linear:
    return Linear(linear.weight.detach(), None if linear.bias is None else linear.bias.detach())


def _norm(x: torch.Tensor, norm: tuple[torch.Tensor, float]) -> torch.Tensor:
    """transformers' Llama RMSNorm: normalised in float32 (a float64 model's too), back to the
    input's dtype, times the weight; for float32 input as torch's fused ``rms_norm``, the same up
    to rounding in one operation."""
    weight, eps = norm
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


class DecodePass:
    """The decode forward pass of a supported model (see the module docstring)."""

    def __init__(self, model, layers: list[_Layer], final_norm, head: torch.nn.Linear):
        self.model, self.layers, self.final_norm, self.head = model, layers, final_norm, head
        self.embed = model.model.embed_tokens.weight.detach()
        self.rotary = model.model.rotary_emb

    @classmethod
    def build(cls, model) -> DecodePass | None:
        """The pass for ``model``, reading its parameters as they are (the policy's: training
        moves them between calls), or None when the model is not one this pass computes."""
        if type(model) not in _model_classes():
            return None
        base = model.model
        layers = list(base.layers[: model.config.num_hidden_layers])
        kinds = _layer_classes()
        for layer in layers:
            attn, mlp = layer.self_attn, layer.mlp
            if type(layer) not in kinds or not all(_plain(m) for m in (layer, attn, mlp)):
                return None
            if not all(_linear(p) for p in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj,
                                            mlp.up_proj, mlp.down_proj)):
                return None
            if type(mlp.act_fn).__name__ not in ("SiLUActivation", "SiLU") or not _plain(mlp.act_fn):
                return None
            if _rms(layer.input_layernorm) is None or _rms(layer.post_attention_layernorm) is None:
                return None
            if getattr(attn, "sliding_window", None):
                return None
        head, final_norm = model.lm_head, _rms(base.norm)
        # the output layer is called as a module (the engine may set its forward: ``_fast_head``)
        if not _linear(head, called=True) or head.bias is not None or final_norm is None \
                or type(base.embed_tokens) is not torch.nn.Embedding or not _plain(base.embed_tokens) \
                or not _plain(model) or not _plain(base):
            return None
        return cls(model, [_Layer(layer) for layer in layers], final_norm, head)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, cache: SlotCache) -> torch.Tensor:
        """The ``(B, V)`` next-token logits of one token per slot ``0..B-1`` at ``positions``,
        writing their keys and values into ``cache`` (which holds the step's plan)."""

        def attention(i: int, layer: _Layer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            cache.write(i, k[:, 0], v[:, 0])
            return attend(cache, i, q[:, 0].unsqueeze(2), layer.scaling)

        h = self._layers(tokens.view(-1, 1), positions.view(-1, 1), attention)
        return self.head(_norm(h[:, 0], self.final_norm))

    def prefill(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: SlotCache
                ) -> torch.Tensor:
        """The ``(B, V)`` logits of the last position of each row of the left-padded prompts
        ``ids`` ``(B, T)`` at ``positions``, under the additive ``mask`` ``(B, 1, T, T)``, their
        keys and values handed to ``cache`` (set to prefill) as the model's attention hands them:
        the attention is SDPA over the rows' own keys, as transformers' SDPA attention computes it
        (key and value heads repeated for grouped queries)."""

        def attention(i: int, layer: _Layer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            k, v = cache.update(k.transpose(1, 2), v.transpose(1, 2), i)
            rep = q.shape[2] // k.shape[1]
            if rep > 1:
                k, v = (x.repeat_interleave(rep, dim=1) for x in (k, v))
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask, scale=layer.scaling)
            return out.transpose(1, 2)

        h = self._layers(ids, positions, attention)
        return self.head(_norm(h[:, -1], self.final_norm))

    def _layers(self, ids: torch.Tensor, positions: torch.Tensor, attention) -> torch.Tensor:
        """The decoder layers over ``ids`` ``(B, T)`` at ``positions``; ``attention(i, layer, q, k,
        v)`` (each ``(B, T, heads, head dim)``, rotary applied) gives layer ``i``'s attention output
        ``(B, T, heads, head dim)``. Returns the last layer's output, before the final norm."""
        batch, width = ids.shape
        h = F.embedding(ids, self.embed)
        cos, sin = self.rotary(h, positions)  # (B, T, head dim)
        half = cos.shape[-1] // 2
        # rotate_half(x) · sin == roll(x, half) · (−sin₁ ‖ sin₂): one roll in place of two slices,
        # a negation and a concatenation, for the query and key heads at once
        cos, sin = cos.unsqueeze(2), torch.cat((-sin[..., :half], sin[..., half:]), -1).unsqueeze(2)
        for i, layer in enumerate(self.layers):
            x = _norm(h, layer.norm1)
            dim = layer.head_dim
            q, k = layer.q(x).view(batch, width, -1, dim), layer.k(x).view(batch, width, -1, dim)
            qk = torch.cat((q, k), 2)
            qk = qk * cos + qk.roll(half, -1) * sin
            q, k = qk.split((q.shape[2], k.shape[2]), 2)
            out = attention(i, layer, q, k, layer.v(x).view(batch, width, -1, dim))
            h = h + layer.o(out.reshape(batch, width, -1))
            x = _norm(h, layer.norm2)
            h = h + layer.down(F.silu(layer.gate(x)) * layer.up(x))
        return h
