"""What some methods need added to their examples once, before training.

- KTO's mismatched completions: each labelled response gets another example's response to its
  prompt (a fixed, seeded cyclic shift), from which the loss estimates its reference point.
- BCO's underlying-distribution matching: a weight per example from a prompt classifier fitted
  on the training prompts (and applied to the held-out ones too).
- D2O's samples: K responses per prompt drawn from the reference model, cached on disk.

Caches are read by the first process and shared with the others, so all of them take the same
path; a cache that cannot be written is reported and the run goes on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from alignlab.data.render import Response
from alignlab.generation.base import SamplingParams
from alignlab.generation.factory import make_generator
from alignlab.training.distributed import Dist

SAMPLE_CHUNK = 8  # prompts per generation call; each chunk has its own seed


def _fit(resp: Response, room: int) -> Response:
    return resp if len(resp) <= room else Response(resp.ids[:room], resp.mask[:room])


def add_mismatched(examples: list, seed: int, max_length: int | None = None) -> list:
    """Give every unpaired example ``kl_completion``: the response of the example after it in a
    seeded order (cyclically), skipping examples with the same prompt when one differs. It is cut
    to fit ``max_length`` after this example's prompt."""
    n = len(examples)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    out = list(examples)
    for pos, i in enumerate(order):
        j = order[(pos + 1) % n]
        for step in range(1, n):  # the next example whose prompt differs, if any
            cand = order[(pos + step) % n]
            if examples[cand].prompt_ids != examples[i].prompt_ids:
                j = cand
                break
        twin = examples[j].completion
        if max_length is not None:
            twin = _fit(twin, max(1, max_length - len(examples[i].prompt_ids)))
        out[i] = dataclasses.replace(examples[i], kl_completion=twin)
    return out


def add_udm_weights(train: list, held_out: list, tokenizer, params, seed: int) -> tuple[list, list]:
    """BCO: weight each example by the density ratio of its prompt (``training/udm.py``), with one
    classifier fitted on the training prompts."""
    from alignlab.training.udm import udm_weights

    def texts(examples: list) -> list[str]:
        return [tokenizer.decode(e.prompt_ids, skip_special_tokens=True) for e in examples]

    w_train, w_eval = udm_weights(texts(train), [bool(e.label) for e in train], sample_size=params.udm_sample_size,
                                  clip_min=params.udm_clip_min, clip_max=params.udm_clip_max, seed=seed,
                                  also=(texts(held_out), [bool(e.label) for e in held_out]))

    def weighted(examples: list, w: torch.Tensor) -> list:
        return [dataclasses.replace(e, udm_weight=float(x)) for e, x in zip(examples, w.tolist(), strict=True)]

    return weighted(train, w_train), weighted(held_out, w_eval)


def opener(resp: Response) -> tuple[int, ...]:
    """The response's leading tokens that carry no loss (a chat template's assistant header)."""
    k = 0
    while k < len(resp.mask) and resp.mask[k] == 0:
        k += 1
    return resp.ids[:k]


def write_atomic(path: Path, write: Callable[[str], None], log: Callable[[str], None], what: str) -> None:
    """Write through a temporary file renamed into place; a failure is reported, not raised."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        log(f"{what}: not cached, cannot write {path}: {e.strerror or e}")
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _read_samples(path: Path | None, n: int, k: int) -> list | None:
    if path is None or not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        if len(saved) == n and all(len(s) == k and all(isinstance(t, int) for x in s for t in x) for s in saved):
            return saved
    except (OSError, ValueError, TypeError):
        pass
    return None


def add_samples(examples: list, reference: Callable, tokenizer, *, k: int, params: SamplingParams, max_length: int,
                cache_file: Path | None, dist: Dist, autocast: Callable, log: Callable[[str], None]) -> list:
    """D2O: K samples per prompt from the reference model (read from ``cache_file`` when there).

    Prompts are drawn in fixed chunks of ``SAMPLE_CHUNK``, each with its own seed, so the samples
    do not depend on the number of processes. A sample longer than the room ``max_length`` leaves
    after its prompt is cut at the end."""
    contexts = [tuple(e.prompt_ids) + opener(e.rejected) for e in examples]
    drawn = dist.from_main(lambda: _read_samples(cache_file, len(examples), k))
    if drawn is None:
        chunks = list(range(0, len(contexts), SAMPLE_CHUNK))
        part = {}
        with reference() as ref_model, autocast():
            gen = make_generator(ref_model, tokenizer, batch_size=SAMPLE_CHUNK * k)
            for c in chunks[dist.rank::dist.world_size]:
                chunk_params = dataclasses.replace(params, seed=(params.seed * 1_000_003 + c) % 2**63)
                rows = gen.generate_ids(contexts[c:c + SAMPLE_CHUNK], k, chunk_params)
                part[c] = [[list(s.token_ids) for s in row] for row in rows]
        merged = {c: rows for piece in dist.gather(part) for c, rows in piece.items()}
        drawn = [row for c in chunks for row in merged[c]]
        if dist.is_main:
            log(f"samples: drew {k} per prompt for {len(contexts)} prompts from the reference")
            if cache_file is not None:
                write_atomic(cache_file, lambda tmp: Path(tmp).write_text(json.dumps(drawn)), log, "samples")
    dist.barrier()
    out = []
    for e, samples in zip(examples, drawn, strict=True):
        head = opener(e.rejected)
        room = max(1, max_length - len(e.prompt_ids) - len(head))
        responses = tuple(Response(head + tuple(s[:room]), (0,) * len(head) + (1,) * len(s[:room])) for s in samples)
        out.append(dataclasses.replace(e, samples=responses))
    return out


def samples_key(fingerprint: str, examples: list, k: int, params: SamplingParams) -> str:
    h = hashlib.sha256(f"{fingerprint}\0{k}\0{params}\0chunk{SAMPLE_CHUNK}\0".encode())
    for e in examples:
        h.update(json.dumps([list(e.prompt_ids), list(opener(e.rejected))]).encode())
    return h.hexdigest()[:32]
