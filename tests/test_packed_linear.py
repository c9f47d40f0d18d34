"""``packed_linear.Linear``: a float32 product with a fixed weight through oneDNN's packed layout, the
same product as ``F.linear`` up to float32 rounding, and ``F.linear`` itself where it does not pack."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from alignlab import packed_linear
from alignlab.packed_linear import MIN_WEIGHTS, Linear

ONEDNN = packed_linear._onednn()


def _float32_bound(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per output, 1e-5 times the sum of the absolute products |xᵢ wᵢ| (plus the bias): a float32
    sum of 256-384 terms in any order is off by about √K · 2⁻²⁴ · Σ|xᵢ wᵢ| ≈ 1e-6 of it (5e-7 is
    what oneDNN and MKL are off here), a product in bfloat16 by about 1e-3 of it, a wrong one by
    far more."""
    return 1e-5 * (x.double().abs() @ weight.double().abs().t() + 1)


@pytest.mark.skipif(not ONEDNN, reason="torch built without oneDNN")
@pytest.mark.parametrize("rows", [1, 3, 16, 37])
@pytest.mark.parametrize("bias", [False, True])
def test_a_large_float32_weight_is_packed_and_gives_the_product_up_to_rounding(rows, bias):
    """The exact product is computed in float64 from the same float32 numbers; the packed
    product must be within the float32 rounding bound of it (and not equal F.linear bit for bit,
    which is allowed but not required)."""
    torch.manual_seed(rows)
    weight = torch.randn(512, 256)  # 131,072 weights: above the 65,536 threshold
    b = torch.randn(512) if bias else None
    x = torch.randn(rows, 256)
    lin = Linear(weight, b)
    assert lin.packed is not None
    got = lin(x)
    exact = x.double() @ weight.double().t() + (b.double() if bias else 0)
    assert got.dtype == torch.float32 and got.shape == (rows, 512)
    assert ((got.double() - exact).abs() <= _float32_bound(x, weight)).all()
    # the bound is not vacuous: the same product in bfloat16 breaks it
    rough = F.linear(x.bfloat16(), weight.bfloat16(), None if b is None else b.bfloat16()).double()
    assert not ((rough - exact).abs() <= _float32_bound(x, weight)).all()


@pytest.mark.skipif(not ONEDNN, reason="torch built without oneDNN")
def test_a_rows_result_does_not_depend_on_the_other_rows_of_the_call():
    """The native sampler's draws should not depend on how many sequences decode together: at two
    rows or more a row's product is the same whatever the others (a single row of more than 1,024
    inputs can take another kernel; ``packed_linear``'s docstring)."""
    torch.manual_seed(0)
    weight = torch.randn(1024, 384)
    lin = Linear(weight)
    x = torch.randn(40, 384)
    full = lin(x)
    for rows in (1, 3, 5, 16, 33):
        assert torch.equal(lin(x[:rows]), full[:rows])
    # a batch of sequences, as the decode pass's (B, heads·dim) input, and a 3D input
    assert torch.equal(lin(x.view(2, 20, 384))[1], full[20:])


@pytest.mark.parametrize("case", ["small", "float64", "bfloat16-input"])
def test_what_is_not_packed_is_f_linear_exactly(case):
    torch.manual_seed(1)
    if case == "small":  # one weight fewer than the threshold
        weight, x = torch.randn(MIN_WEIGHTS // 128 - 1, 128), torch.randn(4, 128)
    elif case == "float64":
        weight, x = torch.randn(512, 256, dtype=torch.float64), torch.randn(4, 256, dtype=torch.float64)
    else:
        weight, x = torch.randn(512, 256).bfloat16(), torch.randn(4, 256).bfloat16()
    lin = Linear(weight)
    assert lin.packed is None
    assert torch.equal(lin(x), F.linear(x, weight))


@pytest.mark.skipif(not ONEDNN, reason="torch built without oneDNN")
def test_the_weight_is_read_when_it_is_packed():
    """A generation call packs the policy's weights as they are then; the packed copy is the
    weight of that call (training moves the weight between calls, and a new call packs again)."""
    torch.manual_seed(2)
    weight, x = torch.randn(512, 256), torch.randn(4, 256)
    lin = Linear(weight)
    before = lin(x)
    weight.add_(1.0)
    assert torch.equal(lin(x), before)
    again = Linear(weight)(x)
    assert ((again.double() - x.double() @ weight.double().t()).abs() <= _float32_bound(x, weight)).all()


@pytest.mark.skipif(not ONEDNN, reason="torch built without oneDNN")
def test_under_cpu_autocast_the_product_is_f_linears_in_autocasts_dtype():
    """Under CPU autocast ``F.linear`` (the model's own layers) multiplies in bfloat16 and returns
    bfloat16; the packed op knows no autocast and returns float32, which the native sampler then
    writes into a key/value cache that the (autocast) prefill allocated in bfloat16. Under autocast
    the product must be ``F.linear``'s, bit for bit."""
    torch.manual_seed(3)
    weight, b, x = torch.randn(512, 256), torch.randn(512), torch.randn(4, 256)
    lin = Linear(weight, b)
    assert lin.packed is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = lin(x), F.linear(x, weight, b)
    assert want.dtype == torch.bfloat16
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)


@pytest.mark.skipif(not ONEDNN, reason="torch built without oneDNN")
@pytest.mark.parametrize("layout", ["strided", "expanded"])
def test_a_bias_that_is_not_contiguous_is_added_as_it_reads(layout):
    """oneDNN reads a bias as contiguous memory: a strided view (every other value of a longer
    vector) or an expanded one (one value, stride 0) must still add its own values, as in
    ``F.linear``; checked against the float64 product plus the bias."""
    torch.manual_seed(4)
    weight, x = torch.randn(512, 256), torch.randn(5, 256)
    b = torch.randn(1024)[::2] if layout == "strided" else torch.randn(1).expand(512)
    assert not b.is_contiguous()
    lin = Linear(weight, b)
    exact = x.double() @ weight.double().t() + b.double()
    assert ((lin(x).double() - exact).abs() <= _float32_bound(x, weight)).all()


@pytest.mark.skipif(not ONEDNN, reason="torch built without oneDNN")
def test_gradients_reach_an_input_and_a_bias_that_need_them():
    """The packed op has no autograd formula (torch only warns, and the gradient is lost): an input
    that needs its gradient while gradients are on, or a bias that needs it, takes ``F.linear``.
    For y = x Wᵀ + b and the loss Σ g·y: ∂/∂x = g W and ∂/∂b = Σ_rows g, computed in float64."""
    torch.manual_seed(5)
    weight, g = torch.randn(512, 256), torch.randn(3, 512)
    x = torch.randn(3, 256, requires_grad=True)
    b = torch.randn(512, requires_grad=True)
    (Linear(weight)(x) * g).sum().backward()
    assert x.grad is not None
    want = g.double() @ weight.double()
    assert ((x.grad.double() - want).abs() <= 1e-5 * (g.double().abs() @ weight.double().abs() + 1)).all()
    (Linear(weight, b)(x.detach()) * g).sum().backward()
    assert b.grad is not None and torch.allclose(b.grad.double(), g.double().sum(0), rtol=0, atol=1e-5)
