"""Training loops. ``alignlab.train(config)`` runs any registered method.

``alignlab.train`` is both this package and the function that trains: the module is callable,
so ``import alignlab.train.loop`` elsewhere never shadows ``alignlab.train(config)``.
"""

from __future__ import annotations

import sys
import types


def train(config):
    """Train with a ``TrainConfig`` or a flat dict of its fields; returns a ``Summary``."""
    from alignlab.train.run import train as _train

    return _train(config)


def __getattr__(name: str):
    if name == "Summary":
        from alignlab.train.run import Summary

        return Summary
    raise AttributeError(f"module 'alignlab.train' has no attribute '{name}'")


class _CallableModule(types.ModuleType):
    def __call__(self, config):
        return train(config)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["Summary", "train"]
