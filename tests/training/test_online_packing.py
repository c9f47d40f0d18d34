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
from alignlab.training.rollout import PackingCost, RolloutExample, collate_rollout
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


def test_a_micro_batch_is_packed_only_where_that_costs_no_more_flops():
    """``PackingCost(per_position=10, per_pair=1)``: a batch of r rows of width w costs
    r·w·(10 + w) (every position, and every (query, key) pair of a row). P1 (4 tokens) with two
    completions of 3: packed, one row of 4 + 3 + 3 = 10, costs 10·20 = 200; padded, two rows of 7,
    2·7·17 = 238: packed. P2 (2 tokens) with three completions of 6: packed, one row of 20, costs
    20·30 = 600; padded, three rows of 8, 3·8·18 = 432: padded. ``pack=True`` packs both."""
    cost = PackingCost(per_position=10.0, per_pair=1.0)
    short = [example(P1, (10, 11, 12), 1.0), example(P1, (13, 14, 15), 1.0)]
    long = [example(P2, tuple(range(20, 26)), 1.0) for _ in range(3)]
    assert collate_rollout(short, pad_id=0, pack=cost).packed is not None
    padded = collate_rollout(long, pad_id=0, pack=cost)
    assert padded.packed is None and tuple(padded.input_ids_BT.shape) == (3, 8)
    assert collate_rollout(long, pad_id=0, pack=True).packed is not None


def test_the_packing_cost_of_a_llama_counts_its_layers_and_attention():
    """A Llama of hidden size 16, 2 layers, 4 query heads of 4 over 2 key/value heads, MLP 24, 50
    tokens: per layer q 16·16 + k 16·8 + v 16·8 + o 16·16 = 768, MLP 3·16·24 = 1,152, two norms
    32, so 1,952; two layers and the final norm (16) are 3,920 weights, 7,840 FLOPs per position
    (the embeddings and the output layer left out); per pair 4 · 4 heads · 4 · 2 layers = 128."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    assert PackingCost.of(LlamaForCausalLM(config)) == PackingCost(7840.0, 128.0)
    assert PackingCost.of(torch.nn.Linear(2, 2)) is None  # no config: every micro-batch packed


def test_a_run_packs_short_completions_and_pads_long_ones(tmp_path, tiny_model_dir, monkeypatch):
    """With packing on, each micro-batch takes the layout of fewer FLOPs for the policy. The test
    model (hidden 64, 2 layers, 4 heads of 16, MLP 128) costs 2·(2·(4·64² + 3·64·128 + 2·64) + 64)
    = 164,480 FLOPs per position and 4·4·16·2 = 512 per pair. A group of G prompts' completions
    packs when r·w·(164,480 + 512·w) (packed rows) is at most n·W·(164,480 + 512·W) (n padded rows
    of the longest prompt + completion W): computed here by hand from each collated micro-batch's
    lengths. Completions of at most 6 tokens come out packed; the random model's completions of
    up to 60 tokens (4 per prompt: 4·60 extra pairs per completion outweigh the 3 prompts saved)
    come out padded."""
    from alignlab.data.pack import fill_rows
    from alignlab.training import online as online_mod

    seen = []
    real = online_mod.collate_rollout

    def recording(examples, pad_id, pack=False):
        batch = real(examples, pad_id, pack)
        seen.append((batch.packed is not None, list(examples)))
        return batch

    monkeypatch.setattr(online_mod, "collate_rollout", recording)

    def cheaper_packed(examples) -> bool:
        per_position, per_pair = 2 * (2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64), 4 * 4 * 16 * 2
        groups: list[list] = []
        for e in examples:
            if groups and groups[-1][0].prompt_ids == e.prompt_ids:
                groups[-1].append(e)
            else:
                groups.append([e])
        lengths = [len(g[0].prompt_ids) + sum(len(e.completion_ids) for e in g) for g in groups]
        rows, w = len(fill_rows(lengths)), max(lengths)
        n, W = len(examples), max(len(e.prompt_ids) + len(e.completion_ids) for e in examples)
        return rows * w * (per_position + per_pair * w) <= n * W * (per_position + per_pair * W)

    layouts = {}
    for tokens in (6, 60):
        seen.clear()
        train(online(tiny_model_dir, tmp_path / f"t{tokens}", max_steps=1, max_new_tokens=tokens,
                     skip_zero_advantage=False))
        assert seen and all(packed == cheaper_packed(examples) for packed, examples in seen)
        layouts[tokens] = {packed for packed, _ in seen}
    assert layouts == {6: {True}, 60: {False}}
