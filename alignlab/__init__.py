"""alignlab: align causal language models with preference feedback and measure what it did.

``alignlab.train(config)`` trains with a ``TrainConfig`` (or a dict of its fields, flat or by
section) and returns a ``Summary`` with the final metrics and the output path.
"""

from __future__ import annotations

from alignlab import train

__version__ = "0.1.0"

__all__ = ["train", "__version__"]
