"""The one place that turns logits into log-probabilities.

Shapes use suffixes: B rows, T positions, V vocabulary. Position t's logits predict token t+1, so
the log-prob of token t+1 sits at index t of the shifted tensors; the loss mask is shifted the same
way.

Models whose logits are exactly ``hidden @ W.T`` (``head_of``: no bias, soft-capping or scaling)
never produce their full logits here. The model runs its decoder (asked for the logits of one
position per row) and, inside its forward pass (where a model sharded with FSDP has its whole
output-layer weight), the hidden states at the response positions are taken, and the log-prob of each
target is ``logit[target] − logsumexp``, a chunk of positions at a time (``target_logps``); the
backward pass recomputes each chunk's logits instead of keeping them (unless all the positions'
softmax fits in ``KEEP_VALUES``: then it is kept). Memory is one chunk of ``chunk × V`` values (or
the kept softmax), never ``B × T × V`` logits, and prompts and padding cost no output-layer matmul.
Asked for it, the same pass also gives each position's entropy −Σ_v p_v log p_v from the chunk's
logits it already holds (with a gradient only when asked: an entropy bonus).
Other models give their full logits, and the same difference is computed a few rows at a time, so
the full-vocabulary log-softmax is never materialised in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from alignlab.data.collate import Batch, collate_completions
from alignlab.packed_linear import Linear
from alignlab.training.distributed import unwrap

# Model types whose output is a plain, bias-free linear map of the decoder's normalised output.
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3"})
# Logits per chunk: 16 MB in fp32. Under glibc's largest mmap threshold (32 MB), so that a chunk's
# temporaries come from the reused heap: a fresh 128 MB buffer costs its page faults, which took
# longer than the exponential written into it (2 cores: 60 ms against 20 for 33M values).
CHUNK_VALUES = 1 << 22
# Softmax values (all chunks together) that the forward pass may keep for the backward pass
# instead of recomputing the logits there: 128 MB in fp32.
KEEP_VALUES = 1 << 25
# The largest output layer whose packed copy (``_product``) a pass holds: the same 128 MB.
PACK_VALUES = 1 << 25


def head_of(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.Tensor] | None:
    """(decoder, head weight) of a model this module can serve, else None. ``model`` may be
    wrapped in DistributedDataParallel or carry PEFT adapters (not on the head)."""
    base = unwrap(model)
    config = getattr(base, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return None
    try:
        head = base.get_output_embeddings()
        decoder = base.get_decoder()
    except AttributeError:  # not a transformers model, whatever its config says
        return None
    if type(head) is not torch.nn.Linear or head.bias is not None or decoder is None:
        return None
    if hasattr(head.weight, "ds_id"):  # partitioned by DeepSpeed ZeRO-3: whole only inside the head's own forward
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


def inside_forward(model: torch.nn.Module, decoder: torch.nn.Module, fn, **inputs) -> None:
    """Run ``model`` on ``inputs`` (the logits of the last position only) and, inside its forward
    pass, call ``fn(decoder output (B, T, d), output-layer weight (V, d))``. The weight is read
    there: a model sharded with FSDP (``training/fsdp.py``) has its whole weight only while it
    runs, and the gradient that reaches that weight is the one FSDP reduces."""
    calls = 0

    def call(_module, _args, output):
        nonlocal calls
        calls += 1
        fn(output[0], unwrap(model).get_output_embeddings().weight)

    handle = decoder.register_forward_hook(call)
    try:
        model(**inputs, logits_to_keep=1, use_cache=False)
    finally:
        handle.remove()
    if calls != 1:
        raise RuntimeError(f"expected one decoder call in the model's forward pass, saw {calls}")


def _accumulator(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk(weight: torch.Tensor) -> int:
    return max(1, CHUNK_VALUES // weight.shape[0])


def _logits(hidden_Nd: torch.Tensor, weight: Linear, acc: torch.dtype) -> torch.Tensor:
    """One chunk's logits (N, V): the matmul in the weight's (compute) dtype, the result in ``acc``.
    The weight is prepared once per pass over the chunks (``packed_linear``: a float32 one on the
    CPU packed for oneDNN, whose product with a chunk of rows and a 32k vocabulary took about half
    of MKL's time). The backward pass recomputes a chunk's logits from the same rows, so the same
    values."""
    return weight(hidden_Nd.to(weight.weight.dtype)).to(acc)


def _product(weight_Vd: torch.Tensor) -> Linear:
    """The output layer's product for the chunks of one pass (``weight_Vd`` already in the compute
    dtype). Packed for oneDNN only when the packed copy, held while the pass runs, is at most
    ``PACK_VALUES`` numbers, the memory the kept softmax may take: the 30M benchmark model's 12M
    are, a 152k × 896 output layer (545 MB packed) is not and multiplies from its own weight."""
    return Linear(weight_Vd, pack=weight_Vd.numel() <= PACK_VALUES)


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype the output layer's matmul runs in: autocast's when it is on (bf16 mixed
    precision), else the weight's. Fixed once in the forward pass, so that the backward pass
    (which autocast does not reach) recomputes exactly the same logits."""
    kind = weight.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return weight.dtype


def _entropy(logits_NV: torch.Tensor, lse_N: torch.Tensor) -> torch.Tensor:
    """−Σ_v p_v log p_v of each row's softmax, given its logsumexp; a −inf logit adds nothing.
    Two temporaries of the logits' size, whatever the chunk."""
    logp = logits_NV - lse_N[:, None]
    p = logp.exp()
    return -p.mul_(logp.masked_fill_(logp == float("-inf"), 0.0)).sum(-1)


def _chunk_stats(logits_NV: torch.Tensor, targets_N: torch.Tensor, with_entropy: bool,
                 keep_NV: torch.Tensor | None):
    """From one chunk's logits (overwritten): the targets' log-probs, the logsumexp, each row's
    Σ exp(z) for z = logits − max, and the entropy (None without ``with_entropy``); ``keep_NV``
    (optional) receives exp(z) for the backward pass. One exponential serves all: logsumexp =
    max + log Σ exp(z) and the entropy −Σ p log p = log Σ exp(z) − Σ exp(z)·z / Σ exp(z)."""
    picked_N = logits_NV.gather(-1, targets_N[:, None]).squeeze(-1)
    max_N1 = logits_NV.amax(-1, keepdim=True)
    z = logits_NV.sub_(max_N1)
    if with_entropy:  # a −inf logit (probability 0) then adds 0·finfo.min = 0 to Σ exp(z)·z, not NaN
        z.clamp_(min=torch.finfo(z.dtype).min)
    if keep_NV is not None:
        e = torch.exp(z, out=keep_NV)
    else:
        e = z.exp() if with_entropy else z.exp_()
    sum_N = e.sum(-1)
    log_sum_N = sum_N.log()
    lse_N = max_N1.squeeze(-1) + log_sum_N
    entropy_N = log_sum_N - z.mul_(e).sum(-1) / sum_N if with_entropy else None
    return picked_N - lse_N, lse_N, sum_N, entropy_N


class _TargetLogps(torch.autograd.Function):
    """log softmax(h W^T)[target] per row of ``h``, chunked in both directions; with
    ``with_entropy`` also each row's entropy (a second output, empty otherwise; differentiable with
    ``entropy_grad``, else without gradient).

    Gradients with respect to the logits z of one row, p = softmax(z), H = −Σ_v p_v log p_v:
    ∂ log p_y/∂z_v = [v = y] − p_v, and ∂H/∂z_v = −p_v (log p_v + H) (from ∂ log p_u/∂z_v =
    [u = v] − p_v: ∂H/∂z_v = −Σ_u p_u([u = v] − p_v)(log p_u + 1) = −p_v(log p_v + 1) + p_v(1 − H)).
    With output gradients g and e the backward pass multiplies d_v = g·[v = y] − p_v (g + e (log p_v
    + H)) into the output layer (a p_v = 0 adds nothing).

    The backward pass needs each row's softmax. When all rows hold at most ``KEEP_VALUES`` of them
    the forward pass keeps them (unnormalised, in one buffer held until the backward pass, which
    then runs each output-layer matmul once over all rows); otherwise the backward pass recomputes
    each chunk's logits, so memory stays at one chunk whatever the rows."""

    @staticmethod
    def forward(ctx, hidden_Nd, weight_Vd, targets_N, with_entropy, grad_enabled, entropy_grad=False):
        cd = _compute_dtype(weight_Vd)
        acc = _accumulator(cd)
        w = _product(weight_Vd.detach().to(cd))
        (n, _), step, vocab = hidden_Nd.shape, _chunk(weight_Vd), weight_Vd.shape[0]
        trained = grad_enabled and (ctx.needs_input_grad[0] or ctx.needs_input_grad[1])
        kept_NV = torch.empty(n, vocab, dtype=acc, device=hidden_Nd.device) if trained and n * vocab <= KEEP_VALUES \
            else None
        out_N, lse_N, sum_N = (torch.empty(n, dtype=acc, device=hidden_Nd.device) for _ in range(3))
        ent_N = torch.empty(n if with_entropy else 0, dtype=acc, device=hidden_Nd.device)
        for s in range(0, n, step):
            out_N[s:s + step], lse_N[s:s + step], sum_N[s:s + step], ent = _chunk_stats(
                _logits(hidden_Nd[s:s + step], w, acc), targets_N[s:s + step], with_entropy,
                None if kept_NV is None else kept_NV[s:s + step])
            if with_entropy:
                ent_N[s:s + step] = ent
        entropy_grad = with_entropy and entropy_grad
        ctx.save_for_backward(hidden_Nd, weight_Vd, targets_N, lse_N, ent_N if entropy_grad else None)
        ctx.compute_dtype, ctx.kept = cd, (None if kept_NV is None else (kept_NV, sum_N))
        ctx.set_materialize_grads(False)
        if not entropy_grad:
            ctx.mark_non_differentiable(ent_N)
        return out_N, ent_N

    @staticmethod
    def backward(ctx, grad_N, grad_entropy_N):
        hidden_Nd, weight_Vd, targets_N, lse_N, ent_N = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        cd, acc = ctx.compute_dtype, lse_N.dtype
        if ent_N is None or grad_entropy_N is None or not grad_entropy_N.any():
            grad_entropy_N = None
        if grad_N is None:
            grad_N = torch.zeros_like(lse_N)
        w = weight_Vd.to(cd)
        # d/dlogits of (logit[target] − logsumexp) is onehot(target) − softmax; of the entropy, −p (log p + H)
        if ctx.kept is not None:  # exp(z) / Σ exp(z), kept by the forward pass; consumed here
            d, sum_N = ctx.kept
            ctx.kept = None  # a second backward pass (retain_graph) recomputes
            g = grad_N.to(acc)
            if grad_entropy_N is not None:  # log p = log exp(z) − log Σ exp(z), 0 where p = 0
                d.div_(sum_N[:, None])
                step = _chunk(weight_Vd)  # log p a chunk of rows at a time: no second buffer of the kept size
                for s in range(0, d.shape[0], step):
                    rows = slice(s, s + step)
                    _entropy_factor(d[rows], grad_N[rows], grad_entropy_N[rows], ent_N[rows], d[rows].log())
                d.neg_()
            else:
                d.mul_((-g / sum_N)[:, None])
            d.scatter_add_(-1, targets_N[:, None], g[:, None])
            d, h = d.to(cd), hidden_Nd.to(cd)
            grad_h = (d @ w).to(hidden_Nd.dtype) if need_h else None
            grad_w = (d.T @ h).to(weight_Vd.dtype) if need_w else None
            return grad_h, grad_w, None, None, None, None
        n, step = hidden_Nd.shape[0], _chunk(weight_Vd)
        product = _product(w.detach())  # the forward pass's logits again, row for row
        grad_h = torch.empty_like(hidden_Nd) if need_h else None
        grad_w = torch.zeros(weight_Vd.shape, dtype=acc, device=weight_Vd.device) if need_w else None
        for s in range(0, n, step):
            h = hidden_Nd[s:s + step].to(cd)
            g = grad_N[s:s + step].to(acc)
            logp = _logits(h, product, acc).sub_(lse_N[s:s + step, None])
            d = torch.exp(logp)
            if grad_entropy_N is not None:
                _entropy_factor(d, grad_N[s:s + step], grad_entropy_N[s:s + step], ent_N[s:s + step], logp)
                d.neg_()
            else:
                d.mul_(-g[:, None])
            d.scatter_add_(-1, targets_N[s:s + step, None], g[:, None])
            d = d.to(cd)
            if need_h:
                grad_h[s:s + step] = d @ w
            if need_w:  # in the compute precision; the chunks' sum in fp32 or fp64
                if cd == acc:
                    grad_w.addmm_(d.T, h)
                else:
                    grad_w += d.T @ h
        return grad_h, (grad_w.to(weight_Vd.dtype) if need_w else None), None, None, None, None


def _entropy_factor(p_NV: torch.Tensor, g_N: torch.Tensor, e_N: torch.Tensor, ent_N: torch.Tensor,
                    logp_NV: torch.Tensor) -> None:
    """``p_NV`` ← p · (g + e (log p + H)) in place, 0 where p = 0 (``logp_NV`` −inf there): the
    softmax part of the logits' gradient of g·log p_y + e·H, negated (``_TargetLogps``)."""
    acc = p_NV.dtype
    factor = logp_NV.add_(ent_N.to(acc)[:, None]).mul_(e_N.to(acc)[:, None]).add_(g_N.to(acc)[:, None])
    p_NV.mul_(factor.masked_fill_(p_NV == 0, 0.0))


def target_logps(hidden_Nd: torch.Tensor, weight_Vd: torch.Tensor, targets_N: torch.Tensor) -> torch.Tensor:
    """log softmax(hidden @ weight.T)[target] for each of N positions: fp32 (fp64 for an fp64
    model), differentiable with respect to ``hidden_Nd`` and ``weight_Vd``. Under autocast the
    matmul runs in autocast's dtype, as the model's own output layer would."""
    return _TargetLogps.apply(hidden_Nd, weight_Vd, targets_N, False, torch.is_grad_enabled())[0]


def target_logps_and_entropy(hidden_Nd: torch.Tensor, weight_Vd: torch.Tensor, targets_N: torch.Tensor,
                             grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``target_logps`` and, from the same chunks of logits, the entropy −Σ_v p_v log p_v of each
    position's next-token distribution (N,), in the same dtype; differentiable with ``grad``
    (an entropy bonus), else without gradient."""
    return _TargetLogps.apply(hidden_Nd, weight_Vd, targets_N, True, torch.is_grad_enabled(), grad)


def squared_mass(hidden_Nd: torch.Tensor, weight_Vd: torch.Tensor) -> torch.Tensor:
    """log Σ_v p_v² of each position's next-token distribution, without gradient."""
    cd = _compute_dtype(weight_Vd)
    acc = _accumulator(cd)
    step = _chunk(weight_Vd)
    out = []
    with torch.no_grad():
        w = _product(weight_Vd.detach().to(cd))
        for s in range(0, hidden_Nd.shape[0], step):
            out.append(log_squared_mass(_logits(hidden_Nd[s:s + step], w, acc).unsqueeze(0)).squeeze(0))
    return torch.cat(out) if out else hidden_Nd.new_zeros(0, dtype=acc)


@dataclass
class SequenceLogps:
    """Per-row log-probs of response tokens."""

    token_logps_BT: torch.Tensor  # (B, T-1), zero where the mask is zero
    mask_BT: torch.Tensor  # (B, T-1) float, 1 on response tokens that carry loss
    sum_B: torch.Tensor  # summed log-prob of each row's response
    count_B: torch.Tensor  # number of response tokens in each row
    sqmass_B: torch.Tensor | None = None  # Σ over response tokens of log Σ_v p_v², no gradient (WPO)
    entropy_BT: torch.Tensor | None = None  # (B, T-1) −Σ_v p_v log p_v where each token was predicted
    sqmass_BT: torch.Tensor | None = None  # (B, T-1) log Σ_v p_v² where each token was predicted (with sqmass_B)

    @property
    def mean_B(self) -> torch.Tensor:
        return self.sum_B / self.count_B.clamp(min=1)


def gather_logps(logits_BTV: torch.Tensor, targets_BT: torch.Tensor, chunk_rows: int = 8) -> torch.Tensor:
    """log softmax(logits)[target] for every position, in fp32 (fp64 stays fp64), a few rows at a time."""
    out = []
    for start in range(0, logits_BTV.shape[0], chunk_rows):
        lg = logits_BTV[start:start + chunk_rows]
        lg = lg if lg.dtype == torch.float64 else lg.float()
        tgt = targets_BT[start:start + chunk_rows]
        picked = lg.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        out.append(picked - torch.logsumexp(lg, dim=-1))
    return torch.cat(out, dim=0)


def log_squared_mass(logits_BTV: torch.Tensor, chunk_rows: int = 8) -> torch.Tensor:
    """log Σ_v p_v² of the next-token distribution at every position (B, T), without gradient:
    2·logsumexp(...) rewritten as logsumexp(2·logits) − 2·logsumexp(logits)."""
    out = []
    with torch.no_grad():
        for start in range(0, logits_BTV.shape[0], chunk_rows):
            lg = logits_BTV[start:start + chunk_rows]
            lg = lg if lg.dtype == torch.float64 else lg.float()
            out.append(torch.logsumexp(2 * lg, dim=-1) - 2 * torch.logsumexp(lg, dim=-1))
    return torch.cat(out, dim=0)


def _row_entropies(logits_NV: torch.Tensor, rows: int) -> torch.Tensor:
    """−Σ_v p_v log p_v of each row of ``logits_NV`` (N,), ``rows`` rows at a time, in fp32 (fp64
    stays fp64)."""
    acc = _accumulator(logits_NV.dtype)
    out = [_entropy(lg, torch.logsumexp(lg, dim=-1))
           for lg in (logits_NV[s:s + rows].to(acc) for s in range(0, logits_NV.shape[0], rows))]
    return torch.cat(out) if out else logits_NV.new_zeros(0, dtype=acc)


class _TokenEntropy(torch.autograd.Function):
    """−Σ_v p_v log p_v of each row of ``logits_NV`` (N,), ``rows`` rows at a time, in fp32 (fp64
    stays fp64). The backward pass keeps only the logits (which the caller's own log-prob pass
    keeps anyway) and the entropies: it recomputes each chunk's softmax and multiplies the output
    gradient e into ∂H/∂z_v = −p_v (log p_v + H) (``_TargetLogps``; 0 where p_v = 0), where
    autograd through log_softmax would hold three fp32 copies of the logits until then."""

    @staticmethod
    def forward(ctx, logits_NV, rows):
        ent_N = _row_entropies(logits_NV, rows)
        ctx.save_for_backward(logits_NV, ent_N)
        ctx.rows = rows
        return ent_N

    @staticmethod
    def backward(ctx, grad_N):
        logits_NV, ent_N = ctx.saved_tensors
        grad_NV = torch.empty_like(logits_NV)
        zero = torch.zeros_like(ent_N[:ctx.rows])
        for s in range(0, logits_NV.shape[0], ctx.rows):
            lg = logits_NV[s:s + ctx.rows].to(ent_N.dtype)
            logp = lg - torch.logsumexp(lg, dim=-1, keepdim=True)
            p = torch.exp(logp)
            _entropy_factor(p, zero[:len(p)], grad_N[s:s + ctx.rows], ent_N[s:s + ctx.rows], logp)
            grad_NV[s:s + ctx.rows] = p.neg_()
        return grad_NV, None


def token_entropy(logits_BTV: torch.Tensor, chunk_rows: int = 8, grad: bool = False) -> torch.Tensor:
    """−Σ_v p_v log p_v of the next-token distribution at every position (B, T), in fp32 (fp64
    stays fp64), a few rows at a time; without gradient unless ``grad`` (then ``_TokenEntropy``,
    which recomputes each chunk's softmax in the backward pass instead of keeping it)."""
    shape = logits_BTV.shape[:-1]
    rows = max(1, chunk_rows * (shape[1] if len(shape) > 1 else 1))  # ``chunk_rows`` of the first dimension
    flat = logits_BTV.reshape(-1, logits_BTV.shape[-1])
    if grad and torch.is_grad_enabled():
        return _TokenEntropy.apply(flat, rows).view(shape)
    with torch.no_grad():
        return _row_entropies(flat, rows).view(shape)


def left_align(values_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """The masked entries of each row moved to its start, in order: (B, L) with L the largest
    count, zero beyond each row's count. Differentiable with respect to ``values_BT``."""
    keep = mask_BT > 0
    width = int(keep.sum(-1).max()) if keep.numel() else 0
    out = values_BT.new_zeros((values_BT.shape[0], width))
    rows, cols = keep.nonzero(as_tuple=True)
    slots = (keep.long().cumsum(-1) - 1)[rows, cols]
    return out.index_put((rows, slots), values_BT[rows, cols])


def _attention_mask(model: torch.nn.Module, allowed_B1TT: torch.Tensor) -> torch.Tensor:
    """A block mask in the form the model's attention takes: boolean for SDPA and flex attention,
    additive (0 or the dtype's minimum) for eager attention."""
    config = getattr(unwrap(model), "config", None)
    impl = getattr(config, "_attn_implementation", "sdpa")
    if impl == "eager":
        dtype = next(model.parameters()).dtype
        return torch.zeros(allowed_B1TT.shape, dtype=dtype, device=allowed_B1TT.device).masked_fill(
            ~allowed_B1TT, torch.finfo(dtype).min)
    return allowed_B1TT


def _response_logps(model: torch.nn.Module, inputs: dict, rows_N: torch.Tensor, pred_NL: torch.Tensor,
                    target_NL: torch.Tensor, mask_NL: torch.Tensor, sqmass: bool, entropy: bool | str
                    ) -> SequenceLogps:
    """Run ``model`` on ``inputs`` and return, for each of N responses, the log-probs of its
    tokens: token k of response n is ``target_NL[n, k]``, predicted at position ``pred_NL[n, k]``
    of row ``rows_N[n]``, and counts where ``mask_NL`` is 1. ``entropy``: False, True (without
    gradient) or "grad" (differentiable)."""
    grad = entropy == "grad"
    keep = mask_NL > 0
    n_idx, k_idx = keep.nonzero(as_tuple=True)
    rows, cols = rows_N[n_idx], pred_NL[n_idx, k_idx]
    targets = target_NL[n_idx, k_idx]
    served = head_of(model)
    picked_K = ent_K = sq_K = None
    if served is not None:
        def head(hidden_BTd: torch.Tensor, weight_Vd: torch.Tensor) -> None:
            nonlocal picked_K, ent_K, sq_K
            hidden_K = hidden_BTd[rows, cols]
            if entropy:
                picked_K, ent_K = target_logps_and_entropy(hidden_K, weight_Vd, targets, grad)
            else:
                picked_K = target_logps(hidden_K, weight_Vd, targets)
            sq_K = squared_mass(hidden_K, weight_Vd) if sqmass else None

        inside_forward(model, served[0], head, **inputs)
    else:
        logits_KV = model(**inputs, use_cache=False).logits[rows, cols]
        picked_K = gather_logps(logits_KV.unsqueeze(1), targets.unsqueeze(1), chunk_rows=256).squeeze(1)
        sq_K = log_squared_mass(logits_KV.unsqueeze(1), chunk_rows=256).squeeze(1) if sqmass else None
        ent_K = token_entropy(logits_KV.unsqueeze(1), chunk_rows=256, grad=grad).squeeze(1) if entropy else None
    mask = keep.to(torch.float32)

    def placed(values_K: torch.Tensor) -> torch.Tensor:
        return values_K.new_zeros(mask_NL.shape).index_put((n_idx, k_idx), values_K)

    token_logps = placed(picked_K)
    sq = None if sq_K is None else placed(sq_K)
    ent = None if ent_K is None else placed(ent_K)
    return SequenceLogps(token_logps, mask, token_logps.sum(-1), mask.sum(-1), None if sq is None else sq.sum(-1),
                         ent, sq)


def forward_inputs(model: torch.nn.Module, batch: Batch) -> dict:
    """The keyword arguments that run ``model`` on ``batch``: its ids and padding mask, or for a
    packed batch its block attention mask (in the form the model's attention takes) and position ids."""
    if batch.packed is None:
        return {"input_ids": batch.input_ids_BT, "attention_mask": batch.attention_mask_BT}
    pk = batch.packed
    return {"input_ids": batch.input_ids_BT, "attention_mask": _attention_mask(model, pk.attention_B1TT),
            "position_ids": pk.position_ids_BT}


def response_positions(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows_N, pred_NL, target_NL, mask_NL): response n's token k is ``target_NL[n, k]``, predicted
    at position ``pred_NL[n, k]`` of row ``rows_N[n]``, and carries loss where ``mask_NL`` is 1. A
    padded batch has one response per row (L = T − 1, every position); a packed one its own layout."""
    if batch.packed is not None:
        pk = batch.packed
        return pk.row_N, pk.pred_NL, pk.target_NL, pk.mask_NL
    ids_BT = batch.input_ids_BT
    B, T = ids_BT.shape
    positions = torch.arange(T - 1, device=ids_BT.device).expand(B, T - 1)
    return torch.arange(B, device=ids_BT.device), positions, ids_BT[:, 1:], batch.loss_mask_BT[:, 1:]


def sequence_logps(model: torch.nn.Module, batch: Batch, sqmass: bool = False, entropy: bool | str = False
                   ) -> SequenceLogps:
    """Run ``model`` on a batch and return the log-probs of its response tokens; with ``sqmass``
    also each row's Σ_t log Σ_v p_v² over its response positions, and with ``entropy`` the entropy
    −Σ_v p_v log p_v of the model's next-token distribution where each response token is predicted
    (``entropy_BT``, laid out as ``token_logps_BT``). Both without gradient, but for
    ``entropy="grad"``: then the entropy is differentiable (an entropy bonus). A padded batch gives
    one row per batch row; a shared-prompt batch (``data/pack.py``) one row per response, in the
    batch's response order, tokens left-aligned."""
    return _response_logps(model, forward_inputs(model, batch), *response_positions(batch), sqmass, entropy)


def completion_logps(model: torch.nn.Module, prompts: Sequence[tuple[int, ...]],
                     completions: Sequence[tuple[int, ...]], pad_id: int, batch_size: int = 64) -> torch.Tensor:
    """Summed log-prob of each completion given its prompt (token ids), ``batch_size`` rows at a
    time, without gradients. Returns a float64 tensor of shape (N,) on the CPU."""
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            batch = collate_completions(prompts[start:start + batch_size], completions[start:start + batch_size], pad_id)
            batch.to(device)
            out.append(sequence_logps(model, batch).sum_B.double().cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def split_pairs(logps: SequenceLogps, num_pairs: int) -> tuple[SequenceLogps, SequenceLogps]:
    """Split a pair batch's log-probs into (chosen, rejected)."""
    def part(sl: slice) -> SequenceLogps:
        def rows(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[sl]

        return SequenceLogps(logps.token_logps_BT[sl], logps.mask_BT[sl], logps.sum_B[sl], logps.count_B[sl],
                             rows(logps.sqmass_B), rows(logps.entropy_BT), rows(logps.sqmass_BT))

    return part(slice(0, num_pairs)), part(slice(num_pairs, 2 * num_pairs))
