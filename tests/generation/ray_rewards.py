"""A reward for the Ray tests that keeps what it scored (``fn:tests.generation.ray_rewards:digits_seen``):
rewards run in the training process, so a test reads the round's samples from SCORED."""

from __future__ import annotations

SCORED: list[tuple[str, str]] = []


def digits_seen(prompt: str, response: str) -> float:
    """How many ASCII digits the response has; the (prompt, response) pair is kept in SCORED."""
    SCORED.append((prompt, response))
    return float(sum(c in "0123456789" for c in response))
