"""The ``Task`` interface every testbed task implements, and the helpers the tasks share.

A task is a distribution of prompts with a programmatic *gold* reward (the truth that the testbed
measures alignment against) and a *proxy* reward that differs from gold in one documented way (what
a flawed labeler would reward). Everything a task returns is a pure function of its options and the
seed passed in: randomness comes only from ``random.Random`` seeded with a string (hashed with
SHA-512 by Python, so it does not depend on ``PYTHONHASHSEED`` or the machine). The evaluation set
is drawn from a fixed seed and held out: nothing the training methods return contains an eval
prompt.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar, TypeVar

T = TypeVar("T")

DOC_MIN_CHARS = 100
DOC_MAX_CHARS = 250


def shown(prompt: object, chars: int = 80) -> str:
    """``prompt`` as an error message shows it: its repr, the first ``chars`` characters of a
    longer string followed by ``...``."""
    return f"{prompt[:chars]!r}..." if isinstance(prompt, str) and len(prompt) > chars else repr(prompt)


class Task(ABC):
    """A prompt distribution with a gold reward, a flawed proxy reward and a held-out eval set.

    ``prompt`` arguments are user-message contents exactly as ``train_prompts``/``eval_prompts``
    return them; a prompt the task cannot parse raises ``ValueError``. ``response`` is raw decoded
    model text; the rewards accept any string and never raise on it.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    max_new_tokens: ClassVar[int]  # byte-level tokenizer: one ASCII character is one token

    def __init__(self, num_eval: int = 200) -> None:
        self.num_eval = check_int("num_eval", num_eval, minimum=1)
        self._eval_cache: list[str] | None = None

    def options(self) -> dict[str, object]:
        """The constructor options, so a run can record and rebuild exactly this task."""
        return {"num_eval": self.num_eval}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({args})"

    def rng(self, purpose: str, seed: int) -> random.Random:
        """An independent random stream per (task, purpose, seed), stable across machines."""
        return random.Random(f"{self.name}/{purpose}/{seed}")

    def eval_prompts(self) -> list[str]:
        """The fixed held-out evaluation prompts (a fresh copy: callers may mutate it)."""
        if self._eval_cache is None:
            self._eval_cache = self._make_eval_prompts()
        return list(self._eval_cache)

    @abstractmethod
    def _make_eval_prompts(self) -> list[str]:
        """Build the eval set from a fixed seed; called once per instance."""

    @abstractmethod
    def train_prompts(self, n: int, seed: int) -> list[str]:
        """``n`` training prompts (user-message contents), none of them an eval prompt."""

    @abstractmethod
    def demonstrations(self, n: int, seed: int) -> list[tuple[str, str]]:
        """``n`` (prompt, response) pairs for SFT; no prompt is an eval prompt."""

    @abstractmethod
    def corpus(self, n: int, seed: int) -> list[str]:
        """``n`` plain-text pretraining documents, examples separated by newlines, no eval problem."""

    @abstractmethod
    def gold(self, prompt: str, response: str) -> float:
        """The true reward of ``response`` to ``prompt``."""

    @abstractmethod
    def proxy(self, prompt: str, response: str) -> float:
        """A flawed reward: gold changed in the way the task's docstring documents."""


def check_int(name: str, value: object, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` if it is an int (not a bool) within the bounds, else a ValueError naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value}")
    return value


def cycle_draw(pool: Sequence[T], n: int, rng: random.Random) -> list[T]:
    """``n`` items from ``pool``: no repeats until the pool is used up, then again in a new order.

    Drawing without replacement spreads a small pool (e.g. a few hundred review openers) evenly
    over the returned list instead of repeating some items and missing others.
    """
    check_int("n", n, minimum=0)
    if n and not pool:
        raise ValueError("cannot draw from an empty pool")
    out: list[T] = []
    while len(out) < n:
        order = list(pool)
        rng.shuffle(order)
        out.extend(order[: n - len(out)])
    return out


def pack_documents(
    make_line: Callable[[], str],
    n: int,
    rng: random.Random,
    min_chars: int = DOC_MIN_CHARS,
    max_chars: int = DOC_MAX_CHARS,
) -> list[str]:
    """``n`` documents of newline-joined lines from ``make_line``, each ``min_chars``..``max_chars`` long.

    Each document aims at a random length in the range. The first line is always taken; a later
    line that would overflow ``max_chars`` is dropped and another drawn while the document is still
    shorter than ``min_chars`` (at most 50 times), else the document ends. So lengths stay in range
    as long as single lines are shorter than ``max_chars - min_chars``.
    """
    check_int("n", n, minimum=0)
    docs = []
    for _ in range(n):
        target = rng.randint(min_chars, max_chars)
        lines = [make_line()]
        size = len(lines[0])  # length of "\n".join(lines)
        misses = 0
        while size < target:
            line = make_line()
            if size + 1 + len(line) > max_chars:
                misses += 1
                if size >= min_chars or misses > 50:
                    break
                continue
            lines.append(line)
            size += 1 + len(line)
        docs.append("\n".join(lines))
    return docs
