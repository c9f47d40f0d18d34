"""Errors that are the user's to fix.

Anything raised as a ``UserError`` is printed by the CLI as one line (no traceback unless
``--debug``) and exits with status 2. Everything else is a bug in alignlab.

A message that tells the user to set an option says it the way they set options: ``option()``
renders ``--overwrite`` for the command line and ``overwrite=True`` for a Python caller of
``alignlab.train``. The CLI runs its commands inside ``command_line()``.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

_FROM_COMMAND_LINE = contextvars.ContextVar("alignlab_from_command_line", default=False)


@contextlib.contextmanager
def command_line() -> Iterator[None]:
    """Within this, ``option()`` names options as command-line flags."""
    token = _FROM_COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _FROM_COMMAND_LINE.reset(token)


def option(name: str, value: object = True) -> str:
    """How the current caller sets config key ``name`` to ``value``: ``--name`` (a flag that is
    true) or ``--name value`` on the command line, ``name=value`` from Python (a dict or a
    TrainConfig)."""
    if _FROM_COMMAND_LINE.get():
        flag = "--" + name.replace("_", "-")
        return flag if value is True else f"{flag} {str(value).lower() if isinstance(value, bool) else value}"
    return f"{name}={value!r}"


def on_command_line() -> bool:
    """Whether the current caller is the command line (inside ``command_line()``)."""
    return _FROM_COMMAND_LINE.get()


def columns_option(fields: dict[str, str]) -> str:
    """How the current caller maps alignlab fields to its columns: ``--columns.prompt NAME ...`` on
    the command line, ``columns={'prompt': 'NAME', ...}`` from Python (in YAML, the ``columns`` key)."""
    if _FROM_COMMAND_LINE.get():
        return " ".join(f"--columns.{field} {column}" for field, column in fields.items())
    return "columns={" + ", ".join(f"{field!r}: {column!r}" for field, column in fields.items()) + "}"


class UserError(Exception):
    """Bad input from the user: a file, a row, a config key, a model path."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are ``UserError``s: one line and status 2, like every other
    bad input, instead of a usage dump and an exit from inside the program."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


class Interrupted(Exception):
    """A run stopped on a signal after writing a checkpoint; the message says where. The CLI
    prints it and exits with status 130."""


class ConfigError(UserError):
    """An invalid configuration value; the message names the field."""


@dataclass(frozen=True)
class RowIssue:
    """One bad row: where it is and what is wrong with it."""

    source: str
    row: int  # 1-based; for JSONL the line number, for other formats the data row number
    field: str | None
    message: str
    # The alignlab field the row has no column for, when that is the problem (for hints).
    lacks: str | None = dataclasses.field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        where = f"{self.source}, row {self.row}"
        if self.field:
            where += f", field '{self.field}'"
        return f"{where}: {self.message}"


class DataError(UserError):
    """One or more bad rows. ``issues`` holds every one found, not only the first."""

    def __init__(self, issues: list[RowIssue], hint: str | None = None):
        """``hint`` follows the count of further bad rows; by default, how to skip bad rows."""
        if hint is None:
            hint = f"pass {option('skip_invalid')} to skip bad rows"
        self.issues = list(issues)
        first = self.issues[0]
        # One row may have several issues; count rows, not issues.
        more = len({(i.source, i.row) for i in self.issues}) - 1
        msg = str(first)
        if more:
            msg += f" (and {more} more bad row{'s' if more > 1 else ''}{f'; {hint}' if hint else ''})"
        elif hint:
            msg += f" ({hint})"
        super().__init__(msg)
