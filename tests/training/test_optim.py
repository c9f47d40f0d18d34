"""Learning-rate schedule factors, by hand."""

from __future__ import annotations

import math

import pytest

from alignlab.training.optim import lr_factor


def test_linear_with_warmup():
    """warmup 3 of 8 steps: (s+1)/4 for s < 3, then 1 − (s−3)/5: 1, 0.8, 0.6, 0.4, 0.2."""
    got = [lr_factor(s, total=8, warmup=3, kind="linear") for s in range(8)]
    assert got == pytest.approx([0.25, 0.5, 0.75, 1.0, 0.8, 0.6, 0.4, 0.2], abs=1e-12)


def test_cosine_without_warmup():
    """0.5·(1 + cos(π·s/4)) for s = 0..3: 1, 0.853553, 0.5, 0.146447."""
    got = [lr_factor(s, total=4, warmup=0, kind="cosine") for s in range(4)]
    assert got == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))])


def test_constant_and_no_zero_step():
    assert [lr_factor(s, 5, 2, "constant") for s in range(5)] == pytest.approx([1 / 3, 2 / 3, 1, 1, 1])
    assert all(lr_factor(s, 10, 3, k) > 0 for s in range(10) for k in ("linear", "cosine"))
