"""A float32 product with a fixed weight, through oneDNN with the weight packed once.

Why by hand: a decode step multiplies a few rows (one per sequence) by every weight of the model.
torch runs a float32 ``F.linear`` on the CPU through MKL, whose kernels for so few rows are slow
on the 2-core AMD EPYC this was measured on: 16 rows times the 32,000 × 384 output layer took
7-9 ms, against 2.7 ms through oneDNN (also part of torch) from a weight reordered once into its
blocked layout, and every projection of at least 64K weights was faster that way (1.3-2.5× at 4
to 128 rows). torch exposes the two oneDNN operations (``mkldnn::_reorder_linear_weight`` and
``mkldnn::_linear_pointwise``, the ones its compiler emits for frozen CPU graphs) but uses them
for no eager call. Below 64K weights the MKL call is a few microseconds cheaper, so smaller
weights keep ``F.linear``; so do other dtypes (oneDNN has no float64), other devices, tensor
subclasses (a sharded DTensor), a weight, bias or input that needs its gradient (the packed op
has no autograd formula: torch would only warn, and the gradient would be lost), a torch built
without oneDNN, and a call under CPU autocast (``F.linear`` then multiplies in autocast's dtype,
as the model's own layers do; the packed op knows no autocast). Packing reads the weight as it
is, so a weight that training moves is packed again for each generation call (about 20 ms for
the 12M-weight output layer).

The product is the same up to float32 rounding (oneDNN sums in its own order). A row's result
does not depend on the other rows of a call of two rows or more; a call of one row can take
another kernel (on the CPU above, one of more than 1,024 inputs does, and its last bits differ),
so a lone sequence's decode step may round otherwise than the same sequence decoded with others.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MIN_WEIGHTS = 1 << 16


def _onednn() -> bool:
    mkldnn = torch.ops.mkldnn
    return torch.backends.mkldnn.is_available() and all(
        hasattr(mkldnn, op) for op in ("_reorder_linear_weight", "_linear_pointwise"))


class Linear:
    """``x @ weight.T + bias`` for a fixed ``weight`` (detached; read once, here)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, pack: bool = True):
        """``pack``: False keeps ``F.linear`` (the caller finds the packed copy too big to hold)."""
        self.weight, self.bias = weight, bias
        self.packed = None
        if pack and type(weight) is torch.Tensor and weight.dtype == torch.float32 and weight.device.type == "cpu" \
                and weight.numel() >= MIN_WEIGHTS and not weight.requires_grad \
                and (bias is None or (bias.dtype == torch.float32 and not bias.requires_grad)) and _onednn():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, 16)
            if bias is not None:  # oneDNN reads the bias as contiguous memory, whatever its strides
                self.bias = bias.contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu") \
                or (x.requires_grad and torch.is_grad_enabled()):  # the packed op has no autograd formula
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
