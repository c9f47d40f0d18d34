"""``top_entropy_quantile`` ρ (Wang et al. 2025, "Beyond the 80/20 Rule"; TRL 1.16's option): only
the tokens whose policy entropy is at least the step's (1 − ρ) quantile keep their policy term."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from alignlab import train
from alignlab.losses.registry import get_loss
from alignlab.training.distributed import Dist, StepReduce
from alignlab.training.forward.policy_gradient import PolicyGradientForward
from alignlab.training.rollout import collate_rollout
from tests.data.test_pack import _model
from tests.training.helpers import max_abs_diff, weights
from tests.training.test_online import metrics, online
from tests.training.test_online_entropy_bonus import EXAMPLES, _max_diff


def _entropies(model, e) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-softmax rows predicting each completion token, their entropies), from the model's
    full logits over prompt + completion alone."""
    logits = model(input_ids=torch.tensor([e.prompt_ids + e.completion_ids])).logits[0]
    logp = torch.log_softmax(logits[len(e.prompt_ids) - 1:-1], -1)
    return logp, -(logp.exp() * logp).sum(-1)


def _reference(model, cut: float) -> list[torch.Tensor]:
    """∇ of Σ over the 12 tokens with H_t ≥ cut of −A·log π(y_t), divided by all 12 tokens (the
    units do not change): on-policy GRPO ("token_mean") with the high-entropy mask."""
    model.zero_grad()
    total = 0
    for e in EXAMPLES:
        logp, ent = _entropies(model, e)
        picked = logp.gather(-1, torch.tensor(e.completion_ids)[:, None]).squeeze(-1)
        total = total - e.advantages[0] * (picked * (ent.detach() >= cut)).sum()
    (total / 12).backward()
    return [q.grad.clone() for q in model.parameters()]


def _step_grads(model, forward, parts) -> list[torch.Tensor]:
    model.zero_grad()
    forward.before_step(model, [[EXAMPLES[i] for i in p] for p in parts], StepReduce(Dist()))
    units = sum(forward.units(collate_rollout([EXAMPLES[i] for i in p], 0)) for p in parts)
    for p in parts:
        out = forward(model, collate_rollout([EXAMPLES[i] for i in p], 0))
        (out.losses.sum() / units).backward()
    return [q.grad.clone() for q in model.parameters()]


def test_the_mask_by_hand_and_for_any_split():
    """12 completion tokens, ρ = 0.25: their entropies sorted v_0 ≤ … ≤ v_11, the cut is the 0.75
    quantile, at position 0.75·11 = 8.25: τ = v_8 + 0.25·(v_9 − v_8); the tokens of v_9, v_10 and
    v_11 keep their policy term (3 of 12). The step's gradient equals ``_reference``'s at that cut,
    computed whole or split into micro-batches of 1, 1, 2 (one cut for the step), and differs from
    the gradient without the mask."""
    model = _model()
    with torch.no_grad():
        model.model.norm.weight.mul_(5.0)
    with torch.no_grad():
        values = sorted(float(v) for e in EXAMPLES for v in _entropies(model, e)[1])
    cut = values[8] + 0.25 * (values[9] - values[8])
    spec = get_loss("grpo")
    forward = PolicyGradientForward(spec, spec.params(top_entropy_quantile=0.25), max_new_tokens=6)
    want = _reference(model, cut)
    for parts in ([[0, 1, 2, 3]], [[0], [3], [1, 2]]):
        assert _max_diff(_step_grads(model, forward, parts), want) < 1e-12, parts
        assert forward._cut == pytest.approx(cut, abs=1e-12)
        assert sum(int(k.sum()) for k in forward._keep.values()) == 3
    assert _max_diff(want, _reference(model, -1.0)) > 1e-3
    out = forward(model, collate_rollout(EXAMPLES, 0))
    assert float(out.metrics["entropy/kept"].sum() / out.metrics["_count/entropy/kept"].sum()) == 0.25


def test_the_mask_is_trls_on_one_micro_batch():
    """TRL 1.16's own ``GRPOTrainer.get_high_entropy_mask`` (one process) on the same entropies
    keeps the same tokens, for several ρ."""
    trl = pytest.importorskip("trl")
    model = _model()
    with torch.no_grad():
        model.model.norm.weight.mul_(5.0)
        rows = [_entropies(model, e)[1].float() for e in EXAMPLES]
    width = max(len(r) for r in rows)
    ent = torch.zeros(len(rows), width)
    mask = torch.zeros(len(rows), width)
    for i, r in enumerate(rows):
        ent[i, :len(r)], mask[i, :len(r)] = r, 1
    fake = SimpleNamespace(accelerator=SimpleNamespace(pad_across_processes=lambda x, dim, pad_index: x,
                                                       gather=lambda x: x))
    spec = get_loss("grpo")
    for rho in (0.0, 0.2, 0.5, 0.9):
        theirs = trl.GRPOTrainer.get_high_entropy_mask(fake, ent, mask, 1 - rho)
        forward = PolicyGradientForward(spec, spec.params(top_entropy_quantile=rho), max_new_tokens=6)
        forward.before_step(model.float(), [EXAMPLES], StepReduce(Dist()))
        model.double()
        ours = torch.zeros_like(theirs)
        for i, e in enumerate(EXAMPLES):
            k = forward._keep[id(e)]
            ours[i, :len(k)] = k
        assert torch.equal(ours, theirs), rho


def test_a_run_keeps_the_high_entropy_tokens_however_the_step_is_split(tmp_path, tiny_model_dir):
    """fp64, 3 steps, ρ = 0.2: 8 × 1 = 2 × 4 = 1 × 8 (one cut per step: TRL's per micro-batch
    cut would differ), about a fifth of the tokens kept (at least ρ of them: the cut is an
    interpolated quantile), and a different run than without the mask."""
    kw = dict(top_entropy_quantile=0.2, max_steps=3, packing=False, skip_zero_advantage=False)
    a = train(online(tiny_model_dir, tmp_path / "a", **kw))
    for name, bs, ga in (("b", 2, 4), ("c", 1, 8)):
        other = train(online(tiny_model_dir, tmp_path / name, batch_size=bs, grad_accum=ga, **kw))
        assert max_abs_diff(weights(a.model_dir), weights(other.model_dir)) < 1e-9
    rows = [m for m in metrics(tmp_path / "a") if "loss" in m]
    assert all(0.2 <= m["entropy/kept"] <= 0.3 and m["entropy/cut"] > 0 for m in rows)
    plain = train(online(tiny_model_dir, tmp_path / "plain", max_steps=3, packing=False))
    assert max_abs_diff(weights(a.model_dir), weights(plain.model_dir)) > 1e-6


def test_zero_advantage_completions_still_count_in_the_cut(tmp_path, tiny_model_dir):
    """Left out of the passes (``skip_zero_advantage``, on by default), a completion with advantage
    0 still ranks in the step's cut: the run equals one computing every completion."""
    kw = dict(top_entropy_quantile=0.3, max_steps=3, packing=False, reward=["fn:tests.training.online_rewards:has_digit"])
    skipping = train(online(tiny_model_dir, tmp_path / "skip", **kw))
    assert any(m.get("skipped_zero_advantage", 0) > 0 for m in metrics(tmp_path / "skip") if "loss" in m)
    full = train(online(tiny_model_dir, tmp_path / "full", skip_zero_advantage=False, **kw))
    assert max_abs_diff(weights(skipping.model_dir), weights(full.model_dir)) < 1e-12


def test_a_quantile_outside_zero_to_one_is_refused():
    with pytest.raises(Exception, match="top_entropy_quantile"):
        get_loss("grpo").params(top_entropy_quantile=1.5)


def test_under_mask_truncated_the_kept_share_counts_the_ranked_tokens_only():
    """The 1-token completion cut at the limit (``finished`` False) with ``mask_truncated``: the cut
    ranks the other 11 tokens, and ``entropy/kept`` is a share of those 11 (its count, not 12)."""
    import dataclasses

    model = _model()
    examples = [dataclasses.replace(EXAMPLES[0], finished=False)] + EXAMPLES[1:]
    spec = get_loss("grpo")
    forward = PolicyGradientForward(spec, spec.params(top_entropy_quantile=0.5, mask_truncated=True),
                                    max_new_tokens=6)
    forward.before_step(model, [examples], StepReduce(Dist()))
    out = forward(model, collate_rollout(examples, 0))
    assert float(out.metrics["_count/entropy/kept"].sum()) == 11
    ranked = [bool(x) for e in examples[1:] for x in forward._keep[id(e)]]
    assert float(out.metrics["entropy/kept"].sum()) == sum(ranked) == 6  # 0.5 quantile of 11: 6 at or above
