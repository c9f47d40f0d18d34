"""The chunked output layer of ``logprobs`` (``target_logps``) computes exactly what full logits
and a log-softmax compute: values and gradients, chunked or not, packed or padded, with adapters;
and it never runs the model's vocabulary projection on more than one position per row."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab import logprobs
from alignlab.data.collate import collate_pairs
from alignlab.data.pack import collate_packed
from alignlab.logprobs import sequence_logps
from tests.data.test_pack import PAIRS as PACKED_PAIRS
from tests.data.test_pack import _model

PAIRS = PACKED_PAIRS[:3]  # the pairs of the packing tests that share their prompt


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Chunks of 3 positions, so that every test below crosses chunk boundaries."""
    monkeypatch.setattr(logprobs, "CHUNK_VALUES", 3 * 263)  # 263: the tiny vocabulary


def _full_logits(monkeypatch):
    monkeypatch.setattr(logprobs, "PLAIN_HEAD_MODEL_TYPES", frozenset())


def test_target_logps_equal_log_softmax_values_and_gradients(tiny_chunks):
    """Against autograd through ``log_softmax(h @ W.T)[target]`` in fp64, on 7 positions (chunks of 3, 3, 1)."""
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(7, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(259, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    t = torch.randint(0, 259, (7,), generator=gen)
    g = torch.randn(7, dtype=torch.float64, generator=gen)  # an arbitrary upstream gradient
    ref = torch.log_softmax(h @ w.T, dim=-1).gather(-1, t[:, None]).squeeze(-1)
    got = logprobs.target_logps(h, w, t)
    assert torch.allclose(got, ref, atol=1e-13, rtol=0)
    ref_h, ref_w = torch.autograd.grad((ref * g).sum(), [h, w])
    got_h, got_w = torch.autograd.grad((got * g).sum(), [h, w])
    assert torch.allclose(got_h, ref_h, atol=1e-12, rtol=0)
    assert torch.allclose(got_w, ref_w, atol=1e-12, rtol=0)


@pytest.mark.parametrize("keep", [False, True], ids=["recomputed", "kept"])
def test_backward_keeps_the_softmax_that_fits_and_recomputes_it_otherwise(monkeypatch, keep):
    """7 positions in chunks of 3 run the output-layer matmul 3 times forward; without room to keep
    their softmax, 3 times again backward, else not at all. Values and gradients equal autograd
    through ``log_softmax(h @ W.T)`` either way, with the entropy too."""
    monkeypatch.setattr(logprobs, "CHUNK_VALUES", 3 * 259)
    monkeypatch.setattr(logprobs, "KEEP_VALUES", 7 * 259 if keep else 7 * 259 - 1)
    calls = []
    real = logprobs._logits
    monkeypatch.setattr(logprobs, "_logits", lambda *a: (calls.append(1), real(*a))[1])
    gen = torch.Generator().manual_seed(5)
    h = torch.randn(7, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(259, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    t = torch.randint(0, 259, (7,), generator=gen)
    g = torch.randn(7, dtype=torch.float64, generator=gen)
    logits = h @ w.T
    ref = torch.log_softmax(logits, dim=-1).gather(-1, t[:, None]).squeeze(-1)
    got, ent = logprobs.target_logps_and_entropy(h, w, t)
    assert len(calls) == 3
    ref_h, ref_w = torch.autograd.grad((ref * g).sum(), [h, w])
    got_h, got_w = torch.autograd.grad((got * g).sum(), [h, w])
    assert len(calls) == (3 if keep else 6)
    assert torch.allclose(got, ref, atol=1e-13, rtol=0)
    assert torch.allclose(got_h, ref_h, atol=1e-12, rtol=0) and torch.allclose(got_w, ref_w, atol=1e-12, rtol=0)
    direct = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    assert torch.allclose(ent, direct.detach(), atol=1e-13, rtol=0)


def test_nothing_is_kept_without_a_gradient(monkeypatch):
    """Under no_grad (the old policy's and the reference's log-probs) the forward pass keeps no softmax."""
    kept = []
    real = logprobs._chunk_stats
    monkeypatch.setattr(logprobs, "_chunk_stats", lambda *a: (kept.append(a[-1] is not None), real(*a))[1])
    h, w = torch.randn(4, 3, requires_grad=True), torch.randn(11, 3, requires_grad=True)
    with torch.no_grad():
        logprobs.target_logps(h, w, torch.zeros(4, dtype=torch.long))
    logprobs.target_logps(h, w, torch.zeros(4, dtype=torch.long))
    assert kept == [False, True]


def test_target_logps_hand_value():
    """h = [1, 0], W rows [2, 0], [0, 0], [−1, 0]: logits (2, 0, −1); target 0 has log-prob
    2 − log(e² + 1 + e⁻¹); d/dh = W[0] − Σ p_v W[v] = 2 − (2e² − e⁻¹)/(e² + 1 + e⁻¹) on the first axis."""
    h = torch.tensor([[1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[2.0, 0.0], [0.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    out = logprobs.target_logps(h, w, torch.tensor([0]))
    z = math.exp(2) + 1 + math.exp(-1)
    assert float(out.detach()) == pytest.approx(2 - math.log(z), abs=1e-14)
    (grad,) = torch.autograd.grad(out.sum(), h)
    assert float(grad[0, 0]) == pytest.approx(2 - (2 * math.exp(2) - math.exp(-1)) / z, abs=1e-14)
    assert float(grad[0, 1]) == 0.0


def test_squared_mass_equals_direct(tiny_chunks):
    gen = torch.Generator().manual_seed(1)
    h, w = torch.randn(5, 4, dtype=torch.float64, generator=gen), torch.randn(259, 4, dtype=torch.float64, generator=gen)
    p = torch.softmax(h @ w.T, dim=-1)
    assert torch.allclose(logprobs.squared_mass(h, w), torch.log((p * p).sum(-1)), atol=1e-13, rtol=0)


def test_entropy_by_hand():
    """−Σ_v p_v log p_v of hand-built logits over V = 4, computed from the logits (``token_entropy``):
    - all equal (0, 0, 0, 0), or all 1000: uniform, H = 4 · ¼ · log 4 = log 4;
    - (0, log 3, −inf, −inf): p = (¼, ¾, 0, 0), H = −¼ log ¼ − ¾ log ¾ = log 4 − ¾ log 3 (a −inf
      logit has p = 0 and adds nothing, not 0 · −inf = nan);
    - (5, −inf, −inf, −inf): one token certain, H = 0;
    - (1000, 1000, −1000, −1000): two tokens at ½ each (e⁻²⁰⁰⁰ is 0 in fp64), H = log 2."""
    inf = float("inf")
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [1000.0] * 4, [0.0, math.log(3), -inf, -inf]],
                           [[5.0, -inf, -inf, -inf], [1000.0, 1000.0, -1000.0, -1000.0], [0.0] * 4]],
                          dtype=torch.float64)
    want = torch.tensor([[math.log(4), math.log(4), math.log(4) - 0.75 * math.log(3)],
                         [0.0, math.log(2), math.log(4)]], dtype=torch.float64)
    for chunk_rows in (1, 8):
        got = logprobs.token_entropy(logits, chunk_rows=chunk_rows)
        assert got.dtype == torch.float64 and got.shape == (2, 3)
        assert torch.allclose(got, want, atol=1e-13, rtol=0)
    assert logprobs.token_entropy(logits.float()).dtype == torch.float32


def test_fused_entropy_by_hand_and_without_gradient(tiny_chunks):
    """From hidden states and the head weight (``target_logps_and_entropy``): h = [1, 0], W rows
    [2, 0], [0, 0], [−1, 0] give logits (2, 0, −1), z = e² + 1 + e⁻¹ and
    H = log z − Σ p_v·logit_v = log z − (2e² − e⁻¹)/z; h = 0 gives equal logits over the V = 3
    rows, H = log 3. The log-probs and their gradient are those of ``target_logps``."""
    h = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[2.0, 0.0], [0.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([0, 2])
    logps, ent = logprobs.target_logps_and_entropy(h, w, t)
    z = math.exp(2) + 1 + math.exp(-1)
    assert ent.tolist() == pytest.approx([math.log(z) - (2 * math.exp(2) - math.exp(-1)) / z, math.log(3)],
                                         abs=1e-14)
    assert not ent.requires_grad and logps.requires_grad
    plain = logprobs.target_logps(h, w, t)
    assert torch.equal(logps.detach(), plain.detach())
    (g_with,) = torch.autograd.grad(logps.sum(), h)
    (g_plain,) = torch.autograd.grad(plain.sum(), h)
    assert torch.equal(g_with, g_plain)


def test_fused_entropy_equals_direct_across_chunks(tiny_chunks):
    """On 7 random positions (chunks of 3, 3, 1), against −Σ softmax · log_softmax of h @ W.T."""
    gen = torch.Generator().manual_seed(3)
    h, w = torch.randn(7, 4, dtype=torch.float64, generator=gen), torch.randn(259, 4, dtype=torch.float64, generator=gen)
    logits = h @ w.T
    direct = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    _, ent = logprobs.target_logps_and_entropy(h, w, torch.zeros(7, dtype=torch.long))
    assert torch.allclose(ent, direct, atol=1e-13, rtol=0)
    assert float(direct.max() - direct.min()) > 0.1  # positions differ: a mix-up of rows would show


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_fused_equals_full_logits_through_the_model(monkeypatch, tiny_chunks, packed):
    """sequence_logps with the fused head against the model's own full logits: per-token values,
    WPO's squared mass, and the gradient of every weight, in fp64."""
    model = _model()
    batch = collate_packed(PAIRS, pad_id=0, role_major=True) if packed else collate_pairs(PAIRS, pad_id=0)
    fused = sequence_logps(model, batch, sqmass=True, entropy=True)
    g_fused = torch.autograd.grad(fused.sum_B.sum(), list(model.parameters()))
    _full_logits(monkeypatch)
    full = sequence_logps(model, batch, sqmass=True, entropy=True)
    g_full = torch.autograd.grad(full.sum_B.sum(), list(model.parameters()))
    assert torch.allclose(fused.token_logps_BT, full.token_logps_BT, atol=1e-12, rtol=0)
    assert torch.equal(fused.mask_BT, full.mask_BT)
    assert torch.allclose(fused.sqmass_B, full.sqmass_B, atol=1e-12, rtol=0)
    assert torch.allclose(fused.entropy_BT, full.entropy_BT, atol=1e-12, rtol=0)
    assert torch.equal(fused.entropy_BT != 0, fused.mask_BT > 0)  # on response tokens only
    assert float(fused.entropy_BT.max()) > 1.0 and not fused.entropy_BT.requires_grad
    assert max(float((a - b).abs().max()) for a, b in zip(g_fused, g_full, strict=True)) < 1e-11
    assert max(float(a.abs().max()) for a in g_full) > 1.0


def test_fused_head_never_projects_more_than_one_position_per_row():
    """The model's own lm_head sees one position per row (its ``logits_to_keep=1``), so no
    B × T × V tensor exists; the response positions go through the chunked head instead."""
    model = _model(torch.float32)
    seen = []
    model.lm_head.register_forward_hook(lambda _m, args, _out: seen.append(tuple(args[0].shape)))
    batch = collate_pairs(PAIRS, pad_id=0)
    out = sequence_logps(model, batch)
    assert seen == [(6, 1, 64)]
    assert float(out.count_B.sum()) == 4 + 2 + 3 + 6 + 2 + 3


def test_fused_equals_full_logits_in_bf16(monkeypatch):
    """bf16 model: both paths round the logits to bf16 before the fp32 log-softmax, so they agree
    to bf16's rounding of the summed log-probs (a few units of 2⁻⁸ relative)."""
    model = _model(torch.bfloat16)
    batch = collate_pairs(PAIRS, pad_id=0)
    fused = sequence_logps(model, batch)
    _full_logits(monkeypatch)
    full = sequence_logps(model, batch)
    assert fused.sum_B.dtype == torch.float32
    assert torch.allclose(fused.sum_B, full.sum_B, rtol=2e-2, atol=0)


def test_lora_policy_uses_the_fused_head_with_equal_gradients(monkeypatch):
    peft = pytest.importorskip("peft")
    model = _model()
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                       init_lora_weights=False))
    assert logprobs.head_of(model) is not None
    batch = collate_pairs(PAIRS, pad_id=0)
    lora = [p for p in model.parameters() if p.requires_grad]
    g_fused = torch.autograd.grad(sequence_logps(model, batch).sum_B.sum(), lora)
    _full_logits(monkeypatch)
    g_full = torch.autograd.grad(sequence_logps(model, batch).sum_B.sum(), lora)
    assert max(float((a - b).abs().max()) for a, b in zip(g_fused, g_full, strict=True)) < 1e-11


def test_models_without_a_plain_head_use_their_full_logits():
    """A GPT-2 is not on the list: its log-probs come from its own logits, and equal a direct log-softmax."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2)).double().eval()
    assert logprobs.head_of(model) is None
    batch = collate_pairs(PAIRS[:2], pad_id=0)
    out = sequence_logps(model, batch, entropy=True)
    logits = model(input_ids=batch.input_ids_BT, attention_mask=batch.attention_mask_BT).logits[:, :-1]
    direct = torch.log_softmax(logits, -1).gather(-1, batch.input_ids_BT[:, 1:, None]).squeeze(-1)
    mask = batch.loss_mask_BT[:, 1:].double()
    assert torch.allclose(out.sum_B, (direct * mask).sum(-1), atol=1e-12, rtol=0)
    entropy = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    assert torch.allclose(out.entropy_BT, (entropy * mask).detach(), atol=1e-12, rtol=0)


def test_target_logps_under_autocast_runs_the_output_layer_in_bf16_both_ways():
    """Under CPU autocast (bf16 mixed precision) the logits are h·Wᵀ in bf16 in the forward pass
    and again when the backward pass recomputes them: values and gradients equal autograd through
    log_softmax((h.bf16 @ W.bf16ᵀ).float()). Logits of size ~20 make any mix of an fp32
    recomputation with a bf16 logsumexp show (softmax sums off by several percent)."""
    gen = torch.Generator().manual_seed(2)
    h = (3 * torch.randn(6, 8, generator=gen)).requires_grad_()
    w = (3 * torch.randn(50, 8, generator=gen)).requires_grad_()
    t = torch.randint(0, 50, (6,), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = logprobs.target_logps(h, w, t)
    ref = torch.log_softmax((h.bfloat16() @ w.bfloat16().T).float(), dim=-1).gather(-1, t[:, None]).squeeze(-1)
    assert got.dtype == torch.float32
    assert torch.allclose(got, ref, atol=1e-5, rtol=0)
    ref_h, ref_w = torch.autograd.grad(ref.sum(), [h, w])
    got_h, got_w = torch.autograd.grad(got.sum(), [h, w])
    assert got_h.dtype == got_w.dtype == torch.float32
    assert torch.allclose(got_h, ref_h, atol=1e-2 * float(ref_h.abs().max()), rtol=0)
    assert torch.allclose(got_w, ref_w, atol=1e-2 * float(ref_w.abs().max()), rtol=0)


def test_a_second_backward_pass_through_the_kept_softmax_recomputes_it():
    """The first backward pass consumes the kept softmax in place; with ``retain_graph`` a second
    one must recompute it: the gradients accumulate to exactly twice autograd's through
    ``log_softmax(h @ W.T)`` (fp64), for ``hidden`` and ``weight``."""
    gen = torch.Generator().manual_seed(9)
    h = torch.randn(6, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(37, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    t = torch.randint(0, 37, (6,), generator=gen)
    g = torch.randn(6, dtype=torch.float64, generator=gen)
    ref_h, ref_w = torch.autograd.grad((torch.log_softmax(h @ w.T, -1).gather(-1, t[:, None]).squeeze(-1) * g).sum(),
                                       [h, w])
    out = logprobs.target_logps(h, w, t)
    assert out.grad_fn.kept is not None  # 6 × 37 values fit: kept
    loss = (out * g).sum()
    loss.backward(retain_graph=True)
    assert out.grad_fn.kept is None  # consumed and let go
    loss.backward()
    assert torch.allclose(h.grad, 2 * ref_h, atol=1e-12, rtol=0)
    assert torch.allclose(w.grad, 2 * ref_w, atol=1e-12, rtol=0)


@pytest.mark.parametrize("keep", [False, True], ids=["recomputed", "kept"])
def test_float32_output_layer_of_packed_weights_gives_log_softmax_values_and_gradients(monkeypatch, keep):
    """A float32 output layer of 1,000 × 128 weights (above ``packed_linear.MIN_WEIGHTS``, so its
    logits come from oneDNN's packed weights where torch has oneDNN), 37 positions in chunks of 8,
    the softmax kept or recomputed in the backward pass: values, entropy and both gradients equal
    autograd through ``log_softmax(h @ W.T)`` in float64 on the same float32 numbers, to float32
    rounding (values 2e-5, gradients 1e-5 of their largest entry: a float32 sum of 128 products
    is off by about 1e-6 of its size, bfloat16 by 1e-2)."""
    from alignlab import packed_linear

    assert packed_linear.Linear(torch.zeros(1000, 128)).packed is not None or not packed_linear._onednn()
    monkeypatch.setattr(logprobs, "CHUNK_VALUES", 8 * 1000)
    monkeypatch.setattr(logprobs, "KEEP_VALUES", 37 * 1000 if keep else 37 * 1000 - 1)
    gen = torch.Generator().manual_seed(6)
    h = torch.randn(37, 128, generator=gen, requires_grad=True)
    w = (torch.randn(1000, 128, generator=gen) / 4).requires_grad_()
    t = torch.randint(0, 1000, (37,), generator=gen)
    g = torch.randn(37, generator=gen)
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    logits = h64 @ w64.T
    ref = torch.log_softmax(logits, dim=-1).gather(-1, t[:, None]).squeeze(-1)
    got, ent = logprobs.target_logps_and_entropy(h, w, t)
    assert got.dtype == torch.float32
    assert (got.double() - ref).abs().max().item() < 2e-5
    direct = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    assert (ent.double() - direct).abs().max().item() < 2e-5
    ref_h, ref_w = torch.autograd.grad((ref * g.double()).sum(), [h64, w64])
    got_h, got_w = torch.autograd.grad((got * g).sum(), [h, w])
    assert (got_h.double() - ref_h).abs().max().item() < 1e-5 * ref_h.abs().max().item()
    assert (got_w.double() - ref_w).abs().max().item() < 1e-5 * ref_w.abs().max().item()


@pytest.mark.parametrize("budget", ["within", "above"])
def test_an_output_layer_is_packed_only_within_the_packing_budget(monkeypatch, budget):
    """A pass over the output layer holds its packed copy while it runs, so a layer of more than
    ``PACK_VALUES`` weights (here the budget is set one below the layer's 128,000) is not packed:
    forward, recomputing backward and ``squared_mass`` multiply from the weight itself, and the
    values are the same float32 function (within float32 rounding of a float64 log-softmax). At
    or under the budget every pass packs (where torch has oneDNN)."""
    from alignlab import packed_linear

    monkeypatch.setattr(logprobs, "PACK_VALUES", 128_000 if budget == "within" else 127_999)
    monkeypatch.setattr(logprobs, "KEEP_VALUES", 0)  # the backward pass recomputes: it multiplies too
    made = []
    real = logprobs.Linear

    def recording(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(logprobs, "Linear", recording)
    gen = torch.Generator().manual_seed(7)
    h = torch.randn(9, 128, generator=gen, requires_grad=True)
    w = (torch.randn(1000, 128, generator=gen) / 4).requires_grad_()
    t = torch.randint(0, 1000, (9,), generator=gen)
    got = logprobs.target_logps(h, w, t)
    got.sum().backward()
    logprobs.squared_mass(h.detach(), w.detach())
    assert len(made) == 3
    packed = [m.packed is not None for m in made]
    assert packed == ([packed_linear._onednn()] * 3 if budget == "within" else [False] * 3)
    ref = torch.log_softmax(h.detach().double() @ w.detach().double().T, -1).gather(-1, t[:, None]).squeeze(-1)
    assert (got.detach().double() - ref).abs().max().item() < 2e-5
