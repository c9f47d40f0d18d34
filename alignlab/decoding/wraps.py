"""What a decoding method that wraps a base generator passes through to it unchanged."""

from __future__ import annotations

from alignlab.data.records import Text
from alignlab.generation.base import Generator


class Wraps:
    """``prompt_ids``, ``update_weights`` and ``numbers_prompts`` of the wrapped ``base``, and its
    tokenizer (``tok``) unless one is given."""

    def _wrap(self, base: Generator, tokenizer=None) -> None:
        self.base = base
        self.tok = tokenizer if tokenizer is not None else getattr(base, "tok", None)
        self.numbers_prompts = getattr(base, "numbers_prompts", False)

    def prompt_ids(self, prompt: Text) -> tuple[int, ...]:
        return self.base.prompt_ids(prompt)

    def update_weights(self, model) -> None:
        self.base.update_weights(model)
