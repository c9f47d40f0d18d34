"""The one interface every reward in alignlab implements: score responses, compare two of them.

A ``Scorer`` answers two questions about responses to prompts (plain strings):

- ``score(prompts, responses)``: one number per (prompt, response); higher is better;
- ``compare(prompts, first, second)``: per triple, the probability that ``first`` is the better
  response to the prompt.

A scorer that is naturally pointwise (a reward model, a verifier, BLEU) implements ``score`` and
inherits ``compare`` as the Bradley-Terry probability σ(r₁ − r₂). A scorer that is naturally
pairwise (a general preference model, a pairwise judge) implements ``compare`` and scores a response
against an anchor response (see its docstring). Online methods, decoding-time methods and
evaluation call only these two methods.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

from alignlab.data.records import Text, is_conversation
from alignlab.errors import UserError


def sigmoid(x: float) -> float:
    """σ(x), without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def check_lengths(what: str, *columns: Sequence) -> int:
    """The common length of ``columns``; a UserError naming ``what`` when they differ."""
    lengths = {len(c) for c in columns}
    if len(lengths) > 1:
        raise UserError(f"{what}: got {', '.join(str(len(c)) for c in columns)} items; every list must have "
                        "one item per prompt")
    return lengths.pop() if lengths else 0


def finite_number(value) -> tuple[float | None, str]:
    """(``value`` as a float, "") or (None, what it is instead, for a message: "'1.5', not a
    number", "nan, not a finite number"). A number is anything ``float`` takes but text: a reward
    that returns the text of a number ("1.5", b"2") has a bug and is not read as that number."""
    if isinstance(value, (str, bytes, bytearray)):
        return None, f"{value!r}, not a number"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None, f"{value!r}, not a number"
    except OverflowError:  # an int beyond the float range
        shown = repr(value)
        return None, f"{shown if len(shown) <= 40 else shown[:40] + '...'}, not a finite number"
    if not math.isfinite(x):
        return None, f"{x}, not a finite number"
    return x, ""


def check_finite(what: str, values: Sequence[float]) -> list[float]:
    """``values`` as floats; a UserError naming ``what`` and the item when one is not a finite number."""
    out = []
    for i, v in enumerate(values):
        x, problem = finite_number(v)
        if x is None:
            raise UserError(f"{what}: returned {problem}" if len(values) == 1 else f"{what}: item {i} is {problem}")
        out.append(x)
    return out


class Scorer(ABC):
    """Scores responses to prompts; compares two responses to one prompt."""

    name: str = "scorer"

    @abstractmethod
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """One reward per (prompt, response) pair; higher is better. Lists of equal length."""

    def score_sampled(self, prompts: Sequence[str], responses: Sequence[str],
                      token_counts: Sequence[int]) -> list[float]:
        """``score`` of sampled responses, told how many tokens the generator sampled for each
        (``len(Sample.token_ids)``: the end-of-sequence token included when it stopped on one).
        Callers that hold samples call this; only a scorer of sampled lengths reads the counts."""
        return self.score(prompts, responses)

    def compare(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> list[float]:
        """P(first ≻ second | prompt) per triple: σ(r(first) − r(second)) unless a scorer knows better."""
        check_lengths(f"{self.name}: compare", prompts, first, second)
        a = self.score(prompts, first)
        b = self.score(prompts, second)
        return [sigmoid(x - y) for x, y in zip(a, b, strict=True)]

    def prompt_problem(self, prompt: str) -> str | None:
        """What stops this scorer from scoring any answer to ``prompt``, seen before anything is
        sampled (BLEU without references for it, a task's reward on a prompt of another kind);
        None when nothing shows. An online run asks this of every prompt at load time."""
        return None

    @property
    def compares_by_score(self) -> bool:
        """Whether ``compare`` is σ(score(first) − score(second)): a caller that needs both the
        scores and the probabilities can then derive the probabilities and score once."""
        return type(self).compare is Scorer.compare

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


def win_points(first: Sequence[float], second: Sequence[float]) -> list[float]:
    """Pair by pair: 1 where ``first`` scores higher, 0.5 for a tie, 0 where lower (a win rate's terms)."""
    return [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(first, second, strict=True)]


def reward_prompt(prompt: Text) -> str:
    """What scorers get as the prompt: a text prompt as it is, a conversation's last user message
    (system messages and earlier turns are not passed on). A ValueError for a conversation without
    a user message."""
    if not is_conversation(prompt):
        return prompt
    users = [m.content for m in prompt if m.role == "user"]
    if not users:
        raise ValueError("the conversation has no user message, so a reward has no question to read")
    return users[-1]
