"""DRO's surrogate (verl's ``dro`` policy loss): −(A·ℓ − ½β(ℓ − ℓold)²) per token, no clip."""

from __future__ import annotations

import pytest
import torch

from alignlab.losses.params import ParamError
from alignlab.losses.policy_gradient import (
    PolicyGradientInputs,
    PolicyGradientParams,
    policy_gradient_loss,
    zero_advantage_is_free,
)

TOL = 1e-12


def test_dro_by_hand():
    """β = 0.5, ℓ = (−1, −2) against ℓold = (−1.5, −1), so ℓ − ℓold = (0.5, −1), and a padding
    token whose NaN must not leak. A = 2: −(2·(−1) − 0.25·0.25) = 2.0625 and −(2·(−2) − 0.25·1) =
    4.25, 6.3125 in all; gradient −A + β(ℓ − ℓold) = (−2 + 0.25, −2 − 0.5) = (−1.75, −2.5). A = 0:
    only the penalty, 0.25·(0.25 + 1) = 0.3125, gradient β(ℓ − ℓold) = (0.25, −0.5): a completion
    without advantage still moves once the policy has moved (μ > 1), so it cannot be left out."""
    logps = torch.tensor([[-1.0, -2.0, float("nan")]] * 2, dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.5, -1.0, 0.0]] * 2, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0]] * 2)
    params = PolicyGradientParams(surrogate="dro", dro_beta=0.5)
    out = policy_gradient_loss(PolicyGradientInputs(logps, mask, torch.tensor([2.0, 0.0], dtype=torch.float64),
                                                    old_logps=old), params)
    assert out.losses.tolist() == pytest.approx([6.3125, 0.3125], abs=TOL)
    out.losses.sum().backward()
    assert torch.allclose(logps.grad, torch.tensor([[-1.75, -2.5, 0.0], [0.25, -0.5, 0.0]], dtype=torch.float64),
                          rtol=0, atol=TOL)
    assert not zero_advantage_is_free(params) and zero_advantage_is_free(PolicyGradientParams(surrogate="pg"))


def test_dro_on_policy_is_the_policy_gradient():
    """ℓold = ℓ (one update per round): the penalty and its gradient are 0, the loss is −A·Σℓ."""
    logps = torch.tensor([[-0.3, -1.2]], dtype=torch.float64, requires_grad=True)
    out = policy_gradient_loss(PolicyGradientInputs(logps, torch.ones(1, 2), torch.tensor([-1.5], dtype=torch.float64)),
                               PolicyGradientParams(surrogate="dro", dro_beta=3.0))
    assert out.losses.tolist() == pytest.approx([-1.5 * 1.5], abs=TOL)
    out.losses.sum().backward()
    assert logps.grad.tolist() == [[1.5, 1.5]]


@pytest.mark.parametrize("kwargs,message", [
    ({"surrogate": "dro"}, "dro_beta: surrogate 'dro' needs its penalty's β, e.g. dro_beta 0.1 (verl gives no default)"),
    ({"surrogate": "dro", "dro_beta": 0.0}, "dro_beta: must be a finite number > 0, got 0.0"),
    ({"dro_beta": 0.1}, "dro_beta: is the penalty of surrogate 'dro'; surrogate 'clip' has none"),
    ({"surrogate": "dro", "dro_beta": 0.1, "ratio_level": "sequence"},
     "ratio_level: must be 'token' with surrogate 'dro', whose penalty is on each token's log-ratio"),
])
def test_dro_settings_that_cannot_work_are_refused(kwargs, message):
    with pytest.raises(ParamError) as e:
        PolicyGradientParams(**kwargs)
    assert str(e.value) == message


def test_an_online_run_with_dro_computes_every_completion(tmp_path, tiny_model_dir):
    """grpo with surrogate dro trains (μ = 2, so the penalty acts on the second update) and leaves
    no completion out, though skip_zero_advantage is on: a zero advantage does not zero its loss.
    Without dro_beta the config is refused before anything loads."""
    from alignlab import train
    from alignlab.errors import ConfigError

    cfg = {"method": "grpo", "model": str(tiny_model_dir), "data": "task:arithmetic", "output_dir": str(tmp_path / "r"),
           "reward": ["task:arithmetic"], "num_generations": 4, "batch_size": 8, "max_new_tokens": 3, "max_steps": 2,
           "updates_per_rollout": 2, "progress": False, "dtype": "fp64", "surrogate": "dro", "dro_beta": 0.1}
    summary = train(cfg)
    assert summary.steps == 2 and torch.isfinite(torch.tensor(summary.train_metrics["loss"]))
    assert "skipped_zero_advantage" not in summary.train_metrics
    with pytest.raises(ConfigError, match=r"dro_beta: surrogate 'dro' needs its penalty's β"):
        train({**cfg, "dro_beta": None, "output_dir": str(tmp_path / "s")})
