"""The generation protocol: what online methods, decoding-time methods and evaluation call.

Callers get a ``Generator`` from ``alignlab.generation.make_generator``, ask it for ``n`` samples
per prompt and never learn which engine ran. A prompt is a plain string or a conversation (as in
the data records); a conversation is rendered with the tokenizer's chat template and the assistant
turn opened.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from alignlab.data.records import Text
from alignlab.errors import UserError


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``temperature == 0`` means greedy decoding (then ``n`` copies agree).

    A sample ends at the tokenizer's end-of-sequence token, at any of ``stop_token_ids`` (the token
    is kept in ``Sample.token_ids`` and the sample counts as finished) or after ``max_new_tokens``.
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    seed: int = 0
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        if any(not isinstance(t, int) or isinstance(t, bool) or t < 0 for t in self.stop_token_ids):
            raise UserError(f"stop_token_ids must be token ids (integers >= 0), got {list(self.stop_token_ids)}")
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise UserError(f"temperature must be finite and >= 0, got {self.temperature}")
        if not (0 < self.top_p <= 1):
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if not (0 <= self.seed < 2**63):
            raise UserError(f"seed must be in [0, 2**63), got {self.seed}")
        if self.top_k < 0:
            raise UserError(f"top_k must be >= 0, got {self.top_k}")

    def stops(self, eos: int | None) -> list[int]:
        """The tokens that end a sample: the tokenizer's end-of-sequence token ``eos`` (when it has
        one), then ``stop_token_ids``; every backend stops on exactly these."""
        return [t for t in (eos, *self.stop_token_ids) if t is not None]

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def check_stops(self, model, flag: str = "stop_token_ids") -> None:
        """Every one of ``stop_token_ids`` must be a token ``model`` can write (an id below its
        output layer's size): another never ends a sample."""
        head = model.get_output_embeddings()
        vocab = head.weight.shape[0] if head is not None else getattr(model.config, "vocab_size", None)
        beyond = [t for t in self.stop_token_ids if vocab is not None and t >= vocab]
        if beyond:
            raise UserError(f"{flag}: {', '.join(map(str, beyond))} {'is' if len(beyond) == 1 else 'are'} not among the "
                            f"model's {vocab} token ids (0 to {vocab - 1}), so no sample would stop there")


@dataclass(frozen=True)
class Sample:
    """One generated response.

    ``prompt_ids`` is the context the model saw (the prompt as rendered for generation, without
    padding) and ``token_ids`` what it generated, including the end-of-turn token when it stopped
    on one (``finished``). ``text`` is the decoded response without that token.

    ``logprobs[i]`` is log π(token_ids[i] | prompt_ids, token_ids[:i]) under the model's own,
    unmodified distribution: the log-softmax of its raw logits at temperature 1, with no top-p,
    top-k or other processing, whatever ``SamplingParams`` the token was drawn with (so a greedy
    sample's log-probs are not 0). That is the old policy's log-prob an online method needs. It is
    computed in float32 during generation (with the key-value cache), so it agrees with a
    teacher-forced forward pass (``alignlab.logprobs.completion_logps``) to rounding, not to the bit.
    Every generator fills it, one per generated token, the end-of-turn token included; only a
    sample made by hand may leave it empty.

    ``sampling_logprobs[i]`` is the log-probability the token had under the distribution it was
    actually drawn from: the raw logits divided by the temperature, cut by top-k and then top-p and
    renormalised (0.0 for every greedy token: it was certain). It is what importance ratios against
    the sampler need; empty when a backend does not report it (the "hf" backend).
    """

    text: str
    prompt_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    finished: bool
    logprobs: tuple[float, ...] = ()
    sampling_logprobs: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for name in ("logprobs", "sampling_logprobs"):
            values = getattr(self, name)
            if values and len(values) != len(self.token_ids):
                raise ValueError(f"a sample has {len(self.token_ids)} tokens but {len(values)} {name}")


class Generator(Protocol):
    """What every generation backend (and every decoding-time method) provides.

    ``numbers_prompts``: True when a prompt's draws depend only on (seed, its index in the
    caller's prompt set, ``start`` included, sample index), not on the batch it shares."""

    numbers_prompts: bool

    def prompt_ids(self, prompt: Text) -> tuple[int, ...]:
        """Token ids of ``prompt`` as the model sees it before its response."""
        ...

    def generate(self, prompts: Sequence[Text], n: int, params: SamplingParams, start: int = 0) -> list[list[Sample]]:
        """``n`` samples for each prompt, in prompt order.

        ``start``: the index of the first prompt in the caller's whole prompt set. A backend that
        draws from one random stream per (seed, prompt index, sample index) ("native") numbers the
        prompts from it, so a prompt set sampled in pieces (shards across processes, chunks of a
        resumed run) gets the samples it would get in one call; others ignore it.
        """
        ...

    def generate_ids(self, contexts: Sequence[tuple[int, ...]], n: int, params: SamplingParams,
                     start: int = 0) -> list[list[Sample]]:
        """``generate`` for prompts given as token ids, exactly as the model should see them."""
        ...

    def update_weights(self, model) -> None:
        """Sample from ``model``'s current weights from now on (weight sync for online training).

        A backend that runs on the policy's own parameters has nothing to copy; one with an engine
        of its own (vLLM) loads the weights into it.
        """
        ...
