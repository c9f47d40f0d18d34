"""alignlab: align causal language models with preference feedback and measure what it did.

``alignlab.train(config)`` trains with a ``TrainConfig`` (or a dict of its fields, flat or by
section) and returns a ``Summary`` with the final metrics and the output path. The code that
trains lives in ``alignlab.training``; rounds of sampling and training (``rounds: N``) in
``alignlab.rounds``.
"""

from __future__ import annotations

__version__ = "0.1.0"


def train(config):
    """Train with a ``TrainConfig`` or a dict of its fields; returns a ``training.run.Summary``
    (with ``rounds``, the last round's: ``alignlab.rounds``)."""
    from alignlab.config import TrainConfig, make_config
    from alignlab.training.run import train as _train

    cfg = config if isinstance(config, TrainConfig) else make_config(config)
    if cfg.iterate.rounds:
        from alignlab.rounds import run_rounds

        return run_rounds(cfg)
    return _train(cfg)


__all__ = ["train", "__version__"]
