"""alignlab: align causal language models with preference feedback and measure what it did.

``alignlab.train(config)`` trains with a ``TrainConfig`` (or a dict of its fields, flat or by
section) and returns a ``Summary`` with the final metrics and the output path. The code that
trains lives in ``alignlab.training``.
"""

from __future__ import annotations

__version__ = "0.1.0"


def train(config):
    """Train with a ``TrainConfig`` or a dict of its fields; returns a ``training.run.Summary``."""
    from alignlab.training.run import train as _train

    return _train(config)


__all__ = ["train", "__version__"]
