"""Log-probs of chosen tokens straight from the final hidden states, never the full logits.

A causal LM's last step is ``logits = hidden @ W.T`` over the whole vocabulary at every position
of every row. Training needs the log-prob of one target token at the response positions only, so
this module runs the model's decoder (asking the model for the logits of one position per row),
takes the hidden states at the response positions, and computes ``logit[target] − logsumexp``
a chunk of positions at a time. The backward pass recomputes each chunk's logits instead of
keeping them: memory is one chunk of ``chunk × V`` values, never ``B × T × V``, and prompts and
padding cost no head matmul at all.

Only models whose logits are exactly ``hidden @ W.T`` (no bias, soft-capping or scaling) take
this path; ``head_of`` says which, and every other model goes through its full logits.
"""

from __future__ import annotations

import torch

# Model types whose output is a plain, bias-free linear map of the decoder's normalised output.
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3"})
CHUNK_VALUES = 1 << 25  # logits per chunk: 128 MB in fp32


def head_of(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.Tensor] | None:
    """(decoder, head weight) of a model this module can serve, else None. ``model`` may be
    wrapped in DistributedDataParallel or carry PEFT adapters (not on the head)."""
    base = getattr(model, "module", model)
    config = getattr(base, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return None
    try:
        head = base.get_output_embeddings()
        decoder = base.get_decoder()
    except (AttributeError, NotImplementedError):
        return None
    if type(head) is not torch.nn.Linear or head.bias is not None or decoder is None:
        return None
    return decoder, head.weight


def final_hidden(model: torch.nn.Module, decoder: torch.nn.Module, **inputs) -> torch.Tensor:
    """The decoder's output (B, T, d) for ``inputs``, from a call of ``model`` itself (so that a
    DDP wrapper sees the forward pass) that computes the logits of the last position only."""
    seen: list[torch.Tensor] = []

    def keep(_module, _args, output):
        seen.append(output[0])

    handle = decoder.register_forward_hook(keep)
    try:
        model(**inputs, logits_to_keep=1, use_cache=False)
    finally:
        handle.remove()
    if len(seen) != 1:
        raise RuntimeError(f"expected one decoder call in the model's forward pass, saw {len(seen)}")
    return seen[0]


def _accumulator(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk(weight: torch.Tensor) -> int:
    return max(1, CHUNK_VALUES // weight.shape[0])


class _TargetLogps(torch.autograd.Function):
    """log softmax(h W^T)[target] per row of ``h``, chunked in both directions."""

    @staticmethod
    def forward(ctx, hidden_Nd, weight_Vd, targets_N):
        acc = _accumulator(hidden_Nd.dtype)
        n, step = hidden_Nd.shape[0], _chunk(weight_Vd)
        out_N = torch.empty(n, dtype=acc, device=hidden_Nd.device)
        lse_N = torch.empty(n, dtype=acc, device=hidden_Nd.device)
        for s in range(0, n, step):
            logits = (hidden_Nd[s:s + step] @ weight_Vd.T).to(acc)
            lse_N[s:s + step] = torch.logsumexp(logits, dim=-1)
            out_N[s:s + step] = logits.gather(-1, targets_N[s:s + step, None]).squeeze(-1) - lse_N[s:s + step]
        ctx.save_for_backward(hidden_Nd, weight_Vd, targets_N, lse_N)
        return out_N

    @staticmethod
    def backward(ctx, grad_N):
        hidden_Nd, weight_Vd, targets_N, lse_N = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        acc = lse_N.dtype
        n, step = hidden_Nd.shape[0], _chunk(weight_Vd)
        grad_h = torch.empty_like(hidden_Nd) if need_h else None
        grad_w = torch.zeros(weight_Vd.shape, dtype=acc, device=weight_Vd.device) if need_w else None
        for s in range(0, n, step):
            h = hidden_Nd[s:s + step]
            g = grad_N[s:s + step].to(acc)
            # d/dlogits of (logit[target] − logsumexp) is onehot(target) − softmax
            d = torch.exp((h @ weight_Vd.T).to(acc) - lse_N[s:s + step, None]).mul_(-g[:, None])
            d.scatter_add_(-1, targets_N[s:s + step, None], g[:, None])
            d = d.to(weight_Vd.dtype)
            if need_h:
                grad_h[s:s + step] = d @ weight_Vd
            if need_w:
                grad_w += d.T @ h  # in the model's precision; the chunks' sum in fp32 or fp64
        return grad_h, (grad_w.to(weight_Vd.dtype) if need_w else None), None


def target_logps(hidden_Nd: torch.Tensor, weight_Vd: torch.Tensor, targets_N: torch.Tensor) -> torch.Tensor:
    """log softmax(hidden @ weight.T)[target] for each of N positions: fp32 (fp64 for an fp64
    model), differentiable with respect to ``hidden_Nd`` and ``weight_Vd``."""
    return _TargetLogps.apply(hidden_Nd, weight_Vd, targets_N)


def squared_mass(hidden_Nd: torch.Tensor, weight_Vd: torch.Tensor) -> torch.Tensor:
    """log Σ_v p_v² of each position's next-token distribution, without gradient."""
    acc = _accumulator(hidden_Nd.dtype)
    step = _chunk(weight_Vd)
    out = []
    with torch.no_grad():
        for s in range(0, hidden_Nd.shape[0], step):
            logits = (hidden_Nd[s:s + step] @ weight_Vd.T).to(acc)
            out.append(torch.logsumexp(2 * logits, dim=-1) - 2 * torch.logsumexp(logits, dim=-1))
    return torch.cat(out) if out else hidden_Nd.new_zeros(0, dtype=acc)
