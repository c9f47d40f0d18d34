"""Preference training: how a batch of examples becomes a loss's inputs, then per-example losses.

Every shape works the same way: all rows of the batch (chosen and rejected responses, a list's
responses, a labelled response and its mismatched twin, a negative and its samples) go through
the policy in one forward pass; the reference's log-probs of the same rows were computed before
training and travel with the examples (``reference_cache.py``), or, for a reference that moves
while training (``ref_sync_steps``), are computed for each batch. What differs per shape is only
how the per-row values are arranged into the loss's container (``losses/types.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from alignlab.data.collate import Batch, collate_sequences
from alignlab.logprobs import SequenceLogps, left_align, sequence_logps
from alignlab.losses.registry import LossSpec
from alignlab.losses.types import ListLogps, LossOutput, NegativeLogps, PairLogps, UnpairedLogps
from alignlab.training.forward import Forward, Reduce
from alignlab.training.reference_cache import live_reference


def _tensor(values, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device)


def _ref_tokens(rows: list[tuple[float, ...]], like: torch.Tensor) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    out = torch.zeros((len(rows), width), dtype=like.dtype, device=like.device)
    for i, r in enumerate(rows):
        out[i, :len(r)] = _tensor(r, like)
    return out


def pair_inputs(spec: LossSpec, lp: SequenceLogps, examples: list, batch: Batch, state: dict) -> PairLogps:
    """Rows [0, n) are the chosen responses, [n, 2n) the rejected ones (``collate_pairs``)."""
    n = len(examples)
    s, c = lp.sum_B, lp.count_B
    inputs = PairLogps(chosen=s[:n], rejected=s[n:], chosen_len=c[:n], rejected_len=c[n:], state=state)
    if spec.needs_reference:
        inputs.ref_chosen = _tensor([e.ref[0] for e in examples], s)
        inputs.ref_rejected = _tensor([e.ref[1] for e in examples], s)
    if "tokens" in spec.needs:
        aligned = left_align(lp.token_logps_BT, lp.mask_BT)
        inputs.chosen_tokens, inputs.rejected_tokens = aligned[:n], aligned[n:]
        if spec.needs_reference:
            inputs.ref_chosen_tokens = _ref_tokens([e.ref_tokens[0] for e in examples], s)
            inputs.ref_rejected_tokens = _ref_tokens([e.ref_tokens[1] for e in examples], s)
    if "sqmass" in spec.needs:
        inputs.chosen_sqmass, inputs.rejected_sqmass = lp.sqmass_B[:n], lp.sqmass_B[n:]
    if "strength" in spec.needs:
        inputs.strength = _tensor([e.strength for e in examples], s)
    if "group" in spec.needs:
        inputs.group = _tensor([e.group for e in examples], s)
    return inputs


def _starts(batch: Batch) -> list[int]:
    starts, k = [], 0
    for n in batch.rows_per_example:
        starts.append(k)
        k += n
    return starts


def unpaired_inputs(spec: LossSpec, lp: SequenceLogps, examples: list, batch: Batch, state: dict) -> UnpairedLogps:
    """Each example's own response is its first row; its mismatched twin (if any) the second."""
    starts = _starts(batch)
    s, c = lp.sum_B, lp.count_B
    own = torch.tensor(starts, device=s.device)
    inputs = UnpairedLogps(logps=s[own], lengths=c[own], labels=_tensor([float(e.label) for e in examples], s),
                           state=state)
    if spec.needs_reference:
        inputs.ref = _tensor([e.ref[0] for e in examples], s)
    if "kl" in spec.needs:
        inputs.kl_logps = s[own + 1].detach()
        inputs.ref_kl_logps = _tensor([e.ref[1] for e in examples], s)
    if "udm" in spec.needs:
        inputs.udm_weight = _tensor([e.udm_weight for e in examples], s)
    return inputs


def list_inputs(spec: LossSpec, lp: SequenceLogps, examples: list, batch: Batch, state: dict) -> ListLogps:
    """Lists padded to the longest in the batch; ``mask`` marks real items."""
    B, N = len(examples), max(batch.rows_per_example)
    s = lp.sum_B
    rows, cols = [], []
    for i, (start, n) in enumerate(zip(_starts(batch), batch.rows_per_example, strict=True)):
        rows += list(range(start, start + n))
        cols += [(i, j) for j in range(n)]
    index = (torch.tensor([i for i, _ in cols]), torch.tensor([j for _, j in cols]))
    flat = torch.tensor(rows, device=s.device)

    def grid(values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        out = torch.full((B, N), fill, dtype=values.dtype, device=values.device)
        return out.index_put(index, values)

    mask = torch.zeros((B, N), dtype=torch.bool, device=s.device)
    mask[index] = True
    scores = grid(_tensor([v for e in examples for v in e.scores], s))
    inputs = ListLogps(logps=grid(s[flat]), lengths=grid(lp.count_B[flat]), scores=scores, mask=mask, state=state)
    if spec.needs_reference:
        inputs.ref = grid(_tensor([v for e in examples for v in e.ref], s))
    return inputs


def negative_inputs(spec: LossSpec, lp: SequenceLogps, examples: list, batch: Batch, state: dict) -> NegativeLogps:
    """Row 0 of each example is the negative, rows 1..K its samples (every example has K)."""
    K = batch.rows_per_example[0] - 1
    s, c = lp.sum_B.view(len(examples), K + 1), lp.count_B.view(len(examples), K + 1)
    ref = _tensor([list(e.ref) for e in examples], lp.sum_B)
    return NegativeLogps(rejected=s[:, 0], rejected_len=c[:, 0], ref_rejected=ref[:, 0],
                         samples=s[:, 1:], samples_len=c[:, 1:], ref_samples=ref[:, 1:], state=state)


INPUTS = {"pair": pair_inputs, "joint": pair_inputs, "unpaired": unpaired_inputs, "ranked": list_inputs,
          "negatives": negative_inputs}


class _KLRows:
    """The mismatched (prompt, completion) row of an unpaired example, as a one-row example."""

    def __init__(self, example):
        self.example = example

    def sequences(self) -> list:
        return [(self.example.prompt_ids, self.example.kl_completion)]


class PreferenceForward(Forward):
    """All rows of a batch through the policy in one pass, arranged into the loss's container.

    KTO's reference point z0 is a quantity of the whole step (``before_step``): the mean of
    log π − log π_ref over the mismatched rows of the step's examples, on every process.
    """

    def __init__(self, spec: LossSpec, params, pad_id: int, autocast: Callable):
        super().__init__(spec, params)
        if spec.shape not in INPUTS:
            raise ValueError(f"no preference forward for data shape '{spec.shape}'")
        self.pad_id, self.autocast = pad_id, autocast
        self.step_values: dict[str, float] = {}  # set by before_step, read by every micro-batch of the step
        # a reference that moves while training (ref_sync_steps): its values are computed for
        # each batch, not read from the examples (a context-manager factory yielding the module)
        self.live_reference: Callable | None = None
        # the step's examples with the live reference's values, as ``before_step`` computed them
        # (by id, with the example kept so that its id is not reused): the micro-batches that
        # follow read them instead of running the reference a second time
        self._step_refs: dict[int, tuple[Any, Any]] = {}

    def _referenced(self, examples: list) -> list:
        if self.live_reference is None or not self.spec.needs_reference:
            return examples
        known = [self._step_refs.get(id(e)) for e in examples]
        if examples and all(k is not None and k[0] is e for k, e in zip(known, examples, strict=True)):
            return [k[1] for k in known]
        return live_reference(examples, self.live_reference, pad_id=self.pad_id, tokens="tokens" in self.spec.needs,
                              autocast=self.autocast)

    def __call__(self, model: torch.nn.Module, batch: Batch) -> LossOutput:
        lp = sequence_logps(model, batch, sqmass="sqmass" in self.spec.needs)
        state = {**self.state, **self.step_values}
        inputs = INPUTS[self.spec.shape](self.spec, lp, self._referenced(batch.examples), batch, state)
        return self.spec.fn(inputs, self.params)

    def before_step(self, model: torch.nn.Module, parts: Sequence[Sequence], reduce: Reduce) -> None:
        """KTO: Σ (log π − log π_ref) of the mismatched rows of the step's examples and their
        count, summed over processes. Each part (a micro-batch's examples) runs as one batch."""
        if "kl" not in self.spec.needs:
            return
        total = torch.zeros((), dtype=torch.float64)
        count = 0
        device = next(model.parameters()).device
        self._step_refs = {}
        with torch.no_grad(), self.autocast():
            for part in parts:
                examples = self._referenced(list(part))
                if self.live_reference is not None:
                    self._step_refs.update({id(e): (e, r) for e, r in zip(part, examples, strict=True)})
                rows = collate_sequences([_KLRows(e) for e in examples], self.pad_id)
                rows.to(device)
                logps = sequence_logps(model, rows).sum_B.double().cpu()
                ref = torch.tensor([e.ref[1] for e in examples], dtype=torch.float64)
                total += (logps - ref).sum()
                count += len(examples)
        self.step_values = reduce({"kl_sum": total, "kl_count": torch.tensor(float(count), dtype=torch.float64)})
