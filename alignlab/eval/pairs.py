"""Preference pairs as the model-based diagnostics read them (ranking accuracy, likelihood
displacement, CHES): validated records, rendered to token ids exactly as training renders them
(``data/render.py``: the prompt, then the response with EOS, or a conversation through the chat
template), and each response's summed log-prob and token count under a model
(``logprobs.sequence_logps``, the same code training uses).

A pair that does not fit ``max_length`` is a bad row, reported with its source, row and field:
training would cut its longer response to fit, but a cut response's log-prob measures another
text. ``skip_invalid`` leaves such rows out and counts them. ``max_prompt_length`` keeps the end of
a longer prompt, as training does (the user asked for that cut).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from alignlab.data.collate import collate_pairs
from alignlab.data.records import PairRecord
from alignlab.data.render import Renderer, TokenizedPair
from alignlab.errors import DataError, RowIssue, UserError
from alignlab.logprobs import sequence_logps, split_pairs


@dataclass
class TokenPairs:
    """Pairs and their token ids, one example per record, in the data's order."""

    records: list[PairRecord]
    examples: list[TokenizedPair]
    skipped: list[RowIssue]  # rows left out (only with skip_invalid)

    def __len__(self) -> int:
        return len(self.records)


def render_pairs(records: Sequence[PairRecord], tokenizer, max_length: int = 1024,
                 max_prompt_length: int | None = None, skip_invalid: bool = False) -> TokenPairs:
    """Render ``records`` as training would; a row that does not fit is a ``DataError`` naming it,
    unless ``skip_invalid`` (then it is left out and listed in ``skipped``)."""
    renderer = Renderer(tokenizer, max_length, max_prompt_length)
    kept: list[PairRecord] = []
    examples: list[TokenizedPair] = []
    issues: list[RowIssue] = []
    for record in records:  # one at a time, so that each example stays beside its record
        result = renderer.render([record])
        issues += result.issues
        if result.examples and result.truncated_responses:
            issues.append(_cut(renderer, record, result.examples[0]))
        elif result.examples:
            kept.append(record)
            examples.append(result.examples[0])
    if issues and not skip_invalid:
        raise DataError(issues)
    if not examples:
        raise UserError("no pair is left to evaluate: " + "; ".join(str(i) for i in issues[:3]))
    return TokenPairs(kept, examples, issues)


def _cut(renderer: Renderer, record: PairRecord, example: TokenizedPair) -> RowIssue:
    """The issue of a pair whose response would be cut to fit ``max_length``: the log-prob of a
    cut response is not the response's."""
    prompt = len(example.prompt_ids)
    for name in ("chosen", "rejected"):
        full = len(renderer._response(record.prompt, getattr(record, name)))
        if len(getattr(example, name)) < full:
            return RowIssue(record.source, record.row, name, f"the prompt ({prompt} tokens) and this response "
                            f"({full} tokens) do not fit max_length={renderer.max_length}, and a cut response's "
                            "log-prob is not the response's")
    raise AssertionError("a response was cut, but neither of the pair's")


@dataclass
class PairLogps:
    """Summed log-probs of each pair's responses under one model, and their token counts; all
    (P,) float64 tensors on the CPU."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor

    @property
    def chosen_mean(self) -> torch.Tensor:
        """ℓ̄(y_w) = ℓ(y_w)/|y_w|, the length-normalised log-prob."""
        return self.chosen / self.chosen_tokens

    @property
    def rejected_mean(self) -> torch.Tensor:
        return self.rejected / self.rejected_tokens


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    if size < 1:
        raise UserError(f"batch size must be >= 1, got {size}")
    for start in range(0, len(items), size):
        yield items[start:start + size]


def pair_logps(model: torch.nn.Module, examples: Sequence[TokenizedPair], pad_id: int, batch_size: int = 32,
               progress: str | None = None) -> PairLogps:
    """Summed log-prob and token count of the chosen and rejected response of every pair under
    ``model`` (which stays where it is; batches go to its device), ``batch_size`` pairs per forward
    pass, without gradients. ``progress``: a bar's label, or None for no bar."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    parts: list[tuple[torch.Tensor, ...]] = []
    chunks = list(batches(examples, batch_size))
    with torch.no_grad():
        for chunk in tqdm(chunks, desc=progress, unit="batch", leave=False, disable=progress is None):
            batch = collate_pairs(chunk, pad_id).to(device)
            chosen, rejected = split_pairs(sequence_logps(model, batch), len(chunk))
            parts.append(tuple(t.double().cpu() for t in (chosen.sum_B, rejected.sum_B, chosen.count_B,
                                                         rejected.count_B)))
    return PairLogps(*(torch.cat([p[i] for p in parts]) for i in range(4)))


def on_device(model: torch.nn.Module, device: str | None = None) -> torch.nn.Module:
    """``model`` in eval mode on ``device`` (default: cuda when there is one, else the CPU)."""
    return model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()


def load_eval_model(name_or_path: str, dtype: str = "fp32", device: str | None = None,
                    trust_remote_code: bool = False) -> torch.nn.Module:
    """A causal LM loaded by ``models.load_model``, in eval mode on ``device`` (``on_device``)."""
    from alignlab.models import load_model

    return on_device(load_model(name_or_path, dtype=dtype, trust_remote_code=trust_remote_code), device)


def same_vocabulary(tokenizer, other, what: str) -> None:
    """Refuse a second model whose tokenizer maps text to other ids: the diagnostics compare
    log-probs of the same token sequences."""
    if tokenizer.get_vocab() != other.get_vocab():
        raise UserError(f"{what}: its tokenizer differs from the first model's; the log-probs compared must be "
                        "of the same tokens")
