"""The Hugging Face ``generate`` backend, always available; built by ``make_generator(..., "hf")``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from alignlab.errors import UserError
from alignlab.generation.base import Sample, SamplingParams
from alignlab.generation.prompts import RendersPrompts
from alignlab.models import evaluating


def stream_seed(seed: int, start: int) -> int:
    """The torch seed of a call whose prompts start at index ``start`` of the caller's prompt set:
    ``seed`` itself for the first piece, and for a later one a seed of its own (in [0, 2**63))."""
    return seed if start == 0 else (seed * 1_000_003 + 998_244_353 * start) % (2**63)


class HFGenerator(RendersPrompts):
    """Sample from a causal LM with ``model.generate``, ``batch_size`` sequences at a time.

    Prompts are left-padded within a batch. Randomness comes from the torch RNG seeded with
    ``params.seed`` inside a fork (the global state is restored afterwards), so the same model,
    prompts, params, ``start`` and batch size give the same samples on CPU; a prompt's samples
    depend on which prompts share its batch. A call with ``start`` > 0 (a later piece of one prompt
    set: another process's share of a round, a later chunk) seeds with ``params.seed`` and
    ``start`` together, so that the pieces do not draw the same random numbers.

    Each sample's log-probs are read off the raw logits one step at a time (``TokenLogprobs``, a
    logits processor that changes no score), so asking for them changes no sampled token and keeps
    one step's ``batch_size × vocabulary`` floats, not every step's.

    The generator runs on ``model``'s own parameters: an optimizer step on the policy is seen by
    the next ``generate`` call without any copy.
    """

    numbers_prompts = False  # draws depend on the batch; start only picks the random stream

    def __init__(self, model, tokenizer, batch_size: int = 128, progress: str | None = None):
        """``model``: the network itself (training unwraps a DDP wrapper, ``training.distributed.unwrap``,
        before handing its policy over). ``progress``: a label to show a progress bar (sequences
        done) under, or None for none."""
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        self.progress = progress
        self.model = model
        self.tok = tokenizer
        self.batch_size = batch_size
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos

    def update_weights(self, model) -> None:
        """Sample from ``model`` from now on. Given the module this generator already runs on,
        nothing happens: it shares the policy's parameters, so it already samples
        from their current values. Given another module, the generator runs on that module from
        now on (it holds the module itself, not a copy of its weights); the tokenizer stays."""
        self.model = model



    def generate_ids(self, contexts: Sequence[tuple[int, ...]], n: int, params: SamplingParams,
                     start: int = 0) -> list[list[Sample]]:
        """``generate`` for prompts given as token ids, exactly as the model should see them
        (``start``: see the class docstring)."""
        if n < 1:
            raise UserError(f"n must be >= 1, got {n}")
        flat = [tuple(c) for c in contexts for _ in range(n)]
        out: list[Sample] = []
        device = next(self.model.parameters()).device
        devices = [device.index or 0] if device.type == "cuda" else []
        with evaluating(self.model), torch.random.fork_rng(devices=devices), torch.no_grad(), \
                self._bar(len(flat)) as bar:
            torch.manual_seed(stream_seed(params.seed, start))
            for first in range(0, len(flat), self.batch_size):
                out.extend(self._batch(flat[first:first + self.batch_size], params))
                bar.update(len(out) - bar.n)
        return [out[i * n:(i + 1) * n] for i in range(len(contexts))]

    def _batch(self, contexts: list[tuple[int, ...]], params: SamplingParams) -> list[Sample]:
        from transformers import GenerationConfig

        stops = params.stops(self.eos)
        device = next(self.model.parameters()).device
        width = max(len(c) for c in contexts)
        ids = torch.full((len(contexts), width), self.pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for b, c in enumerate(contexts):
            ids[b, width - len(c):] = torch.tensor(c, dtype=torch.long)
            attn[b, width - len(c):] = 1
        # Every logits processor is set to neutral here: transformers fills unset fields from the
        # checkpoint's own generation_config (a repetition penalty, say), and the samples must come
        # from the model's distribution for the gold and KL numbers to mean what they say.
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=not params.greedy,
            eos_token_id=stops or None,
            pad_token_id=self.pad,
            repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0, typical_p=1.0,
            encoder_repetition_penalty=1.0, length_penalty=1.0, suppress_tokens=[], begin_suppress_tokens=[],
            bad_words_ids=None, epsilon_cutoff=0.0, eta_cutoff=0.0, num_beams=1, diversity_penalty=0.0,
            **({} if params.greedy else {"temperature": params.temperature, "top_p": params.top_p,
                                          "top_k": params.top_k}),
        )
        recorder = TokenLogprobs()
        new_BT = self.model.generate(input_ids=ids.to(device), attention_mask=attn.to(device),
                                     generation_config=config, logits_processor=[recorder])[:, width:]
        logprobs_BT = recorder.finish(new_BT)
        samples = []
        for c, row, lps in zip(contexts, new_BT.tolist(), logprobs_BT.tolist(), strict=True):
            end = next((i for i, t in enumerate(row) if t in stops), None)
            finished = end is not None
            row = row[:end + 1] if finished else row
            body = row[:-1] if finished else row
            samples.append(Sample(self.tok.decode(body, skip_special_tokens=True), c, tuple(row), finished,
                                  tuple(lps[:len(row)])))
        return samples


class TokenLogprobs:
    """A logits processor that records log π(token) of every generated token at temperature 1.

    It runs before the sampling warpers (temperature, top-k, top-p; every other processor is set
    to neutral above), so it sees the model's raw logits. At each step it keeps that step's
    log-softmax, and at the next step reads off the value of the token that was drawn (now the
    last of ``input_ids``): one step's values in memory, never all of them. It returns the scores
    unchanged, so the draws are those of ``generate`` without it."""

    def __init__(self):
        self._last: torch.Tensor | None = None
        self._values: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._last is not None:
            self._values.append(self._last.gather(-1, input_ids[:, -1:])[:, 0])
        self._last = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, new_BT: torch.Tensor) -> torch.Tensor:
        """(B, T) log-probs of the generated tokens ``new_BT`` (the last step read off here)."""
        if self._last is not None:
            self._values.append(self._last.gather(-1, new_BT[:, -1:].to(self._last.device))[:, 0])
            self._last = None
        return torch.stack(self._values, dim=1)
