"""The native backend: continuous batching over a slot cache, on the model's own forward pass.

Why by hand: Hugging Face ``generate`` runs a batch until its longest sequence ends (finished rows
keep computing), concatenates its cache every step, pads every prompt to the longest and draws
every row from one random stream; its continuous-batching ``generate_batch`` is built for GPUs
(``bench/generate_vs_hf.py`` prints both beside this backend). This engine keeps ``batch_size``
sequences decoding at once: a sequence that ends leaves its slot and a waiting one is prefilled
into it. The ``n`` samples of a prompt share one prefill. Tokens are drawn from one random stream
per (seed, prompt index, sample index) (``draw.py``), so samples do not depend on the batch.

It calls the model's own ``forward`` with a prepared 4D attention mask, explicit positions and a
``SlotCache`` (``slots.py``), so any causal LM whose attention layers use transformers' cache API
runs unchanged. Before first use the engine checks a model on a short ragged batch against a plain
forward pass; a model that fails the check (or has sliding-window or encoder-decoder attention)
is refused with the reason, and ``make_generator`` falls back to the "hf" backend with a notice.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from alignlab.data.records import Text
from alignlab.errors import UserError
from alignlab.generation.base import Sample, SamplingParams
from alignlab.generation.draw import pick, stream_keys, uniforms
from alignlab.generation.prompts import prompt_ids
from alignlab.generation.slots import SlotCache


def context_limit(model) -> int | None:
    """The longest sequence the model's positions allow, when its config says."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def unsupported(model) -> str | None:
    """Why the native engine cannot run ``model``, or None when it can (checked by running it)."""
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        return "an encoder-decoder model"
    if "flash" in str(getattr(config, "_attn_implementation", "")):
        return "flash attention takes no prepared attention mask"
    layer_types = getattr(config, "layer_types", None) or ()
    window = getattr(config, "sliding_window", None)
    if any("sliding" in str(t) or "chunk" in str(t) for t in layer_types) or (
            window and getattr(config, "use_sliding_window", True) and not layer_types):
        return "sliding-window attention"
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return "its forward pass takes no logits_to_keep"
    try:
        return _self_check(model)
    except Exception as exc:  # a model that cannot run with a prepared mask and the slot cache
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _self_check(model) -> str | None:
    """Prefill two prompts of 5 and 3 tokens, decode 2 tokens, and compare each step's log-probs
    with a plain forward pass of the same sequences."""
    vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else 8
    seqs = [[(7 * i + 3) % vocab for i in range(7)], [(5 * i + 11) % vocab for i in range(5)]]
    prompts = [tuple(s[:-2]) for s in seqs]
    engine = _Run(model, SlotCache(2, 8), pad=0)
    got = [engine.prefill([(0, prompts[0], [0]), (1, prompts[1], [1])])]
    for t in range(2):
        tokens = torch.tensor([seqs[0][5 + t], seqs[1][3 + t]])
        positions = torch.tensor([5 + t, 3 + t])
        got.append(engine.decode(tokens, positions, int(positions.max()) + 1))
    tol = 1e-3 if next(model.parameters()).dtype == torch.float32 else 5e-2
    device = next(model.parameters()).device
    for b, seq in enumerate(seqs):
        want = torch.log_softmax(model(torch.tensor([seq], device=device)).logits[0].float(), -1)
        start = len(prompts[b]) - 1
        for t, step in enumerate(got):
            diff = (torch.log_softmax(step[b].float(), -1) - want[start + t]).abs().max().item()
            if not diff < tol:
                return f"its cached logits differ from a plain forward pass by {diff:.2g}"
    return None


class _Run:
    """The two forward passes of the engine on one slot cache."""

    def __init__(self, model, cache: SlotCache, pad: int):
        self.model, self.cache, self.pad = model, cache, pad
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.floor = torch.finfo(self.dtype if self.dtype.is_floating_point else torch.float32).min

    def prefill(self, rows: list[tuple[int, tuple[int, ...], list[int]]]) -> torch.Tensor:
        """Prompts ``(row, ids, slots)`` left-padded into one batch: writes their keys into their
        slots and returns each prompt's last-position logits, ``(len(rows), V)``."""
        width = max(len(ids) for _, ids, _ in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        pads = torch.empty(len(rows), dtype=torch.long)
        plan = []
        for r, (_, prompt, slots) in enumerate(rows):
            pad = width - len(prompt)
            ids[r, pad:] = torch.tensor(prompt, dtype=torch.long)
            pads[r] = pad
            plan.append((r, pad, len(prompt), slots))
        cols = torch.arange(width)
        positions = (cols.unsqueeze(0) - pads.unsqueeze(1)).clamp_(min=0)
        keys, queries = cols.view(1, 1, width), cols.view(1, width, 1)
        allowed = ((keys >= pads.view(-1, 1, 1)) & (keys <= queries)) | (keys == queries)
        mask = torch.zeros(allowed.shape, dtype=self.dtype).masked_fill_(~allowed, self.floor).unsqueeze(1)
        self.cache.prefill(plan)
        return self._forward(ids, positions, mask)

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, width: int) -> torch.Tensor:
        """One token per slot ``0..B-1`` at ``positions``; returns the ``(B, V)`` next-token logits."""
        positions = positions.to(self.device)
        self.cache.decode(positions, width)
        hidden = torch.arange(width, device=self.device).unsqueeze(0) > positions.unsqueeze(1)
        mask = torch.zeros(hidden.shape, dtype=self.dtype, device=self.device).masked_fill_(hidden, self.floor)
        return self._forward(tokens.view(-1, 1), positions.view(-1, 1), mask.view(len(tokens), 1, 1, width))

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids.to(self.device), position_ids=positions.to(self.device),
                         attention_mask=mask.to(self.device), past_key_values=self.cache, use_cache=True,
                         logits_to_keep=1)
        return out.logits[:, -1]


@dataclass
class _Seq:
    prompt: int  # index in the call's contexts
    sample: int
    context: tuple[int, ...]
    budget: int  # tokens it may generate
    key: np.uint64 = np.uint64(0)
    tokens: list[int] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)
    drawn: list[float] = field(default_factory=list)
    finished: bool = False


class NativeGenerator:
    """Continuous-batching generation on ``model``'s own parameters (see the module docstring).

    ``batch_size``: sequences decoding at once (the slots of the cache, whose memory is ``slots ×
    (longest prompt + max_new_tokens) × layers × 2 × kv heads × head dim`` numbers of the model's
    dtype); ``prefill_tokens``: how many prompt positions (prompts × padded width) one prefill pass
    takes at most; ``progress``: a label for a progress bar (sequences done), or None.

    Build it with ``make_generator(model, tokenizer, "native")``, which checks the model first.
    """

    def __init__(self, model, tokenizer, batch_size: int = 64, progress: str | None = None,
                 prefill_tokens: int = 4096):
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        if prefill_tokens < 1:
            raise UserError(f"prefill_tokens must be >= 1, got {prefill_tokens}")
        self.model, self.tok = model, tokenizer
        self.batch_size, self.progress, self.prefill_tokens = batch_size, progress, prefill_tokens
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.eos or 0)

    def update_weights(self, model) -> None:
        """Sample from ``model`` from now on: given the module it already runs on, nothing happens
        (it shares the policy's parameters); given another, it runs on that one (``make_generator``
        checks a new architecture; this does not)."""
        self.model = model

    def prompt_ids(self, prompt: Text) -> tuple[int, ...]:
        return prompt_ids(self.tok, prompt)

    def generate(self, prompts: Sequence[Text], n: int, params: SamplingParams, start: int = 0) -> list[list[Sample]]:
        return self.generate_ids([self.prompt_ids(p) for p in prompts], n, params, start)

    def generate_ids(self, contexts: Sequence[tuple[int, ...]], n: int, params: SamplingParams,
                     start: int = 0) -> list[list[Sample]]:
        """``n`` samples per context; context ``k`` draws from the streams of prompt ``start + k``."""
        if n < 1:
            raise UserError(f"n must be >= 1, got {n}")
        if not contexts:
            return []
        limit = context_limit(self.model)
        seqs = []
        for k, c in enumerate(contexts):
            if not c:
                raise UserError(f"prompt {start + k} has no tokens")
            budget = params.max_new_tokens if limit is None else min(params.max_new_tokens, limit - len(c))
            if budget < 1:
                raise UserError(f"prompt {start + k} has {len(c)} tokens; the model's context is {limit} tokens")
            seqs.extend(_Seq(k, j, tuple(c), budget) for j in range(n))
        keys = stream_keys(params.seed, np.array([start + s.prompt for s in seqs], dtype=np.int64),
                           np.array([s.sample for s in seqs], dtype=np.int64))
        for s, key in zip(seqs, keys, strict=True):
            s.key = key
        stops = {t for t in (self.eos, *params.stop_token_ids) if t is not None}
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self._bar(len(seqs)) as bar:
                self._run(seqs, params, stops, bar)
        finally:
            self.model.train(was_training)
        out: list[list[Sample]] = [[] for _ in contexts]
        for s in seqs:
            body = s.tokens[:-1] if s.finished else s.tokens
            out[s.prompt].append(Sample(self.tok.decode(body, skip_special_tokens=True), s.context, tuple(s.tokens),
                                        s.finished, tuple(s.raw), tuple(s.drawn)))
        return out

    def _bar(self, total: int):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=self.progress, unit="seq", leave=False, dynamic_ncols=True,
                    disable=self.progress is None)

    def _run(self, seqs: list[_Seq], params: SamplingParams, stops: set[int], bar) -> None:
        slots = min(self.batch_size, len(seqs))
        length = max(len(s.context) + s.budget for s in seqs)
        run = _Run(self.model, SlotCache(slots, length), self.pad)
        # Longest prompts first: similar lengths share a prefill (less padding), and the long
        # sequences start early instead of trailing at the end.
        waiting = deque(sorted(seqs, key=lambda s: (-len(s.context), s.prompt, s.sample)))
        live: list[_Seq | None] = [None] * slots
        positions = torch.zeros(slots, dtype=torch.long)
        last = torch.zeros(slots, dtype=torch.long)
        stop_ids = torch.tensor(sorted(stops), dtype=torch.long)
        while True:
            free = [i for i, s in enumerate(live) if s is None]
            running = slots - len(free)
            if waiting and free and (running == 0 or len(free) >= max(1, slots // 4) or len(waiting) <= len(free)):
                admitted = self._admit(run, waiting, free, live, positions, last, params, stop_ids)
                for _ in admitted:
                    bar.update(1)
            top = max((i for i, s in enumerate(live) if s is not None), default=-1) + 1
            if top == 0:
                if not waiting:
                    return
                continue
            if not waiting and sum(s is not None for s in live) <= top // 2:
                top = self._compact(run.cache, live, positions, last)
            width = int(max(positions[i] for i in range(top) if live[i] is not None)) + 1
            logits = run.decode(last[:top], positions[:top], width)
            done = self._draw(logits, [(i, live[i]) for i in range(top) if live[i] is not None], params,
                              positions, last, stop_ids)
            for i in done:
                live[i] = None
                bar.update(1)

    def _admit(self, run: _Run, waiting: deque, free: list[int], live: list, positions: torch.Tensor,
               last: torch.Tensor, params: SamplingParams, stop_ids: torch.Tensor) -> list[int]:
        """Prefill the next waiting sequences into ``free`` slots; returns those that ended at once."""
        groups: dict[int, list[tuple[_Seq, int]]] = {}
        width = 0
        taken = 0
        while waiting and taken < len(free):
            s = waiting[0]
            if s.prompt not in groups:
                new_width = max(width, len(s.context))
                if groups and new_width * (len(groups) + 1) > self.prefill_tokens:
                    break
                width = new_width
                groups[s.prompt] = []
            groups[s.prompt].append((waiting.popleft(), free[taken]))
            taken += 1
        rows = [(r, members[0][0].context, [slot for _, slot in members]) for r, members in enumerate(groups.values())]
        logits = run.prefill(rows)
        placed = []
        for r, members in enumerate(groups.values()):
            for s, slot in members:
                live[slot] = s
                positions[slot] = len(s.context)
                placed.append((r, slot, s))
        rows_of = torch.tensor([r for r, _, _ in placed], device=logits.device)
        done = self._draw(logits.index_select(0, rows_of), [(slot, s) for _, slot, s in placed], params,
                          positions, last, stop_ids, absolute=False)
        for slot in done:
            live[slot] = None
        return done

    def _draw(self, logits: torch.Tensor, members: list[tuple[int, _Seq]], params: SamplingParams,
              positions: torch.Tensor, last: torch.Tensor, stop_ids: torch.Tensor, absolute: bool = True) -> list[int]:
        """Draw each member's next token from its row of ``logits`` (row = slot when ``absolute``,
        else row = order in ``members``), record it, and return the slots whose sequence ended."""
        if absolute:
            index = torch.tensor([slot for slot, _ in members], device=logits.device)
            logits = logits.index_select(0, index)
        keys = np.array([s.key for _, s in members], dtype=np.uint64)
        steps = np.array([len(s.tokens) for _, s in members], dtype=np.int64)
        u = torch.from_numpy(uniforms(keys, steps)).to(logits.device)
        tokens, raw, drawn = pick(logits, params, u)
        tokens_l, raw_l, drawn_l = tokens.tolist(), raw.tolist(), drawn.tolist()
        stopped = torch.isin(tokens.cpu(), stop_ids).tolist()
        done = []
        for b, (slot, s) in enumerate(members):
            s.tokens.append(tokens_l[b])
            s.raw.append(raw_l[b])
            s.drawn.append(drawn_l[b])
            if stopped[b] or len(s.tokens) >= s.budget:
                s.finished = bool(stopped[b])
                done.append(slot)
            else:
                last[slot] = tokens_l[b]
                if absolute:
                    positions[slot] += 1
        return done

    @staticmethod
    def _compact(cache: SlotCache, live: list, positions: torch.Tensor, last: torch.Tensor) -> int:
        """Move the live sequences into the lowest slots; returns how many slots are in use."""
        holes = [i for i, s in enumerate(live) if s is None]
        for src in range(len(live) - 1, -1, -1):
            if live[src] is None:
                continue
            if not holes or holes[0] > src:
                break
            dst = holes.pop(0)
            cache.move(src, dst)
            live[dst], live[src] = live[src], None
            positions[dst], last[dst] = positions[src], last[src]
            holes.append(src)
            holes.sort()
        return sum(s is not None for s in live)
