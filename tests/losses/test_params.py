"""The shared hyperparameter checks (alignlab/losses/params.py) and the smoothed logistic
(alignlab/losses/logistic.py): exact messages, edges, and values derived by hand.

softplus(x) = log(1 + e^x), so −log σ(z) = softplus(−z):
softplus(−0.2) = 0.598138869382, softplus(0.2) = 0.798138869382, log 2 = 0.693147180560.
"""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.losses.logistic import smoothed_logistic
from alignlab.losses.params import (
    ParamError,
    require_below_half,
    require_beta,
    require_bool,
    require_fraction,
    require_non_negative,
    require_positive,
)


@pytest.mark.parametrize("check,name,good,bad,message", [
    (require_positive, "tau", [1e-12, 0.5, 3.0], [0.0, -1.0, math.inf, math.nan], "tau: must be a finite number > 0, got "),
    (require_non_negative, "eta", [0.0, 2.0], [-1e-9, math.inf, math.nan], "eta: must be a finite number >= 0, got "),
    (require_below_half, "label_smoothing", [0.0, 0.1, 0.4999], [0.5, -0.1, math.nan],
     "label_smoothing: must be in [0, 0.5), got "),
    (require_fraction, "alpha", [0.0, 0.5, 1.0], [1.0001, -0.1, math.nan], "alpha: must be between 0 and 1, got "),
])
def test_range_checks(check, name, good, bad, message):
    for value in good:
        check(value, name)
    for value in bad:
        with pytest.raises(ParamError) as err:
            check(value, name)
        assert str(err.value) == f"{message}{value}"


def test_beta_check_names_beta():
    require_beta(0.1)
    for value in (0.0, -0.1, math.inf, math.nan):
        with pytest.raises(ParamError) as err:
            require_beta(value)
        assert str(err.value) == f"beta: must be a finite number > 0, got {value}"


def test_bool_check():
    require_bool(True, "udm")
    require_bool(False, "udm")
    for value in (1, 0, "true", None):
        with pytest.raises(ParamError) as err:
            require_bool(value, "udm")
        assert str(err.value) == f"udm: must be true or false, got {value!r}"


def test_smoothed_logistic_by_hand():
    """ε = 0: −log σ(z): z = 0.2 → softplus(−0.2) = 0.598138869382; z = 0 → log 2.
    ε = 0.2, z = 0.2: 0.8·softplus(−0.2) + 0.2·softplus(0.2) = 0.478511095505 + 0.159627773876
    = 0.638138869382. ε = 0.2, z = −0.2 (the flipped label): 0.8·softplus(0.2) + 0.2·softplus(−0.2)
    = 0.638511095505 + 0.119627773876 = 0.758138869382."""
    z = torch.tensor([0.2, 0.0, -0.2], dtype=torch.float64)
    torch.testing.assert_close(smoothed_logistic(z, 0.0),
                               torch.tensor([0.598138869382, 0.693147180560, 0.798138869382], dtype=torch.float64),
                               atol=1e-12, rtol=0)
    torch.testing.assert_close(smoothed_logistic(z, 0.2),
                               torch.tensor([0.638138869382, 0.693147180560, 0.758138869382], dtype=torch.float64),
                               atol=1e-12, rtol=0)
