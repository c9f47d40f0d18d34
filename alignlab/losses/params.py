"""Helpers for hyperparameter dataclasses: a field with help text, and range checks."""

from __future__ import annotations

from dataclasses import field
from typing import Any


class ParamError(ValueError):
    """A hyperparameter out of its range; the message starts with the parameter's name."""


def param(default: Any, help: str) -> Any:  # noqa: A002 - 'help' reads best at call sites
    """A dataclass field whose help text ``alignlab train --help`` prints."""
    return field(default=default, metadata={"help": help})


def require(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ParamError(f"{name}: {message}")
