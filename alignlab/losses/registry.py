"""What each loss needs: data shape, reference model, log-prob reduction, normalisation, defaults.

A new loss is one function, one ``register(LossSpec(...))`` line and one test with numbers
derived by hand. The training loops read the spec; they never branch on a loss's name.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Shape = Literal["sft", "pair"]


@dataclass(frozen=True)
class LossSpec:
    name: str
    fn: Callable  # fn(logps, params) -> LossOutput
    shape: Shape  # the data shape the loss trains on
    params: type  # dataclass of hyperparameters; its defaults are the method's defaults
    needs_reference: bool
    reduction: Literal["sum", "mean"] = "sum"  # how response log-probs are reduced over tokens
    normalize: Literal["examples", "tokens"] = "examples"  # units the step's loss is averaged over
    paper: str = ""
    summary: str = ""

    def defaults(self) -> dict:
        return {f.name: f.default for f in dataclasses.fields(self.params)}


REGISTRY: dict[str, LossSpec] = {}


class UnknownLossError(LookupError):
    """No loss of that name; the message lists the closest names."""


def register(spec: LossSpec) -> LossSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"loss '{spec.name}' is registered twice")
    if not dataclasses.is_dataclass(spec.params):
        raise TypeError(f"{spec.name}: params must be a dataclass")
    REGISTRY[spec.name] = spec
    return spec


def get_loss(name: str) -> LossSpec:
    """The spec of a method, or an UnknownLossError with the closest names."""
    try:
        return REGISTRY[name]
    except KeyError:
        lowered = {n.lower(): n for n in REGISTRY}
        close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=3)]
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownLossError(f"method: unknown method '{name}'{hint} (known: {', '.join(sorted(REGISTRY))})") from None
