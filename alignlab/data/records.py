"""Typed records: what a dataset row becomes once it has been validated.

A text is either a plain string or a conversation (a tuple of messages). Within one record all
texts have the same kind. Conversations are rendered with the tokenizer's chat template; strings
are rendered as plain text followed by EOS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Message:
    role: str
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


Conversation: TypeAlias = tuple[Message, ...]
Text: TypeAlias = str | Conversation


def is_conversation(text: Text) -> bool:
    return isinstance(text, tuple)


@dataclass(frozen=True)
class SFTRecord:
    """A prompt and the completion to learn. The loss covers the completion only.

    For conversations, the completion may hold several turns; the loss covers its assistant
    turns. ``prompt`` may be empty ("" or ()) for plain language modelling.
    """

    prompt: Text
    completion: Text
    source: str = ""
    row: int = 0

    @property
    def conversational(self) -> bool:
        return is_conversation(self.completion)


@dataclass(frozen=True)
class PairRecord:
    """A prompt with a preferred (chosen) and a dispreferred (rejected) response."""

    prompt: Text
    chosen: Text
    rejected: Text
    source: str = ""
    row: int = 0

    @property
    def conversational(self) -> bool:
        return is_conversation(self.chosen)


Record: TypeAlias = SFTRecord | PairRecord
