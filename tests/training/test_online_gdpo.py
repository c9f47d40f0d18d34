"""GDPO (``multi_objective_aggregation: normalize_then_sum``, TRL 1.16's name): each reward term
normalised within its group, the weighted sum divided by its batch std (``gdpo_advantages``)."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab import train
from alignlab.losses.advantages import gdpo_advantages, group_advantages
from alignlab.losses.params import ParamError
from alignlab.losses.registry import get_loss
from alignlab.training.forward.policy_gradient import PolicyGradientForward
from tests.training.helpers import max_abs_diff, weights
from tests.training.test_online import online

DIGITS, LETTERS = "fn:tests.training.online_rewards:digits", "fn:tests.training.online_rewards:letters"


def _std(xs: list[float]) -> float:
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def test_gdpo_by_hand():
    """Two prompts × 3 samples, two terms with weights 1 and 0.5 (ε = 1e-4 added to each std):
    prompt 1: term 1 = (1, 0, 0): mean 1/3, centred (2/3, −1/3, −1/3), unbiased std √(1/3);
              term 2 = (0, 10, 20): centred (−10, 0, 10), std 10;
    prompt 2: both terms tie (1, 1, 1) and (5, 5, 5): 0 each.
    s = Â₁ + 0.5·Â₂, then A = s / (unbiased std of the 6 values of s + ε). Prompt 2 stays exactly 0.
    Summing first (GRPO) would let term 2's spread of 10 drown term 1's: its reward 1, 5, 10 ranks
    sample 1 last, where GDPO ranks it first (its Â₁ = 1.155 outweighs 0.5·Â₂ = −0.5)."""
    comps = torch.tensor([[[1.0, 0.0], [0.0, 10.0], [0.0, 20.0]], [[1.0, 5.0], [1.0, 5.0], [1.0, 5.0]]],
                         dtype=torch.float64)
    a1 = [c / (math.sqrt(1 / 3) + 1e-4) for c in (2 / 3, -1 / 3, -1 / 3)]
    a2 = [c / (10 + 1e-4) for c in (-10.0, 0.0, 10.0)]
    s = [x + 0.5 * y for x, y in zip(a1, a2, strict=True)] + [0.0, 0.0, 0.0]
    want = [x / (_std(s) + 1e-4) for x in s]
    got = gdpo_advantages(comps, [1.0, 0.5])
    assert got.reshape(-1).tolist() == pytest.approx(want, abs=1e-14, rel=0)
    assert got[1].tolist() == [0.0, 0.0, 0.0]
    assert int(got[0].argmax()) == 0
    grpo = group_advantages(comps[..., 0] + 0.5 * comps[..., 1])
    assert int(grpo[0].argmax()) == 2 and float(grpo[0, 0]) < 0


def test_one_term_is_grpos_advantage_over_its_batch_std():
    """With one term of weight w, s = w·Â (GRPO's advantage) and A = w·Â / (|w|·std(Â) + ε)."""
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(4, 5, dtype=torch.float64, generator=gen)
    grpo = group_advantages(r)
    std = grpo.reshape(-1).std()
    for w in (1.0, 2.0, -0.5):
        want = w * grpo / (abs(w) * std + 1e-4)
        assert torch.allclose(gdpo_advantages(r[..., None], [w]), want, atol=1e-14, rtol=0)


def test_bad_settings_are_refused():
    spec = get_loss("grpo")
    with pytest.raises(ParamError, match="multi_objective_aggregation"):
        spec.params(multi_objective_aggregation="sum")
    with pytest.raises(ParamError, match="scale_rewards"):
        spec.params(multi_objective_aggregation="normalize_then_sum", scale_rewards="none")
    with pytest.raises(ValueError, match="2 weights for 3"):
        gdpo_advantages(torch.zeros(1, 2, 3), [1.0, 1.0])


def test_a_run_trains_on_gdpo_advantages_however_the_step_is_split(tmp_path, tiny_model_dir, monkeypatch):
    """Two terms (digits, letters; weights 1 and 0.5), 2 prompts × 4 samples a round, 3 rounds:
    every completion trained on carries the advantage ``gdpo_advantages`` gives its round's terms
    (recomputed here from the examples' own logged term values), which differ from GRPO's on the
    weighted sum; 8 × 1 and 2 × 4 end at the same weights (fp64, padded rows)."""
    seen: list = []
    real = PolicyGradientForward.__call__

    def keep(self, model, batch):
        seen.append(list(batch.examples) + list(batch.idle))
        return real(self, model, batch)

    kw = dict(reward=[DIGITS, LETTERS], reward_weights=[1.0, 0.5], multi_objective_aggregation="normalize_then_sum",
              max_steps=3, packing=False, skip_zero_advantage=False)
    with monkeypatch.context() as m:
        m.setattr(PolicyGradientForward, "__call__", keep)
        a = train(online(tiny_model_dir, tmp_path / "a", **kw))
    assert len(seen) == 3
    differ = 0.0
    for examples in seen:
        comps = torch.tensor([[e.components[DIGITS], e.components[LETTERS]] for e in examples],
                             dtype=torch.float64).view(2, 4, 2)
        want = gdpo_advantages(comps, [1.0, 0.5]).reshape(-1)
        got = torch.tensor([e.advantages[0] for e in examples], dtype=torch.float64)
        assert torch.allclose(got, want, atol=1e-12, rtol=0)
        rewards = comps[..., 0] + 0.5 * comps[..., 1]
        assert torch.allclose(torch.tensor([e.reward for e in examples], dtype=torch.float64), rewards.reshape(-1))
        differ = max(differ, float((want - group_advantages(rewards).reshape(-1)).abs().max()))
    assert differ > 0.1
    b = train(online(tiny_model_dir, tmp_path / "b", batch_size=2, grad_accum=4, **kw))
    assert max_abs_diff(weights(a.model_dir), weights(b.model_dir)) < 1e-9
    assert max_abs_diff(weights(a.model_dir), weights(tiny_model_dir)) > 1e-4


def test_dynamic_sampling_keeps_the_groups_where_a_term_differs(tmp_path, tiny_model_dir, monkeypatch):
    """With dynamic sampling every group trained on has a term that differs within it (so a
    non-zero GDPO advantage), and its advantages are GDPO's of the round's groups."""
    seen: list = []
    real = PolicyGradientForward.__call__

    def keep(self, model, batch):
        seen.append(list(batch.examples) + list(batch.idle))
        return real(self, model, batch)

    with monkeypatch.context() as m:
        m.setattr(PolicyGradientForward, "__call__", keep)
        train(online(tiny_model_dir, tmp_path / "a", reward=[DIGITS, LETTERS], reward_weights=[1.0, 0.5],
                     multi_objective_aggregation="normalize_then_sum", dynamic_sampling=True, max_steps=2,
                     packing=False, skip_zero_advantage=False))
    for examples in seen:
        comps = torch.tensor([[e.components[DIGITS], e.components[LETTERS]] for e in examples],
                             dtype=torch.float64).view(2, 4, 2)
        assert all(bool((g != g[0]).any()) for g in comps)  # some term differs in every group
        got = torch.tensor([e.advantages[0] for e in examples], dtype=torch.float64)
        assert torch.allclose(got, gdpo_advantages(comps, [1.0, 0.5]).reshape(-1), atol=1e-12, rtol=0)
