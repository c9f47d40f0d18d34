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
    score_chosen: float | None = None  # the scores that labelled the pair, when the data has them
    score_rejected: float | None = None
    strength: float | None = None  # preference strength in [0, 1]: how sure the label is

    @property
    def conversational(self) -> bool:
        return is_conversation(self.chosen)


@dataclass(frozen=True)
class JointRecord:
    """A preferred and a dispreferred response, each to its own prompt (the prompts may differ)."""

    prompt_chosen: Text
    chosen: Text
    prompt_rejected: Text
    rejected: Text
    source: str = ""
    row: int = 0

    @property
    def conversational(self) -> bool:
        return is_conversation(self.chosen)


@dataclass(frozen=True)
class UnpairedRecord:
    """One response with a thumbs up (``label`` True: desirable) or down (False)."""

    prompt: Text
    completion: Text
    label: bool
    source: str = ""
    row: int = 0

    @property
    def conversational(self) -> bool:
        return is_conversation(self.completion)


@dataclass(frozen=True)
class ScoredRecord:
    """One response with a scalar score; higher is better."""

    prompt: Text
    completion: Text
    score: float
    source: str = ""
    row: int = 0

    @property
    def conversational(self) -> bool:
        return is_conversation(self.completion)


@dataclass(frozen=True)
class RankedRecord:
    """Two or more responses to one prompt, best first.

    ``scores`` is non-increasing and as long as ``completions``. Ranks r given by the data become
    scores -r; responses that tie keep the order the data gave them.
    """

    prompt: Text
    completions: tuple[Text, ...]
    scores: tuple[float, ...]
    source: str = ""
    row: int = 0

    @property
    def conversational(self) -> bool:
        return is_conversation(self.completions[0])


@dataclass(frozen=True)
class NegativeRecord:
    """A prompt with a dispreferred response alone (negatives-only methods)."""

    prompt: Text
    rejected: Text
    source: str = ""
    row: int = 0

    @property
    def conversational(self) -> bool:
        return is_conversation(self.rejected)


@dataclass(frozen=True)
class PromptRecord:
    """A prompt alone, read out of a row of any shape that has one (what ``alignlab sample``
    answers)."""

    prompt: Text
    source: str = ""
    row: int = 0


Record: TypeAlias = (
    SFTRecord | PairRecord | JointRecord | UnpairedRecord | ScoredRecord | RankedRecord | NegativeRecord
)
