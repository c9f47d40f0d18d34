"""alignlab: align causal language models with preference feedback and measure what it did."""

from __future__ import annotations

__version__ = "0.1.0"


def train(config):
    """Train with a ``TrainConfig`` or a flat dict of its fields; returns a ``Summary``."""
    from alignlab.train import train as _train

    return _train(config)


__all__ = ["train", "__version__"]
