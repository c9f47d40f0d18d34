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


def test_adamw_is_fused_on_plain_tensors_and_steps_as_by_hand():
    """One AdamW step from zero moments, by hand: m = (1−β1)·g, v = (1−β2)·g², and with bias
    correction m̂ = g, v̂ = g², so θ ← θ·(1 − lr·wd) − lr·g/(|g| + ε), about θ − lr·sign(g) for
    |g| ≫ ε. Matrices decay, vectors do not. The fused kernel is chosen for plain tensors, and the
    multi-tensor one gives the same numbers to rounding."""
    import torch

    from alignlab.training.optim import make_optimizer

    def run(fused):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2).double()
        before = [p.detach().clone() for p in model.parameters()]
        grads = [torch.tensor([[1.0, -2.0, 0.5], [3.0, -0.25, 4.0]], dtype=torch.float64),
                 torch.tensor([-1.0, 2.0], dtype=torch.float64)]
        opt = make_optimizer(model, lr=0.1, weight_decay=0.5, betas=(0.9, 0.999), eps=1e-8, fused=fused)
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = g
        opt.step()
        return opt, before, grads, [p.detach() for p in model.parameters()]

    opt, before, grads, after = run(None)
    assert all(group.get("fused") for group in opt.param_groups)
    (w0, b0), (gw, gb), (w1, b1) = before, grads, after
    assert torch.allclose(w1, w0 * (1 - 0.1 * 0.5) - 0.1 * gw / (gw.abs() + 1e-8), atol=1e-15, rtol=0)
    assert torch.allclose(b1, b0 - 0.1 * gb / (gb.abs() + 1e-8), atol=1e-15, rtol=0)
    other, _, _, after_foreach = run(False)
    assert not any(group.get("fused") for group in other.param_groups)
    assert all(torch.allclose(a, b, atol=1e-15, rtol=0) for a, b in zip(after, after_foreach, strict=True))
