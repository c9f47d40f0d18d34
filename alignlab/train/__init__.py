"""Training loops. ``train(config)`` runs any registered method."""

from alignlab.train.run import Summary, train

__all__ = ["Summary", "train"]
