"""Programmatic rewards: a testbed task's gold reward or verifier, a length penalty, a user function.

- ``TaskReward("arithmetic")``: the task's gold reward (for arithmetic, chainsum and constraints a
  verifier: 1 when the answer is right, partial credit where the task gives it), or its flawed ``proxy``.
- ``LengthPenalty(coef, target, unit)``: −coef·max(0, length − target), length in words,
  characters or tokens of a given tokenizer; 0 for responses up to ``target``.
- ``FunctionReward("mypkg.rewards:politeness")``: any function ``f(prompt, response) -> number``,
  imported by its ``module:function`` name; its results are checked to be finite numbers.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from alignlab.errors import UserError
from alignlab.rewards.base import Scorer, check_finite, check_lengths

UNITS = ("words", "chars", "tokens")


class TaskReward(Scorer):
    """A testbed task's ``gold`` (default) or ``proxy`` reward. ``task`` is a name (built with
    ``options``) or a ``Task`` already built. A prompt that is not one of the task's is a UserError
    naming the item."""

    def __init__(self, task, kind: str = "gold", **options):
        from alignlab.tasks import Task, get_task

        if kind not in ("gold", "proxy"):
            raise UserError(f"task reward: kind must be gold or proxy, got '{kind}'")
        if isinstance(task, Task) and options:
            raise UserError("task reward: options go with a task name, not with a task already built")
        self.task = task if isinstance(task, Task) else get_task(task, **options)
        self.kind = kind
        self.name = f"task:{self.task.name}:{kind}"
        self._fn = self.task.gold if kind == "gold" else self.task.proxy

    def owns(self, prompt: str) -> bool:
        """Whether ``prompt`` is one of this task's prompts (for routing)."""
        return self.prompt_problem(prompt) is None

    def prompt_problem(self, prompt: str) -> str | None:
        try:
            self._fn(prompt, "")
        except ValueError as e:
            return str(e)
        return None

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        check_lengths(self.name, prompts, responses)
        out = []
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            try:
                out.append(float(self._fn(p, r)))
            except ValueError as e:
                raise UserError(f"{self.name}: item {i}: {e}") from None
        return out


class LengthPenalty(Scorer):
    """−coef·max(0, length − target); see the module docstring."""

    def __init__(self, coef: float = 0.01, target: int = 0, unit: str = "words", tokenizer=None):
        if unit not in UNITS:
            raise UserError(f"length penalty: unit must be one of {', '.join(UNITS)}, got '{unit}'")
        if unit == "tokens" and tokenizer is None:
            raise UserError("length penalty: unit 'tokens' needs a tokenizer")
        if coef < 0 or target < 0:
            raise UserError(f"length penalty: coef and target must be >= 0, got {coef} and {target}")
        if coef == 0:
            raise UserError("length penalty: coef 0 scores every answer 0, from which nothing is learned; give a "
                            "coef > 0, or leave the term out")
        self.coef, self.target, self.unit, self.tokenizer = coef, target, unit, tokenizer
        self.name = f"length:{unit}"

    def length(self, response: str) -> int:
        if self.unit == "words":
            return len(response.split())
        if self.unit == "chars":
            return len(response)
        return len(self.tokenizer(response, add_special_tokens=False)["input_ids"])

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        check_lengths(self.name, prompts, responses)
        return [-self.coef * max(0, self.length(r) - self.target) for r in responses]


def _path_hint(module_name: str, e: ImportError) -> str:
    """Where the module itself is not found (not a module it imports): that its folder must be on
    the import path, and, when it is in the current folder, how to put that folder there."""
    top = module_name.split(".")[0]
    if not isinstance(e, ModuleNotFoundError) or e.name not in (top, module_name):
        return ""
    here = Path.cwd()
    if ((here / f"{top}.py").is_file() or (here / top).is_dir()) and not any(
            Path(p or ".").resolve() == here.resolve() for p in sys.path):
        return f" ({top} is in the current folder, which is not on the import path: run with PYTHONPATH=.)"
    return " (a module of your own is found through PYTHONPATH: add the folder that holds it)"


def import_function(spec: str) -> Callable:
    """The callable named ``module:function`` (dots allowed in both parts)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"reward function '{spec}': expected module:function, e.g. mypkg.rewards:politeness")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"reward function '{spec}': cannot import module '{module_name}': {e}"
                        f"{_path_hint(module_name, e)}") from None
    except Exception as e:  # the module's own code failed: a syntax error, or an error while it runs
        raise UserError(f"reward function '{spec}': importing module '{module_name}' raised "
                        f"{type(e).__name__}: {_where(e)}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"reward function '{spec}': module '{module_name}' has no '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"reward function '{spec}': '{attr}' is not callable")
    try:
        inspect.signature(obj).bind("prompt", "response")
    except TypeError:
        raise UserError(f"reward function '{spec}': must take (prompt, response)") from None
    except ValueError:  # a builtin without a signature: trust it
        pass
    return obj


def _where(e: Exception) -> str:
    """An exception's message in one line, with the file and line of a syntax error."""
    if isinstance(e, SyntaxError):
        return f"{e.msg} ({Path(e.filename or '?').name}, line {e.lineno})"
    return " ".join(str(e).split()) or "(no message)"


class FunctionReward(Scorer):
    """A user function ``f(prompt, response) -> number`` (a callable or its ``module:function`` name)."""

    def __init__(self, fn: Callable | str, name: str | None = None):
        self.fn = import_function(fn) if isinstance(fn, str) else fn
        self.name = name or (fn if isinstance(fn, str) else getattr(fn, "__name__", "function"))

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        check_lengths(self.name, prompts, responses)
        return check_finite(f"reward function {self.name}",
                            [self.fn(p, r) for p, r in zip(prompts, responses, strict=True)])
