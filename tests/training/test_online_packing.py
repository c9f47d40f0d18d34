"""Packed rollouts: the completions of one prompt share one packed row (the prompt computed once),
and every method's loss, metrics and gradients come out as they do with one padded row per
completion."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from alignlab import train
from alignlab.losses.registry import get_loss
from alignlab.training.critic import attach_critic, token_values
from alignlab.training.forward.policy_gradient import PolicyGradientForward
from alignlab.training.rollout import RolloutExample, collate_rollout
from tests.data.test_pack import _model
from tests.training.helpers import max_abs_diff, weights
from tests.training.test_online import metrics, online

P1, P2 = (1, 5, 6, 7), (1, 8)


def example(prompt, completion, adv, finished=True) -> RolloutExample:
    n = len(completion)
    return RolloutExample(row=len(prompt), prompt_ids=prompt, completion_ids=completion, finished=finished,
                          reward=adv, advantages=(adv,) * n, sampler_logps=(-3.0,) * n,
                          old_logps=tuple(-3.0 - 0.1 * t for t in range(n)), ref_logps=(-2.9,) * n,
                          old_values=tuple(0.05 * t for t in range(n)), returns=tuple(adv - 0.1 * t for t in range(n)))


# two groups of a round, prompt-major: three completions of P1 (one truncated), two of P2
EXAMPLES = [example(P1, (10, 11, 2), 1.0), example(P1, (12,), -0.5), example(P1, (13, 14, 15, 16), 0.25, False),
            example(P2, (17, 2), 0.75), example(P2, (18, 19, 20, 2), -1.0)]


def test_a_group_is_one_prompt_followed_by_its_completions():
    batch = collate_rollout(EXAMPLES, pad_id=0, pack=True)
    pk = batch.packed
    assert batch.examples == EXAMPLES and batch.num_examples == 5
    # each prompt once: 4 + (3 + 1 + 4) and 2 + (2 + 4) real positions, instead of 5 padded rows
    assert int(batch.attention_mask_BT.sum()) == 12 + 8
    assert sorted(map(tuple, (r[r > 0].tolist() for r in batch.input_ids_BT))) == sorted(
        [P1 + (10, 11, 2, 12, 13, 14, 15, 16), P2 + (17, 2, 18, 19, 20, 2)])
    # responses in the examples' order, each predicted first from its prompt's last position
    assert pk.target_NL[:, 0].tolist() == [10, 12, 13, 17, 18]
    assert pk.mask_NL.sum(-1).tolist() == [3, 1, 4, 2, 4]
    padded = collate_rollout(EXAMPLES, pad_id=0)
    assert padded.packed is None and padded.input_ids_BT.shape[0] == 5


def test_only_consecutive_completions_of_a_prompt_share_a_row_and_empty_ones_pack():
    """A prompt that comes back later (P1, P2, P1) starts a group of its own; an empty completion
    keeps its place with no tokens; a batch of empty completions falls back to padded rows."""
    mixed = [example(P1, (10,), 1.0), example(P2, (11, 2), 1.0), example(P1, (), 1.0), example(P1, (12,), 1.0)]
    batch = collate_rollout(mixed, pad_id=0, pack=True)
    assert int(batch.attention_mask_BT.sum()) == (4 + 1) + (2 + 2) + (4 + 0 + 1)
    assert batch.packed.mask_NL.sum(-1).tolist() == [1, 2, 0, 1]
    assert collate_rollout([example(P1, (), 1.0)] * 2, pad_id=0, pack=True).packed is None


@pytest.mark.parametrize("method,critic", [("grpo", None), ("gspo", None), ("ppo", "shared"),
                                           ("ppo", "separate")])
def test_the_packed_loss_and_gradients_equal_the_padded_ones(tmp_path, method, critic):
    """fp64: the per-example losses, the metrics and the critic's values agree to 1e-10; the
    gradients of every weight (the critic's too) to 1e-6 of the largest gradient (they differ by
    5e-8 to 1e-7 of it): Llama's
    RMSNorm computes in fp32 even in an fp64 model, so adding the completions' contributions to
    their shared prompt once, instead of in a row each, differs by fp32 rounding (as offline
    packing does, ``tests/data/test_pack.py``)."""
    model = _model()
    spec = get_loss(method)
    params = spec.params()
    if critic is not None:
        model.config.save_pretrained(tmp_path)  # a 'separate' critic starts from the policy's network
        model.save_pretrained(tmp_path)
        params = dataclasses.replace(params, critic=critic)
        attach_critic(model, critic, str(tmp_path), dtype="fp64")
        with torch.no_grad():  # a head that is not zero, so the values differ from row to row
            model.value_model.head.weight.normal_(0, 0.5)
    forward = PolicyGradientForward(spec, params, max_new_tokens=6)
    outs, grads = [], []
    for pack in (False, True):
        batch = collate_rollout(EXAMPLES, pad_id=0, pack=pack)
        out = forward(model, batch)
        outs.append(out)
        grads.append(torch.autograd.grad(out.losses.sum(), [p for p in model.parameters() if p.requires_grad]))
        if critic is not None:
            with torch.no_grad():
                outs[-1].metrics["_values"] = token_values(model, batch)
    padded, packed = outs
    assert torch.allclose(padded.losses, packed.losses, rtol=0, atol=1e-10)
    assert padded.metrics.keys() == packed.metrics.keys()
    for k in padded.metrics:
        assert torch.allclose(torch.as_tensor(padded.metrics[k]).double(), torch.as_tensor(packed.metrics[k]).double(),
                              rtol=0, atol=1e-10), k
    if critic is not None:
        assert float(outs[0].metrics["_values"].abs().max()) > 0.1
    scale = max(float(g.abs().max()) for g in grads[0])
    assert max(float((a - b).abs().max()) for a, b in zip(*grads, strict=True)) < 1e-6 * scale


def test_a_packed_run_matches_a_padded_one(tmp_path, tiny_model_dir):
    """Two GRPO steps (8 completions, 2 prompts × 4): packed and padded micro-batches give the
    same logged losses and rewards and weights that agree to fp32 rounding (see above); the
    packed run computes the prompts once per group."""
    runs = {}
    for pack in (False, True):
        out = tmp_path / f"pack-{pack}"
        runs[pack] = (train(online(tiny_model_dir, out, packing=pack, lr=1e-3)), out)
    (a, out_a), (b, out_b) = runs[False], runs[True]
    assert max_abs_diff(weights(a.model_dir), weights(b.model_dir)) < 1e-6
    rows_a = [m for m in metrics(out_a) if "loss" in m]
    rows_b = [m for m in metrics(out_b) if "loss" in m]
    for x, y in zip(rows_a, rows_b, strict=True):
        assert x["reward"] == y["reward"] and x["loss"] == pytest.approx(y["loss"], abs=1e-7)
