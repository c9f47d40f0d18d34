"""Helpers for hyperparameter dataclasses: a field with help text, and range checks.

The checks raise ``ParamError`` with a message that starts with the parameter's name, so every
loss words the same mistake the same way (``beta: must be a finite number > 0, got 0.0``).
"""

from __future__ import annotations

import math
from dataclasses import field
from typing import Any

BETA_HELP = "β: strength of the KL penalty toward the reference (higher stays closer)"


class ParamError(ValueError):
    """A hyperparameter out of its range; the message starts with the parameter's name."""


def param(default: Any, help: str) -> Any:  # noqa: A002 - 'help' reads best at call sites
    """A dataclass field whose help text ``alignlab train --help`` prints."""
    return field(default=default, metadata={"help": help})


def require(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ParamError(f"{name}: {message}")


def require_positive(value: float, name: str) -> None:
    """A finite number > 0."""
    require(math.isfinite(value) and value > 0, name, f"must be a finite number > 0, got {value}")


def require_non_negative(value: float, name: str) -> None:
    """A finite number >= 0."""
    require(math.isfinite(value) and value >= 0, name, f"must be a finite number >= 0, got {value}")


def require_beta(beta: float) -> None:
    """β of every loss that has one: a finite number > 0."""
    require_positive(beta, "beta")


def require_below_half(value: float, name: str) -> None:
    """A rate in [0, 0.5): label smoothing, a label-noise rate."""
    require(math.isfinite(value) and 0 <= value < 0.5, name, f"must be in [0, 0.5), got {value}")


def require_fraction(value: float, name: str) -> None:
    """A weight in [0, 1]."""
    require(math.isfinite(value) and 0 <= value <= 1, name, f"must be between 0 and 1, got {value}")


def require_bool(value: object, name: str) -> None:
    """True or False (not 0/1, not a string)."""
    require(isinstance(value, bool), name, f"must be true or false, got {value!r}")
