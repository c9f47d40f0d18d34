"""The native backend: continuous batching over a slot cache, on the model's own forward pass.

Why by hand: Hugging Face ``generate`` runs a batch until its longest sequence ends (finished rows
keep computing), concatenates its cache every step, pads every prompt to the longest and draws
every row from one random stream; its continuous-batching ``generate_batch`` is built for GPUs
(``bench/generate_vs_hf.py`` prints both beside this backend). This engine keeps ``batch_size``
sequences decoding at once: a sequence that ends leaves its slot and a waiting one is prefilled
into it. The ``n`` samples of a prompt share one prefill. Tokens are drawn from one random stream
per (seed, prompt index, sample index) (``draw.py``), so samples do not depend on the batch.

It calls the model's own ``forward`` with explicit positions, a ``SlotCache`` and, while it runs,
the cache's own attention function (``slots.py``; a prepared 4D mask for the prefill), so any
causal LM whose attention layers use transformers' cache API runs unchanged. Before first use the engine checks a model on a short ragged batch against a plain
forward pass; a model that fails the check (or has sliding-window or encoder-decoder attention)
is refused with the reason, and ``make_generator`` falls back to the "hf" backend with a notice.
The prefill and decode steps of plain float32 or float64 Llama, Mistral and Qwen2 models on a
CPU run a written-out pass instead of the model's forward (``decode_pass.py``), after the same
check.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from alignlab.errors import UserError
from alignlab.generation.base import Sample, SamplingParams
from alignlab.generation.decode_pass import DecodePass
from alignlab.generation.draw import pick, stream_keys, uniforms
from alignlab.generation.memory import auto_batch_size
from alignlab.generation.prompts import RendersPrompts
from alignlab.generation.slots import DecodePlan, SlotCache, active
from alignlab.models import evaluating, is_lora
from alignlab.packed_linear import Linear

# the config keys that give a model's positions, by architecture
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
# transformers gives a tokenizer that sets no limit a model_max_length of about 1e30
_NO_LIMIT = 10**12


def context_length(config, tokenizer=None) -> tuple[int, str] | None:
    """The most tokens the model takes, and where that limit comes from: the smaller of the
    positions its config gives and the tokenizer's model_max_length, of those that are set."""
    limits = []
    name = next((k for k in _POSITION_KEYS if isinstance(getattr(config, k, None), int) and getattr(config, k) > 0),
                None)
    if name is not None:
        limits.append((getattr(config, name), name))
    longest = getattr(tokenizer, "model_max_length", None)
    if isinstance(longest, int) and 0 < longest < _NO_LIMIT:
        limits.append((longest, "the tokenizer's model_max_length"))
    return min(limits) if limits else None


def context_limit(model, tokenizer=None) -> int | None:
    """The longest sequence the model takes (``context_length``: its positions, and the
    ``tokenizer``'s model_max_length where one is given), when either says."""
    found = context_length(model.config, tokenizer)
    return found[0] if found else None


_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_FAST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def runnable(model):
    """The module the engine runs for ``model``: a PEFT model's own network (its base model, with
    the adapter's layers in place and active: the same parameters and the same function), whose
    forward takes ``logits_to_keep`` where the PEFT wrapper's does not; any other model itself."""
    return model.get_base_model() if is_lora(model) else model


def unsupported(model) -> str | None:
    """Why the native engine cannot run ``model``, or None when it can (checked by running it,
    once per module: training that changes its weights does not change the answer)."""
    model = runnable(model)
    if model not in _CHECKED:
        with _no_autocast(model), evaluating(model):
            _CHECKED[model] = _unsupported(model)
    return _CHECKED[model]


def decode_pass_ok(model) -> bool:
    """Whether prefill and decode steps of ``model`` run the written-out pass (``decode_pass.py``): its
    structure is one the pass computes, and the pass agrees with a plain forward pass (checked once
    per module, as ``unsupported``)."""
    if model not in _FAST:
        try:
            with _no_autocast(model), evaluating(model):
                decoder = DecodePass.build(model)
                _FAST[model] = decoder is not None and _self_check(model, decoder) is None
        except Exception:  # the pass cannot run this model: its own forward pass samples
            _FAST[model] = False
    return _FAST[model]


def _no_autocast(model):
    """The checks compare the engine with a plain forward pass at the model's own precision,
    whatever autocast the first generation call runs under (a bf16 run's evaluation samples
    under it): under autocast both round to 16 bits apart and would differ by more than the float32
    tolerance, and the answer is kept for the module's lifetime."""
    return torch.autocast(next(model.parameters()).device.type, enabled=False)


def _unsupported(model) -> str | None:
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


def _self_check(model, decoder: DecodePass | None = None) -> str | None:
    """Prefill two prompts of 5 and 3 tokens, decode 2 tokens (both through the written-out pass when
    ``decoder`` is given), and compare each step's log-probs with a plain forward pass of the same sequences."""
    head = model.get_output_embeddings()
    vocab = head.weight.shape[0] if head is not None else 8
    seqs = [[(7 * i + 3) % vocab for i in range(7)], [(5 * i + 11) % vocab for i in range(5)]]
    prompts = [tuple(s[:-2]) for s in seqs]
    run = _Run(model, SlotCache(2, 5, 3), pad=0, decoder=decoder)
    both = torch.tensor([0, 1])
    got = [run.prefill(prompts, both)]
    for t in range(2):
        tokens = torch.tensor([seqs[0][5 + t], seqs[1][3 + t]])
        steps = torch.tensor([t + 1, t + 1])
        plan = decode_plan(both, torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.bool), steps,
                           torch.tensor([5, 3]))
        got.append(run.decode(tokens, torch.tensor([4, 2]) + steps, plan))
    # float32 and float64 (whose decode attention rounds through float32) agree with a plain forward
    # pass to about 1e-5; a 16-bit model's rounding needs more
    tol = 1e-3 if next(model.parameters()).dtype in (torch.float32, torch.float64) else 5e-2
    device = next(model.parameters()).device
    for b, seq in enumerate(seqs):
        want = torch.log_softmax(model(torch.tensor([seq], device=device)).logits[0].float(), -1)
        start = len(prompts[b]) - 1
        for t, step in enumerate(got):
            diff = (torch.log_softmax(step[b].float(), -1) - want[start + t]).abs().max().item()
            if not diff < tol:
                return f"its cached logits differ from a plain forward pass by {diff:.2g}"
    return None


def decode_plan(groups: torch.Tensor, members: torch.Tensor, live: torch.Tensor, steps: torch.Tensor,
                prompt_lengths: torch.Tensor) -> DecodePlan:
    """The plan of a decode step over slots ``0..B-1``: slot b (of group ``groups[b]``, its
    ``members[b]``-th slot) has drawn ``steps[b]`` tokens and feeds the last; group g's prompt has
    ``prompt_lengths[g]`` tokens (indexed by group id)."""
    live_slots = live.nonzero().flatten()
    used_groups = int(groups[live_slots].max()) + 1
    width = int(members[live_slots].max()) + 1
    lengths = prompt_lengths[:used_groups]
    prefix_width = int(lengths[groups[live_slots]].max())
    suffix_width = int(steps[live_slots].max())
    floor = torch.tensor(float("-inf"))
    prefix_bias = torch.where(torch.arange(prefix_width) < lengths.unsqueeze(1), 0.0, floor)
    seen = torch.arange(suffix_width) < steps.unsqueeze(1)
    seen[:, 0] |= ~live
    slot_groups = groups.clamp(max=used_groups - 1)
    slot_rows = slot_groups * width + members.clamp(max=width - 1)
    suffix_bias = torch.where(seen, 0.0, floor)
    bias = torch.cat((prefix_bias.index_select(0, slot_groups), suffix_bias), 1).view(len(groups), 1, 1, -1)
    return DecodePlan((steps - 1).clamp(min=0), live_slots, slot_rows[live_slots], slot_rows, prefix_bias,
                      suffix_bias, width, slot_groups, bias)


class _Run:
    """The two forward passes of the engine on one slot cache."""

    def __init__(self, model, cache: SlotCache, pad: int, decoder: DecodePass | None = None):
        """``decoder``: the written-out pass prefill and the decode steps run, or None for the
        model's forward pass."""
        self.model, self.cache, self.pad, self.decoder = model, cache, pad, decoder
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.floor = torch.finfo(self.dtype if self.dtype.is_floating_point else torch.float32).min

    def prefill(self, prompts: list[tuple[int, ...]], groups: torch.Tensor) -> torch.Tensor:
        """``prompts`` left-padded into one batch, prompt r's keys into group ``groups[r]``.
        Returns each prompt's last-position logits, ``(len(prompts), V)``."""
        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), self.pad, dtype=torch.long)
        pads = torch.tensor([width - len(p) for p in prompts], dtype=torch.long)
        for r, prompt in enumerate(prompts):
            ids[r, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        cols = torch.arange(width)
        positions = (cols.unsqueeze(0) - pads.unsqueeze(1)).clamp_(min=0)
        keys, queries = cols.view(1, 1, width), cols.view(1, width, 1)
        allowed = ((keys >= pads.view(-1, 1, 1)) & (keys <= queries)) | (keys == queries)
        mask = torch.zeros(allowed.shape, dtype=self.dtype).masked_fill_(~allowed, self.floor).unsqueeze(1)
        self.cache.prefill(pads.to(self.device), groups.to(self.device))
        if self.decoder is not None:
            return self.decoder.prefill(ids.to(self.device), positions.to(self.device), mask.to(self.device),
                                        self.cache)
        return self._forward(ids, positions, mask)

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, plan: DecodePlan) -> torch.Tensor:
        """One token per slot ``0..B-1`` at ``positions`` as ``plan`` says; returns the ``(B, V)``
        next-token logits. The attention reads the plan, not a mask (a 4D placeholder is passed
        so that the model builds none)."""
        self.cache.decode(plan.to(self.device))
        if self.decoder is not None:
            return self.decoder(tokens.to(self.device), positions.to(self.device), self.cache)
        placeholder = torch.zeros(len(tokens), 1, 1, 1, dtype=self.dtype)
        return self._forward(tokens.view(-1, 1), positions.view(-1, 1), placeholder)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with active(self.model, self.cache):
            out = self.model(input_ids=ids.to(self.device), position_ids=positions.to(self.device),
                             attention_mask=mask.to(self.device), past_key_values=self.cache, use_cache=True,
                             logits_to_keep=1)
        return out.logits[:, -1]


@contextlib.contextmanager
def _fast_head(model):
    """On CPU, compute a bias-free linear output layer from a weight prepared once per call:
    packed for oneDNN when it is float32 and large enough (``packed_linear.Linear``: 2.7 ms against
    7-9 ms for 16 rows and a 32k vocabulary), else transposed and contiguous, ``hidden @ Wᵀ`` (BLAS
    runs a product with a large output dimension about 1.3-1.4 times faster so than ``F.linear``
    from the weight as stored). The same product, so the same logits up to rounding; the module is
    restored on exit. The output layer is half of a small model's decode FLOPs."""
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.bias is not None or head.weight.device.type != "cpu":
        yield
        return
    packed = Linear(head.weight.detach())
    if packed.packed is not None:
        head.forward = packed  # an instance attribute: shadows Linear.forward
    else:
        weight = head.weight.detach().t().contiguous()
        head.forward = lambda hidden: hidden @ weight
    try:
        yield
    finally:
        del head.forward


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


class _Slots:
    """The per-slot state of one generation call, as tensors (one row per slot), so that a decode
    step costs a few tensor operations whatever the number of sequences; a sequence's tokens are
    read out into its ``_Seq`` once, when it ends. Groups (one prefilled prompt each) are counted
    by their live slots and freed with the last."""

    def __init__(self, slots: int, budget: int, stops: set[int]):
        self.seq: list[_Seq | None] = [None] * slots
        self.live = torch.zeros(slots, dtype=torch.bool)
        self.positions = torch.zeros(slots, dtype=torch.long)  # where the last token is written
        self.last = torch.zeros(slots, dtype=torch.long)
        self.steps = torch.zeros(slots, dtype=torch.long)  # tokens drawn so far
        self.budget = torch.zeros(slots, dtype=torch.long)
        self.group = torch.zeros(slots, dtype=torch.long)
        self.member = torch.zeros(slots, dtype=torch.long)
        self.keys = np.zeros(slots, dtype=np.uint64)
        self.tokens = torch.zeros(slots, budget, dtype=torch.long)
        self.raw = torch.zeros(slots, budget)
        self.drawn = torch.zeros(slots, budget)
        self.stops = torch.tensor(sorted(stops), dtype=torch.long)
        self.group_size = [0] * slots  # live slots per group
        self.prompt_length = torch.zeros(slots, dtype=torch.long)  # per group

    def top(self) -> int:
        """One past the highest live slot."""
        live = self.live.nonzero()
        return int(live[-1]) + 1 if len(live) else 0

    def new_group(self, length: int) -> int:
        g = self.group_size.index(0)
        self.prompt_length[g] = length
        return g

    def place(self, slots: list[int], seqs: list[_Seq], groups: list[int], members: list[int]) -> None:
        """Put each of ``seqs`` in its slot, as member ``members[i]`` of group ``groups[i]`` (the
        caller counts the group's members in ``group_size`` as it assigns them, so that
        ``new_group`` never hands out a group that is being filled)."""
        idx = torch.tensor(slots, dtype=torch.long)
        self.live[idx] = True
        self.positions[idx] = torch.tensor([len(s.context) - 1 for s in seqs], dtype=torch.long)
        self.steps[idx] = 0
        self.budget[idx] = torch.tensor([s.budget for s in seqs], dtype=torch.long)
        self.keys[idx.numpy()] = np.array([s.key for s in seqs], dtype=np.uint64)
        self.group[idx] = torch.tensor(groups, dtype=torch.long)
        self.member[idx] = torch.tensor(members, dtype=torch.long)
        for slot, s in zip(slots, seqs, strict=True):
            self.seq[slot] = s

    def draw(self, slots: torch.Tensor, logits: torch.Tensor, params: SamplingParams) -> list[_Seq]:
        """Draw the next token of each of ``slots`` from its row of ``logits``; returns the
        sequences that ended (their slots are free again)."""
        steps = self.steps[slots]
        u = torch.from_numpy(uniforms(self.keys[slots.numpy()], steps.numpy())).to(logits.device)
        tokens, raw, drawn = pick(logits, params, u)
        tokens, raw, drawn = tokens.cpu(), raw.cpu(), drawn.cpu()
        self.tokens[slots, steps] = tokens
        self.raw[slots, steps] = raw
        self.drawn[slots, steps] = drawn
        self.steps[slots] = steps + 1
        self.positions[slots] += 1
        self.last[slots] = tokens
        stopped = torch.isin(tokens, self.stops)
        ended = stopped | (steps + 1 >= self.budget[slots])
        done = []
        idx = slots[ended]
        if not len(idx):
            return done
        self.live[idx] = False
        # each table read out once for all the sequences that ended (not a row at a time)
        tokens, raw, drawn = self.tokens[idx].tolist(), self.raw[idx].tolist(), self.drawn[idx].tolist()
        for i, (slot, stop, n, g) in enumerate(zip(idx.tolist(), stopped[ended].tolist(), self.steps[idx].tolist(),
                                                    self.group[idx].tolist(), strict=True)):
            s = self.seq[slot]
            s.tokens, s.raw, s.drawn = tokens[i][:n], raw[i][:n], drawn[i][:n]
            s.finished = stop
            self.seq[slot] = None
            self.group_size[g] -= 1
            done.append(s)
        return done

    def plan(self, top: int) -> DecodePlan:
        return decode_plan(self.group[:top], self.member[:top], self.live[:top], self.steps[:top],
                           self.prompt_length)

    def move(self, sources: list[int], targets: list[int]) -> None:
        """Move each source slot's sequence to its target slot (free; no slot is both)."""
        if not sources:
            return
        src, dst = torch.tensor(sources), torch.tensor(targets)
        for t in (self.live, self.positions, self.last, self.steps, self.budget, self.group, self.member,
                  self.tokens, self.raw, self.drawn):
            t[dst] = t[src]
        self.keys[dst.numpy()] = self.keys[src.numpy()]
        for a, b in zip(sources, targets, strict=True):
            self.seq[b], self.seq[a] = self.seq[a], None
        self.live[src] = False

    def move_group(self, source: int, target: int) -> None:
        self.group[self.live & (self.group == source)] = target
        self.prompt_length[target] = self.prompt_length[source]
        self.group_size[target], self.group_size[source] = self.group_size[source], 0


class NativeGenerator(RendersPrompts):
    """Continuous-batching generation on ``model``'s own parameters (see the module docstring).

    ``batch_size``: sequences decoding at once (the slots of the cache, whose memory is ``(slots ×
    max_new_tokens + prompts live × longest prompt) × layers × 2 × kv heads × head dim`` numbers of
    the model's dtype; the prompt rows grow as prompts go live, the n samples of one sharing a
    row); None (the default): every sequence of a call at once when they fit in a quarter of the
    free memory, else as many as do (``auto_batch_size``). The samples are the same whatever the
    batch size. ``prefill_tokens``: how many prompt positions (prompts × padded width) one prefill
    pass takes at most; ``progress``: a label for a progress bar (sequences done), or None.
    ``host_processes``: how many of the run's processes share the host's memory, for the default
    batch (None: torchrun's ``LOCAL_WORLD_SIZE``; Ray's generation workers are told theirs).

    Build it with ``make_generator(model, tokenizer, "native")``, which checks the model first.
    """

    numbers_prompts = True  # draws depend only on (seed, prompt index, sample index)

    def __init__(self, model, tokenizer, batch_size: int | None = None, progress: str | None = None,
                 prefill_tokens: int = 4096):
        if batch_size is not None and batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        if prefill_tokens < 1:
            raise UserError(f"prefill_tokens must be >= 1, got {prefill_tokens}")
        self.model, self.tok = runnable(model), tokenizer
        self.batch_size, self.progress, self.prefill_tokens = batch_size, progress, prefill_tokens
        self.host_processes: int | None = None
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.eos or 0)

    def update_weights(self, model) -> None:
        """Sample from ``model`` from now on: given the module it already runs on, nothing happens
        (it shares the policy's parameters); given another, it runs on that one, once the engine's
        check has passed on it (a ``UserError`` with the reason otherwise)."""
        if runnable(model) is not self.model:
            reason = unsupported(model)
            if reason is not None:
                raise UserError(f"the native generation backend cannot run {type(model).__name__} ({reason}); "
                                "build a generator for it with make_generator")
        self.model = runnable(model)



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
        stops = set(params.stops(self.eos))
        with evaluating(self.model), torch.no_grad(), _fast_head(self.model), self._bar(len(seqs)) as bar:
            self._run(seqs, params, stops, bar)
        out: list[list[Sample]] = [[] for _ in contexts]
        for s in seqs:
            body = s.tokens[:-1] if s.finished else s.tokens
            out[s.prompt].append(Sample(self.tok.decode(body, skip_special_tokens=True), s.context, tuple(s.tokens),
                                        s.finished, tuple(s.raw), tuple(s.drawn)))
        return out

    def _run(self, seqs: list[_Seq], params: SamplingParams, stops: set[int], bar) -> None:
        budget, longest = max(s.budget for s in seqs), max(len(s.context) for s in seqs)
        count = min(self.batch_size or auto_batch_size(self.model, len(seqs), budget, longest, self.host_processes),
                    len(seqs))
        prompts = len({s.prompt for s in seqs})
        n = max(1, len(seqs) // prompts)
        cache = SlotCache(count, longest, budget, groups=min(prompts, -(-count // n)))
        # checked once per module; a change since then that the pass does not compute (a hook, a dtype,
        # a device) sends prefill and the decode steps back to the model's own forward pass
        decoder = DecodePass.build(self.model) if decode_pass_ok(self.model) else None
        run = _Run(self.model, cache, self.pad, decoder)
        state = _Slots(count, budget, stops)
        # Longest prompts first: similar lengths share a prefill and a decode batch (less padding),
        # and the long sequences start early instead of trailing at the end.
        waiting = deque(sorted(seqs, key=lambda s: (-len(s.context), s.prompt, s.sample)))
        while True:
            free = (~state.live).nonzero().flatten().tolist()
            if waiting and free and (len(free) == count or len(free) >= max(1, count // 4) or len(waiting) <= len(free)):
                bar.update(len(self._admit(run, state, waiting, free, params)))
            top = state.top()
            if top == 0:
                if not waiting:
                    return
                continue
            if not waiting and int(state.live.sum()) <= top // 2:
                top = self._compact(run.cache, state)
            live = state.live[:top].nonzero().flatten()
            logits = run.decode(state.last[:top], state.positions[:top], state.plan(top))
            if len(live) < top:
                logits = logits.index_select(0, live.to(logits.device))
            bar.update(len(state.draw(live, logits, params)))

    def _admit(self, run: _Run, state: _Slots, waiting: deque, free: list[int], params: SamplingParams) -> list[_Seq]:
        """Prefill the next waiting sequences into ``free`` slots (the samples of one prompt share
        a group: one prefill row, one copy of its keys); returns those that ended at once."""
        groups: dict[int, tuple[int, int]] = {}  # prompt index -> (batch row, group id)
        members: dict[int, int] = {}
        contexts: list[tuple[int, ...]] = []
        rows, slots, placed, group_ids, member_ids = [], [], [], [], []
        width = 0
        while waiting and len(slots) < len(free):
            s = waiting[0]
            if s.prompt not in groups:
                new_width = max(width, len(s.context))
                if contexts and new_width * (len(contexts) + 1) > self.prefill_tokens:
                    break
                width = new_width
                groups[s.prompt] = (len(contexts), state.new_group(len(s.context)))
                members[s.prompt] = 0
                contexts.append(s.context)
            waiting.popleft()
            row, group = groups[s.prompt]
            slots.append(free[len(slots)])
            placed.append(s)
            group_ids.append(group)
            member_ids.append(members[s.prompt])
            members[s.prompt] += 1
            state.group_size[group] += 1
            rows.append(row)
        state.place(slots, placed, group_ids, member_ids)
        rows_t, slots_t = torch.tensor(rows), torch.tensor(slots)
        run.cache.reserve_groups(max(g for _, g in groups.values()) + 1)
        logits = run.prefill(contexts, torch.tensor([g for _, g in groups.values()]))
        return state.draw(slots_t, logits.index_select(0, rows_t.to(logits.device)), params)

    @staticmethod
    def _compact(cache: SlotCache, state: _Slots) -> int:
        """Move the live sequences into the lowest slots, and their groups into the lowest group
        ids; returns how many slots are in use."""
        live = state.live.nonzero().flatten().tolist()
        holes = (~state.live[:len(live)]).nonzero().flatten().tolist()
        pairs = list(zip([s for s in live if s >= len(live)], holes, strict=True))
        sources, targets = [a for a, _ in pairs], [b for _, b in pairs]
        cache.move_slots(sources, targets)
        state.move(sources, targets)
        used = [g for g, n in enumerate(state.group_size) if n]
        gaps = [g for g, n in enumerate(state.group_size[:len(used)]) if not n]
        for src, dst in zip([g for g in used if g >= len(used)], gaps, strict=True):
            cache.move_group(src, dst)
            state.move_group(src, dst)
        return len(live)
