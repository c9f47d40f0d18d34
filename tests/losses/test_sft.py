"""SFT loss: summed NLL per example and the nll/token metric, by hand."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from alignlab.losses import SeqLogps, SFTParams, sft_loss

TOL = 1e-6


def test_sft_summed_nll_and_nll_per_token_by_hand():
    """Three examples.

    1. Three response tokens with probabilities 1/2, 1/4, 1/8: summed log-prob
       log(1/2) + log(1/4) + log(1/8) = −6·log 2, so the loss is 6·log 2 = 4.158883083...
       and nll/token = 6·log 2 / 3 = 2·log 2 = 1.386294361...
    2. One token with probability 0.9: loss = nll/token = −log 0.9 = 0.105360515...
    3. Two tokens with probability 1 each: summed log-prob 0, loss 0, nll/token 0.
    """
    token_probs = [[0.5, 0.25, 0.125], [0.9], [1.0, 1.0]]
    summed = [sum(math.log(p) for p in probs) for probs in token_probs]
    logps = SeqLogps(
        logps=torch.tensor(summed, dtype=torch.float64),
        lengths=torch.tensor([3, 1, 2]),
    )
    out = sft_loss(logps, SFTParams())
    assert out.losses.shape == (3,)
    assert out.losses.tolist() == pytest.approx([6 * math.log(2), -math.log(0.9), 0.0], abs=TOL)
    assert float(out.losses[0]) == pytest.approx(4.158883083359672, abs=TOL)
    per_token = out.metrics["nll/token"]
    assert per_token.shape == (3,)
    assert per_token.tolist() == pytest.approx([2 * math.log(2), -math.log(0.9), 0.0], abs=TOL)
    assert float(per_token[0]) == pytest.approx(1.3862943611198906, abs=TOL)


def test_sft_zero_length_example_gives_zero_not_nan():
    """A row with no response tokens (summed log-prob 0, length 0): loss 0 and nll/token 0, not 0/0."""
    out = sft_loss(SeqLogps(torch.tensor([0.0, -4.0]), torch.tensor([0, 2])), SFTParams())
    assert out.losses.tolist() == [0.0, 4.0]
    assert out.metrics["nll/token"].tolist() == [0.0, 2.0]


def test_sft_gradient_is_minus_one_per_example():
    """loss_b = −logps_b, so d(Σ_b loss_b)/d logps_b = −1; the metric carries no gradient."""
    logps = torch.tensor([-2.0, -7.5], dtype=torch.float64, requires_grad=True)
    out = sft_loss(SeqLogps(logps, torch.tensor([2, 5])), SFTParams())
    out.losses.sum().backward()
    assert logps.grad.tolist() == [-1.0, -1.0]
    assert not out.metrics["nll/token"].requires_grad


def test_sft_params_has_no_fields():
    assert dataclasses.fields(SFTParams()) == ()
