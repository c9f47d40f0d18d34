"""The entropy bonus (``entropy_coef`` η): the loss subtracts η × each completion token's policy
entropy H_t = −Σ_v π(v) log π(v), aggregated as the policy term (verl's ``entropy_coeff``), and its
gradient flows through every logit of the position."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from alignlab import logprobs, train
from alignlab.losses.policy_gradient import (
    PolicyGradientInputs,
    PolicyGradientParams,
    policy_gradient_loss,
    zero_advantage_is_free,
)
from alignlab.losses.registry import get_loss
from alignlab.training.forward.policy_gradient import PolicyGradientForward
from alignlab.training.rollout import RolloutExample, collate_rollout
from tests.data.test_pack import _model
from tests.training.helpers import crash_after_save, max_abs_diff, weights
from tests.training.test_online import metrics, online


def test_the_bonus_by_hand():
    """One completion of 2 tokens, on-policy (c = 1), A = 0.5, entropies H = (0.3, 0.7), η = 0.1.
    Per token: −min(1·0.5, clip(1)·0.5) − η·H_t = −0.5 − 0.03 and −0.5 − 0.07; "token_mean" sums
    them: −1.1, and "seq_mean_token_mean" halves it: −0.55. ∂ℓ/∂H_t = −η = −0.1 (token sum), −0.05
    (token mean). A padded third position (H = 9) adds nothing."""
    for aggregation, want, dh in (("token_mean", -1.1, -0.1), ("seq_mean_token_mean", -0.55, -0.05)):
        ent = torch.tensor([[0.3, 0.7, 9.0]], dtype=torch.float64, requires_grad=True)
        inputs = PolicyGradientInputs(logps=torch.tensor([[-1.0, -2.0, 0.0]], dtype=torch.float64, requires_grad=True),
                                      mask=torch.tensor([[1, 1, 0]]), advantages=torch.tensor([0.5], dtype=torch.float64),
                                      entropy=ent)
        out = policy_gradient_loss(inputs, PolicyGradientParams(entropy_coef=0.1, aggregation=aggregation))
        assert float(out.losses[0].detach()) == pytest.approx(want, abs=1e-15)
        (grad,) = torch.autograd.grad(out.losses.sum(), ent)
        assert grad[0].tolist() == pytest.approx([dh, dh, 0.0], abs=1e-15)


def test_a_bonus_without_entropies_or_their_gradient_is_refused():
    logps = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    kw = dict(logps=logps, mask=torch.ones(1, 2), advantages=torch.ones(1, dtype=torch.float64))
    params = PolicyGradientParams(entropy_coef=0.01)
    for entropy in (None, torch.ones(1, 2, dtype=torch.float64)):
        with pytest.raises(ValueError, match="entropy_coef"):
            policy_gradient_loss(PolicyGradientInputs(**kw, entropy=entropy), params)
    with pytest.raises(Exception, match="entropy_coef"):
        PolicyGradientParams(entropy_coef=float("nan"))


def test_a_zero_advantage_is_not_free_with_a_bonus():
    """The bonus does not carry the advantage: a completion with A = 0 still has a gradient."""
    assert zero_advantage_is_free(PolicyGradientParams())
    assert not zero_advantage_is_free(PolicyGradientParams(entropy_coef=0.01))


@pytest.mark.parametrize("keep", [True, False])
def test_the_output_layers_entropy_gradient_is_autograds(monkeypatch, keep):
    """``target_logps_and_entropy(grad=True)``: for g·log p_y + e·H summed over 11 positions (a
    vocabulary of 9, one logit about −1000: a probability that is 0 in float64), the gradients with respect to the hidden
    states and the output layer equal autograd through log_softmax(h @ W.T) in float64, with the
    softmax kept for the backward pass or recomputed chunk by chunk (3 rows each); and with the
    entropy alone in the loss (no gradient reaches the log-probs)."""
    monkeypatch.setattr(logprobs, "CHUNK_VALUES", 3 * 9)
    monkeypatch.setattr(logprobs, "KEEP_VALUES", 11 * 9 if keep else 0)
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(11, 4, dtype=torch.float64, generator=gen)
    w = torch.randn(9, 4, dtype=torch.float64, generator=gen)
    h[:, 0], w[5] = 1.0, torch.tensor([-1000.0, 0.0, 0.0, 0.0])  # exp(logit 5 − max) underflows to 0
    h.requires_grad_(), w.requires_grad_()
    t = torch.randint(0, 5, (11,), generator=gen)
    g, e = torch.randn(11, dtype=torch.float64, generator=gen), torch.randn(11, dtype=torch.float64, generator=gen)

    def reference(with_logps: bool):
        logp = torch.log_softmax(h @ w.T, -1)
        ent = -(logp.exp() * logp).sum(-1)
        picked = logp.gather(-1, t[:, None]).squeeze(-1)
        return torch.autograd.grad((picked * g).sum() * with_logps + (ent * e).sum(), [h, w]), ent

    for with_logps in (True, False):
        (ref_h, ref_w), ref_ent = reference(with_logps)
        got, ent = logprobs.target_logps_and_entropy(h, w, t, grad=True)
        assert ent.requires_grad and torch.allclose(ent, ref_ent, atol=1e-14, rtol=0)
        loss = (ent * e).sum() + ((got * g).sum() if with_logps else 0)
        got_h, got_w = torch.autograd.grad(loss, [h, w])
        assert torch.isfinite(got_w).all()
        assert torch.allclose(got_h, ref_h, atol=1e-13, rtol=0) and torch.allclose(got_w, ref_w, atol=1e-13, rtol=0)
    _, ent = logprobs.target_logps_and_entropy(h, w, t)
    assert not ent.requires_grad  # without ``grad`` the entropy stays a logged value


def _example(row: int, prompt: tuple[int, ...], completion: tuple[int, ...]) -> RolloutExample:
    n = len(completion)
    return RolloutExample(row=row, prompt_ids=prompt, completion_ids=completion, finished=True, reward=float(row),
                          advantages=(0.5 - row % 2,) * n, sampler_logps=(-1.0,) * n)


EXAMPLES = [_example(1, (1, 5, 6), (10,)), _example(2, (1, 8), (14, 15, 16, 17, 18, 2)),
            _example(3, (1, 8), (20, 21)), _example(4, (1,), (30, 31, 32))]


def _grads(model, forward, parts, pack) -> list[torch.Tensor]:
    model.zero_grad()
    units = sum(forward.units(collate_rollout([EXAMPLES[i] for i in p], 0, pack)) for p in parts)
    for p in parts:
        out = forward(model, collate_rollout([EXAMPLES[i] for i in p], 0, pack))
        (out.losses.sum() / units).backward()
    return [q.grad.clone() for q in model.parameters()]


def _reference(model, eta: float) -> list[torch.Tensor]:
    """∇ of (Σ_t −A·log π(y_t) − η·Σ_t H_t) / 12 over the 12 completion tokens, each prompt +
    completion run alone through the model, H_t = −Σ softmax · log_softmax of its full logits at
    the position that predicts y_t: on-policy GRPO's loss ("token_mean": every ratio is 1 and
    unclipped, so each token's surrogate has the gradient −A·∇log π) with the bonus."""
    model.zero_grad()
    total = 0
    for e in EXAMPLES:
        logits = model(input_ids=torch.tensor([e.prompt_ids + e.completion_ids])).logits[0]
        logp = torch.log_softmax(logits[len(e.prompt_ids) - 1:-1], -1)
        picked = logp.gather(-1, torch.tensor(e.completion_ids)[:, None]).sum()
        total = total - e.advantages[0] * picked + eta * (logp.exp() * logp).sum()
    (total / 12).backward()
    return [q.grad.clone() for q in model.parameters()]


def _max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def _check_against_reference(model, splits, packs) -> None:
    spec = get_loss("grpo")
    plain = PolicyGradientForward(spec, spec.params(), max_new_tokens=6)
    bonus = PolicyGradientForward(spec, spec.params(entropy_coef=0.3), max_new_tokens=6)
    want, want_plain = _reference(model, 0.3), _reference(model, 0.0)
    assert _max_diff(want, want_plain) > 1e-3  # the bonus moves the gradient
    for pack in packs:
        for parts in splits:
            # packed rows hold a group's prompt once: their sums differ from one row per sequence by
            # the float32 rounding of the model's norms (which normalise in float32 in a float64 model)
            tol = 1e-6 if pack else 1e-12
            assert _max_diff(_grads(model, bonus, parts, pack), want) < tol, (pack, parts)
            assert _max_diff(_grads(model, plain, parts, pack), want_plain) < tol, (pack, parts)


def test_the_step_gradient_is_the_bonus_objectives():
    """A Llama (head served by ``logprobs``) in float64, 4 completions of 1, 6, 2 and 3 tokens (12
    tokens; two share a prompt, so a packed row holds a group): the step's gradient with η = 0.3
    equals ∇ of the loss written out above (``_reference``), and with η = 0 the one without the
    bonus, for the whole step at once and split into micro-batches of 1, 1, 2, padded or packed."""
    model = _model()
    with torch.no_grad():
        model.model.norm.weight.mul_(5.0)  # entropies well below log V, with gradients well above 0
    _check_against_reference(model, ([[0, 1, 2, 3]], [[0], [3], [1, 2]]), (False, True))


def test_a_model_without_a_served_head_gets_the_same_gradient():
    """GPT-2 (its logits come from the model, not ``logprobs``' output layer: the entropy through
    ``token_entropy(grad=True)``): the same check, padded rows."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=32, n_embd=16, n_layer=1, n_head=2)).double().eval()
    assert logprobs.head_of(model) is None
    _check_against_reference(model, ([[0, 1, 2, 3]], [[0], [3], [1, 2]]), (False,))


def _fixed_entropy(model_dir) -> float:
    """The saved model's mean next-token entropy over 4 fixed rows of 10 tokens (not the run's own
    samples, which differ between runs)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float64).eval()
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.arange(1, 41).view(4, 10)).logits, -1)
    return float(-(logp.exp() * logp).sum(-1).mean())


def test_an_online_run_with_a_bonus_is_split_invariant_and_moves_the_entropy_its_way(tmp_path, tiny_model_dir):
    """fp64, 3 steps of GRPO: with η = 0.5 the run ends at the same weights as 8 × 1, 2 × 4 and 1 × 8
    (1e-9; padded rows, as ``test_online``'s split check) and computes every completion (none left
    out for a zero advantage, though ``skip_zero_advantage`` is on: the bonus has no such zeros). Against the same run with η = 0 (its first step logs the same
    entropy), the saved model's entropy on fixed rows is higher with η = 0.5 and far lower with
    η = −0.5 (entropy minimisation). The random test model starts near the uniform distribution
    (5.56 nats of log 263 = 5.57), where the entropy's gradient is small, so the bonus only slows
    the fall the reward causes (measured: 5.5410 against 5.5390), while the penalty speeds it (5.194)."""
    runs = {}
    for name, kw in (("8x1", {"batch_size": 8, "grad_accum": 1}), ("2x4", {"batch_size": 2, "grad_accum": 4}),
                     ("1x8", {"batch_size": 1, "grad_accum": 8}),
                     # without the bonus completions with advantage 0 would be left out, and its
                     # logged entropy would be over fewer tokens than the bonus run's
                     ("plain", {"entropy_coef": 0.0, "skip_zero_advantage": False}),
                     ("minus", {"entropy_coef": -0.5})):
        cfg = online(tiny_model_dir, tmp_path / name, max_steps=3, lr=3e-2, packing=False)
        runs[name] = train({**cfg, "entropy_coef": 0.5, **kw})
    base = weights(runs["8x1"].model_dir)
    for name in ("2x4", "1x8"):
        assert max_abs_diff(weights(runs[name].model_dir), base) < 1e-9
    rows = [m for m in metrics(tmp_path / "8x1") if "loss" in m]
    plain_rows = [m for m in metrics(tmp_path / "plain") if "loss" in m]
    assert all("skipped_zero_advantage" not in r for r in rows)
    assert rows[0]["entropy"] == pytest.approx(plain_rows[0]["entropy"], abs=1e-12)  # the same first step
    bonus, plain, minus = (_fixed_entropy(runs[n].model_dir) for n in ("8x1", "plain", "minus"))
    assert bonus > plain + 1e-3 and minus < plain - 0.1


# ------------------------------------------------------------------------ adaptive entropy control


def _adaptive(**kw) -> PolicyGradientForward:
    spec = get_loss("grpo")
    return PolicyGradientForward(spec, spec.params(adaptive_entropy=True, **kw), max_new_tokens=6)


def test_the_controller_by_hand():
    """Start 0.01, target 0.5, δ 0.005, bounds [0, 0.012]. Before any step nothing is measured:
    coefficient applied 0. Step entropies (sum / tokens) and the state after each:
      0.7 (> 0.5): 0.01 − 0.005 = 0.005; applied next: 0 (0.7 is above the target)
      0.4 (≤ 0.5): 0.005 + 0.005 = 0.01; applied next: 0.01
      0.3:         0.01 + 0.005 = 0.015 → capped at 0.012; applied next: 0.012
      0.9:         0.012 − 0.005 = 0.007; applied next: 0
      0.9:         0.002;  0.9: max(−0.003, 0) = 0
    A step without tokens changes nothing."""
    f = _adaptive(entropy_coef=0.01, entropy_target=0.5, entropy_coef_delta=0.005, entropy_coef_max=0.012)
    assert f.stateful and f.entropy_coef() == 0.0
    want = [(0.7, 0.005, 0.0), (0.4, 0.01, 0.01), (0.3, 0.012, 0.012), (0.9, 0.007, 0.0), (0.9, 0.002, 0.0),
            (0.9, 0.0, 0.0)]
    for h, coef, applied in want:
        f.after_step({"entropy_sum": 3 * h, "entropy_tokens": 3.0})
        assert f.state["entropy_coef"] == pytest.approx(coef, abs=1e-15)
        assert f.state["entropy_last"] == pytest.approx(h, abs=1e-15)
        assert f.entropy_coef() == pytest.approx(applied, abs=1e-15)
    f.after_step({"entropy_sum": 0.0, "entropy_tokens": 0.0})
    assert f.state["entropy_last"] == pytest.approx(0.9)


def test_the_applied_coefficient_is_the_bonus_the_loss_gets():
    """A controller whose state applies 0.3 gives the step gradient of a static η = 0.3 exactly,
    and reports the entropy sum and token count of every completion as its statistics."""
    model = _model()
    with torch.no_grad():
        model.model.norm.weight.mul_(5.0)
    f = _adaptive(entropy_target=1e9)
    f.state.update(entropy_coef=0.3, entropy_last=1.0)
    spec = get_loss("grpo")
    static = PolicyGradientForward(spec, spec.params(entropy_coef=0.3), max_new_tokens=6)
    assert _max_diff(_grads(model, f, [[0, 1, 2, 3]], False), _grads(model, static, [[0, 1, 2, 3]], False)) == 0
    out = f(model, collate_rollout(EXAMPLES, 0, False))
    assert out.stats["entropy_tokens"].tolist() == [1.0, 6.0, 2.0, 3.0]
    assert torch.allclose(out.stats["entropy_sum"], out.metrics["entropy"], atol=1e-12, rtol=0)


def test_an_adaptive_run_moves_its_coefficient_and_resumes_exactly(tmp_path, tiny_model_dir):
    """fp64, 4 steps, target 100 nats (above any entropy here), start 0, δ 0.2: the logged
    coefficient after step k is 0.2·k, the entropy it saw is the step's logged entropy (every
    completion computed: adaptive control turns zero-advantage skipping off), 8 × 1 = 2 × 4, and a
    run killed after step 2 and resumed ends at the same weights and logs the same states."""
    kw = dict(adaptive_entropy=True, entropy_target=100.0, entropy_coef_delta=0.2, max_steps=4, packing=False,
              save_every=1, keep_checkpoints=0)
    full = train(online(tiny_model_dir, tmp_path / "full", **kw))
    rows = [m for m in metrics(tmp_path / "full") if "loss" in m]
    assert [m["state/entropy_coef"] for m in rows] == pytest.approx([0.2, 0.4, 0.6, 0.8], abs=1e-12)
    assert [m["state/entropy_last"] for m in rows] == pytest.approx([m["entropy"] for m in rows], abs=1e-12)
    assert all("skipped_zero_advantage" not in m for m in rows)
    split = train(online(tiny_model_dir, tmp_path / "split", batch_size=2, grad_accum=4, **kw))
    assert max_abs_diff(weights(full.model_dir), weights(split.model_dir)) < 1e-9
    with crash_after_save(lambda step: step == 2):
        train(online(tiny_model_dir, tmp_path / "cut", **kw))
    resumed = train(online(tiny_model_dir, tmp_path / "cut", resume=True, **kw))
    assert max_abs_diff(weights(full.model_dir), weights(resumed.model_dir)) == 0
    cut = [m for m in metrics(tmp_path / "cut") if "loss" in m]
    assert [m["state/entropy_coef"] for m in cut][-2:] == [m["state/entropy_coef"] for m in rows][-2:]
    # the bonus applied from step 2 on: the run differs from one without control
    plain = train(online(tiny_model_dir, tmp_path / "plain", max_steps=4, packing=False, skip_zero_advantage=False))
    assert max_abs_diff(weights(full.model_dir), weights(plain.model_dir)) > 1e-6


def test_bad_controller_settings_are_refused():
    spec = get_loss("grpo")
    for bad in ({"entropy_coef_min": 0.5, "entropy_coef_max": 0.1}, {"entropy_coef_delta": -0.1},
                {"entropy_target": -1.0}):
        with pytest.raises(Exception, match=next(iter(bad)).replace("_max", "_min")):
            spec.params(adaptive_entropy=True, **bad)


def _saved_bytes(fn) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass while ``fn`` runs."""
    saved: dict[int, int] = {}

    def pack(x):
        saved[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        fn()
    return sum(saved.values())


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_token_entropy_with_gradient_holds_no_vocabulary_sized_tensor(dtype):
    """``token_entropy(grad=True)`` (models whose head ``logprobs`` does not serve: GPT-2, DeepSpeed
    ZeRO-3): 300 positions × 50 logits, one row with a −inf logit (a probability of 0) and one
    whose softmax underflows but for one entry, chunks of 7 rows. The entropies and their
    gradient for random output gradients e equal autograd through −Σ softmax·log_softmax of the
    logits in float64 (1e-12 for float64 logits; for bf16 ones, the gradient rounded to bf16: 2⁻⁸
    of the largest), and the pass keeps for the backward pass at most the logits themselves and
    the 300 entropies (autograd through log_softmax kept three float32 copies of the logits and a
    mask: 4 + 3·4·… bytes per logit more)."""
    gen = torch.Generator().manual_seed(5)
    logits = (torch.randn(300, 1, 50, dtype=torch.float64, generator=gen) * 3)
    logits[4, 0, 7] = float("-inf")
    logits[9, 0, 3] = 900.0
    logits = logits.to(dtype).requires_grad_()
    e = torch.randn(300, 1, dtype=torch.float64, generator=gen)

    ref_in = logits.detach().double().requires_grad_()
    logp = torch.log_softmax(ref_in, -1)
    ref = -(logp.exp() * logp.masked_fill(logp == float("-inf"), 0.0)).sum(-1)
    (ref_grad,) = torch.autograd.grad((ref * e).sum(), ref_in)

    got = logprobs.token_entropy(logits, chunk_rows=7, grad=True)
    assert got.requires_grad and got.shape == (300, 1)
    (got_grad,) = torch.autograd.grad((got.double() * e).sum(), logits)
    assert got_grad.dtype == dtype and torch.isfinite(got_grad).all()
    tol = 1e-12 if dtype == torch.float64 else 2.0 ** -8 * float(ref_grad.abs().max())
    assert torch.allclose(got.double(), ref, rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-5)
    assert torch.allclose(got_grad.double(), ref_grad, rtol=0, atol=tol)
    assert got_grad[4, 0, 7] == 0 and got_grad[9].abs().max() == 0  # p = 0; a one-hot softmax

    limit = logits.untyped_storage().nbytes() + 300 * 8
    assert _saved_bytes(lambda: logprobs.token_entropy(logits, chunk_rows=7, grad=True)) <= limit
