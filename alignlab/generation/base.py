"""The generation protocol: what online methods, decoding-time methods and evaluation call.

Callers ask a ``Generator`` for ``n`` samples per prompt and never learn which engine ran.
A prompt is a plain string or a conversation (as in the data records); a conversation is
rendered with the tokenizer's chat template and the assistant turn opened.
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
    """How to sample. ``temperature == 0`` means greedy decoding (then ``n`` copies agree)."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    seed: int = 0

    def __post_init__(self) -> None:
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

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Sample:
    """One generated response.

    ``prompt_ids`` is the context the model saw (the prompt as rendered for generation, without
    padding) and ``token_ids`` what it generated, including the end-of-turn token when it stopped
    on one (``finished``). ``text`` is the decoded response without that token.
    """

    text: str
    prompt_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    finished: bool


class Generator(Protocol):
    def generate(self, prompts: Sequence[Text], n: int, params: SamplingParams) -> list[list[Sample]]:
        """``n`` samples for each prompt, in prompt order."""
        ...
