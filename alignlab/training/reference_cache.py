"""Reference log-probs: computed once per dataset, before training, and cached on disk.

The reference model never changes during training, so its log-probs of every row of every example
are computed once (without gradients, under the run's precision) and attached to the examples
(``example.ref``: one summed log-prob per row of ``example.sequences()``; ``example.ref_tokens``:
per-token values, for losses that need them). Training then runs only the policy.

The rows are computed packed, each prompt once with its responses (``data/pack.py``), as in
training. The cache file is keyed by the model (its files' names, sizes and modification times), the
precision, and every token id and loss-mask bit of every row, so any change of data, tokenizer,
chat template or length limits gives a new key. Processes split the examples, and gather the results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from alignlab.data.pack import collate_packed
from alignlab.errors import UserError, option
from alignlab.logprobs import left_align, sequence_logps
from alignlab.models import first_non_finite
from alignlab.training.distributed import Dist
from alignlab.training.prepare import write_atomic

CACHE_VERSION = 2  # 2: computed with shared-prompt packing


def cache_key(model_fingerprint: str, precision: str, examples: Sequence, tokens: bool) -> str:
    h = hashlib.sha256()
    h.update(f"v{CACHE_VERSION}\0{model_fingerprint}\0{precision}\0{tokens}\0".encode())
    for ex in examples:
        for prompt, resp in ex.sequences():
            for part in (prompt, resp.ids, resp.mask):
                h.update(array("q", part).tobytes())
                h.update(b"|")
        h.update(b"#")
    return h.hexdigest()[:32]


def _compute(model: torch.nn.Module, examples: list, pad_id: int, batch_size: int, device: torch.device,
             tokens: bool, autocast: Callable) -> list[tuple[list[float], list[list[float]]]]:
    """For each example, the summed (and per-token) log-probs of its rows, in ``sequences()``
    order. Examples go longest first, packed as in training (each prompt once, ``data/pack.py``),
    so batches pad little."""
    order = sorted(range(len(examples)), key=lambda i: -sum(len(p) + len(r) for p, r in examples[i].sequences()))
    out: list = [None] * len(examples)
    with torch.no_grad(), autocast():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = collate_packed([examples[i] for i in idx], pad_id, role_major=False).to(device)
            lp = sequence_logps(model, batch)
            values = lp.sum_B.double().cpu().tolist()
            aligned = left_align(lp.token_logps_BT, lp.mask_BT).double().cpu() if tokens else None
            counts = lp.count_B.long().cpu().tolist()
            k = 0
            for i, n in zip(idx, batch.rows_per_example, strict=True):
                per_token = [aligned[k + j, :counts[k + j]].tolist() for j in range(n)] if tokens else []
                out[i] = (values[k:k + n], per_token)
                k += n
    return out


def _read(cache_file: Path | None, n_rows: int, tokens: bool, log: Callable[[str], None]):
    """(sums, per-token values) from the cache file, or None when absent, damaged or not matching."""
    if cache_file is None or not cache_file.exists():
        return None
    try:
        saved = load_file(str(cache_file))
        if saved["sums"].numel() != n_rows or (tokens and "tokens" not in saved):
            return None
        if first_non_finite(saved.items()) is not None:  # never written so: damaged, or by an older version
            log(f"reference log-probs: ignoring cache {cache_file}, which holds non-finite values")
            return None
        sums = saved["sums"].tolist()
        per_token = []
        if tokens:
            flat, offsets = saved["tokens"].tolist(), saved["offsets"].tolist()
            per_token = [flat[offsets[i]:offsets[i + 1]] for i in range(n_rows)]
        return sums, per_token
    except Exception as e:  # a damaged cache file is recomputed, never trusted
        log(f"reference log-probs: ignoring unreadable cache {cache_file} ({type(e).__name__})")
        return None


def _row_name(example) -> str:
    """An example's data row as messages name it: with its file where the example knows it."""
    return f"{example.source}, row {example.row}" if example.source else f"data row {example.row}"


def _check_finite(examples: list, by_example: list, model_name: str) -> None:
    """Refuse non-finite reference log-probs (on every process alike: they all hold every value),
    before anything is cached or trained on."""
    bad = [ex for ex, (sums, per_token) in zip(examples, by_example, strict=True)
           if not all(map(math.isfinite, sums)) or not all(math.isfinite(v) for t in per_token for v in t)]
    if bad:
        raise UserError(
            f"reference log-probs: the model '{model_name}' gives non-finite values for {len(bad)} of "
            f"{len(examples)} examples (the first is {_row_name(bad[0])}); nothing was cached, and no loss can be "
            f"computed from them (a model overflows sooner in bf16: try {option('dtype', 'fp32')})")


def attach_reference(examples: list, reference: Callable[[], contextlib.AbstractContextManager],
                     *, pad_id: int, batch_size: int, dist: Dist, cache_file: Path | None, tokens: bool,
                     autocast: Callable, log: Callable[[str], None] = print,
                     model_name: str = "reference") -> list:
    """Return ``examples`` with ``ref`` (and with ``tokens``, ``ref_tokens``) filled in.

    ``reference()`` is a context manager yielding the reference module (named ``model_name`` in
    messages). ``cache_file``: where the values are read from if present (by the first process,
    shared with the others), and written to otherwise (None: no cache). Values that are not all
    finite are an error, and never cached."""
    rows = [row for ex in examples for row in ex.sequences()]
    found = dist.from_main(lambda: _read(cache_file, len(rows), tokens, log))
    if found is None:
        mine = list(range(dist.rank, len(examples), dist.world_size))
        with reference() as ref_model:
            device = next(ref_model.parameters()).device
            part = _compute(ref_model, [examples[i] for i in mine], pad_id, batch_size, device, tokens, autocast)
        by_example: list = [None] * len(examples)
        for rank, values in enumerate(dist.gather(part)):
            for j, i in enumerate(range(rank, len(examples), dist.world_size)):
                by_example[i] = values[j]
        _check_finite(examples, by_example, model_name)
        sums = [v for s_, _ in by_example for v in s_]
        per_token: list[list[float]] = [t for _, t_ in by_example for t in t_] if tokens else []
        if dist.is_main:
            where = f", cached in {cache_file}" if cache_file is not None else ""
            log(f"reference log-probs: computed for {len(rows)} responses{where}")
            if cache_file is not None:
                write_atomic(cache_file, lambda tmp: _save(tmp, sums, per_token if tokens else None), log,
                             "reference log-probs")
    else:
        sums, per_token = found
        if dist.is_main:
            log(f"reference log-probs: read {len(rows)} from the cache {cache_file}")
    dist.barrier()
    return _with_values(examples, sums, per_token, tokens)


def _with_values(examples: list, sums: list[float], per_token: list[list[float]], tokens: bool) -> list:
    """``examples`` with ``ref`` (and ``ref_tokens``) from the flat per-row values."""
    out, k = [], 0
    for ex in examples:
        n = len(ex.sequences())
        extra = {"ref_tokens": tuple(tuple(t) for t in per_token[k:k + n])} if tokens else {}
        out.append(dataclasses.replace(ex, ref=tuple(sums[k:k + n]), **extra))
        k += n
    return out


def live_reference(examples: list, reference: Callable[[], contextlib.AbstractContextManager], *, pad_id: int,
                   tokens: bool, autocast: Callable) -> list:
    """``examples`` with their reference values computed now, in one packed batch, without a
    cache: for a reference that moves while training (``ref_sync_steps``)."""
    with reference() as ref_model:
        device = next(ref_model.parameters()).device
        by_example = _compute(ref_model, examples, pad_id, max(len(examples), 1), device, tokens, autocast)
    _check_finite(examples, by_example, "reference")
    sums = [v for s_, _ in by_example for v in s_]
    per_token = [t for _, t_ in by_example for t in t_] if tokens else []
    return _with_values(examples, sums, per_token, tokens)


def _save(path: str, sums: list[float], per_token: list[list[float]] | None) -> None:
    tensors = {"sums": torch.tensor(sums, dtype=torch.float64)}
    if per_token is not None:
        offsets = [0]
        for t in per_token:
            offsets.append(offsets[-1] + len(t))
        tensors["tokens"] = torch.tensor([v for t in per_token for v in t], dtype=torch.float64)
        tensors["offsets"] = torch.tensor(offsets, dtype=torch.long)
    save_file(tensors, path)
