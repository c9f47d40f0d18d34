"""The built-in tasks by name (the testbed's task library): prompts with a gold reward, a flawed
proxy and a held-out eval set.

``get_task("arithmetic", partial_credit=True)`` builds a task; ``task_names()`` lists them. Each
task's module docstring says what its gold and proxy rewards are and what alignment should change.
"""

from __future__ import annotations

import difflib
import inspect

from alignlab.errors import UserError
from alignlab.tasks.arithmetic import ArithmeticTask
from alignlab.tasks.base import Task
from alignlab.tasks.chainsum import ChainSumTask
from alignlab.tasks.constraints import ConstraintsTask
from alignlab.tasks.sentiment import SentimentTask

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (ArithmeticTask, SentimentTask, ConstraintsTask,
                                                             ChainSumTask)}


def task_names() -> list[str]:
    """The names ``get_task`` accepts, sorted."""
    return sorted(TASKS)


def task_options(name: str) -> dict[str, object]:
    """A task's constructor options and their defaults, e.g. for CLI help."""
    params = inspect.signature(_task_class(name)).parameters
    return {p.name: p.default for p in params.values()}


def get_task(name: str, **options: object) -> Task:
    """Build the task called ``name`` with ``options``; a UserError for an unknown name or bad option."""
    cls = _task_class(name)
    known = task_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UserError(f"task '{name}': unknown option{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(repr(u) for u in unknown)} (options: {', '.join(known)})")
    try:
        return cls(**options)
    except ValueError as exc:
        raise UserError(f"task '{name}': {exc}") from None


def _task_class(name: str) -> type[Task]:
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name).lower(), list(TASKS), n=3)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UserError(f"task: unknown task {name!r}{hint} (known: {', '.join(task_names())})") from None


__all__ = ["TASKS", "Task", "ArithmeticTask", "ChainSumTask", "ConstraintsTask", "SentimentTask", "get_task",
           "task_names", "task_options"]
