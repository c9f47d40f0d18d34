"""Reference-free pairwise losses: SimPO, CPO, ORPO, ASFT.

Values derived by hand, the reference fields never read, swap identities, gradients, numerics of the
log-odds, and parameter checks.

Notation: ℓ = summed log-prob, ℓ̄ = ℓ/|y|, NLL(y) = −ℓ̄(y), p = e^ℓ̄, lo(y) = ℓ̄ − log(1 − p),
softplus(x) = log(1 + e^x) so −log σ(x) = softplus(−x).
Constants: softplus(0.5) = 0.974076984180, softplus(−0.5) = 0.474076984180, σ(−0.5) = 0.377540668798,
softplus(−0.2) = 0.598138869382, softplus(0.2) = 0.798138869382, σ(−0.2) = 0.450166002688,
log 2 = 0.693147180560, log 0.8 = −0.223143551314, log 4 = 1.386294361120.
"""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.losses import ParamError, dpo_loss
from alignlab.losses import reference_free as rf
from alignlab.losses.dpo import DPOParams
from alignlab.losses.registry import get_loss
from alignlab.losses.types import PairLogps

TOL = 1e-6


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def pair(chosen, rejected, chosen_len, rejected_len, requires_grad=False, dtype=torch.float64) -> PairLogps:
    """Reference-free pairs: ref_* stay None."""
    def t(values):
        return torch.tensor(values, dtype=dtype, requires_grad=requires_grad)

    return PairLogps(chosen=t(chosen), rejected=t(rejected),
                     chosen_len=torch.tensor(chosen_len), rejected_len=torch.tensor(rejected_len))


class NoReference(PairLogps):
    """A PairLogps whose reference fields raise when read, to prove a loss never touches them."""

    def __getattribute__(self, name):
        if name.startswith("ref_"):
            raise AssertionError(f"reference-free loss read {name}")
        return super().__getattribute__(name)


LOSSES = {
    "simpo": (rf.simpo_loss, rf.SimPOParams()),
    "cpo": (rf.cpo_loss, rf.CPOParams()),
    "orpo": (rf.orpo_loss, rf.ORPOParams()),
    "asft": (rf.asft_loss, rf.ASFTParams()),
}
# Three pairs with various lengths, all token means well below 0.
C, R, CL, RL = [-6.0, -3.0, -20.0], [-10.0, -2.5, -9.0], [4, 2, 10], [5, 5, 3]


# ------------------------------------------------------------------------------------- registry
@pytest.mark.parametrize("name,fn,params,reduction,defaults", [
    ("simpo", rf.simpo_loss, rf.SimPOParams, "mean",
     {"beta": 2.0, "gamma_beta_ratio": 0.25, "label_smoothing": 0.0, "sft_weight": 0.0}),
    ("cpo", rf.cpo_loss, rf.CPOParams, "sum+mean", {"beta": 0.1, "alpha": 1.0, "label_smoothing": 0.0}),
    ("orpo", rf.orpo_loss, rf.ORPOParams, "mean", {"lam": 0.1}),
    ("asft", rf.asft_loss, rf.ASFTParams, "mean", {"lam": 0.1, "beta": 1.0}),
])
def test_registry_entries(name, fn, params, reduction, defaults):
    spec = get_loss(name)
    assert spec.fn is fn and spec.params is params
    assert spec.shape == "pair" and spec.needs_reference is False
    assert spec.reduction == reduction and spec.normalize == "examples"
    assert spec.defaults() == defaults
    assert spec.needs == frozenset() and spec.init_state is None
    assert spec.paper and spec.summary


# ------------------------------------------------------------------------- no reference is read
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_run_with_ref_none_and_never_read_ref_fields(name):
    """ref_* are None in ``pair``; the NoReference container raises if any ref_* attribute is read.
    Both give the same, finite values."""
    fn, params = LOSSES[name]
    with_none = fn(pair(C, R, CL, RL), params)
    assert with_none.losses.shape == (3,) and torch.isfinite(with_none.losses).all()
    guarded = NoReference(chosen=torch.tensor(C, dtype=torch.float64),
                          rejected=torch.tensor(R, dtype=torch.float64),
                          chosen_len=torch.tensor(CL), rejected_len=torch.tensor(RL))
    out = fn(guarded, params)
    torch.testing.assert_close(out.losses, with_none.losses, atol=0, rtol=0)
    with pytest.raises(AssertionError, match="ref_chosen"):
        guarded.ref_chosen  # noqa: B018 - the guard itself works


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_metrics_are_per_example_and_detached(name):
    fn, params = LOSSES[name]
    out = fn(pair(C, R, CL, RL, requires_grad=True), params)
    assert out.losses.requires_grad
    for key, value in out.metrics.items():
        assert value.shape == (3,), key
        assert not value.requires_grad, key


# ---------------------------------------------------------------------------------------- SimPO
def test_simpo_worked_example():
    """β = 2, γ/β = 0.25. Chosen −6 over 4 tokens: ℓ̄_w = −1.5; rejected −10 over 5: ℓ̄_l = −2.

    z = −1.5 + 2 − 0.25 = 0.25, β·z = 0.5, L = softplus(−0.5) = 0.474076984180.
    rewards β·ℓ̄: −3 and −4, margin 1, accuracy 1.
    """
    out = rf.simpo_loss(pair([-6.0], [-10.0], [4], [5]), rf.SimPOParams())
    assert float(out.losses[0]) == pytest.approx(0.474076984180, abs=TOL)
    m = out.metrics
    assert float(m["rewards/chosen"][0]) == pytest.approx(-3.0, abs=TOL)
    assert float(m["rewards/rejected"][0]) == pytest.approx(-4.0, abs=TOL)
    assert float(m["rewards/margins"][0]) == pytest.approx(1.0, abs=TOL)
    assert float(m["rewards/accuracies"][0]) == 1.0
    assert float(m["nll"][0]) == pytest.approx(1.5, abs=TOL)


def test_simpo_label_smoothing_and_sft_weight():
    """Same pair. ε = 0.1: 0.9·softplus(−0.5) + 0.1·softplus(0.5) = 0.426669285762 + 0.097407698418
    = 0.524076984180. sft_weight 0.5 adds 0.5·NLL(y_w) = 0.5·1.5 = 0.75:
    0.474076984180 + 0.75 = 1.224076984180."""
    logps = pair([-6.0], [-10.0], [4], [5])
    smoothed = rf.simpo_loss(logps, rf.SimPOParams(label_smoothing=0.1))
    assert float(smoothed.losses[0]) == pytest.approx(0.524076984180, abs=TOL)
    with_sft = rf.simpo_loss(logps, rf.SimPOParams(sft_weight=0.5))
    assert float(with_sft.losses[0]) == pytest.approx(1.224076984180, abs=TOL)


def test_simpo_uses_token_means():
    """The same sums with the chosen response 2 tokens long: ℓ̄_w = −3, z = −3 + 2 − 0.25 = −1.25,
    β·z = −2.5, L = softplus(2.5) = 2.578889734293 (the summed margin, +4, would give a small loss)."""
    out = rf.simpo_loss(pair([-6.0], [-10.0], [2], [5]), rf.SimPOParams())
    assert float(out.losses[0]) == pytest.approx(2.578889734293, abs=TOL)


def test_simpo_gradient_by_hand():
    """L = softplus(−β·z), z = ℓ_w/|y_w| − ℓ_l/|y_l| − ratio.
    dL/dℓ_w = −β·σ(−βz)/|y_w| = −2·σ(−0.5)/4 = −0.188770334399; dL/dℓ_l = +2·σ(−0.5)/5 = 0.151016267519."""
    logps = pair([-6.0], [-10.0], [4], [5], requires_grad=True)
    rf.simpo_loss(logps, rf.SimPOParams()).losses.sum().backward()
    assert float(logps.chosen.grad[0]) == pytest.approx(-0.188770334399, abs=TOL)
    assert float(logps.rejected.grad[0]) == pytest.approx(0.151016267519, abs=TOL)


def test_simpo_swap_mirrors_the_margin():
    """With γ = 0 swapping maps m = β(ℓ̄_w − ℓ̄_l) to −m, and L_swapped − L = softplus(m) − softplus(−m)
    = m. On C/R: ℓ̄_w = −1.5, −1.5, −2; ℓ̄_l = −2, −0.5, −3; β = 2: m = 1, −2, 2."""
    logps = pair(C, R, CL, RL)
    params = rf.SimPOParams(gamma_beta_ratio=0.0)
    out, swapped = rf.simpo_loss(logps, params), rf.simpo_loss(logps.swapped(), params)
    margin = torch.tensor([1.0, -2.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(out.metrics["rewards/margins"], margin, atol=TOL, rtol=0)
    torch.testing.assert_close(swapped.metrics["rewards/margins"], -margin, atol=TOL, rtol=0)
    torch.testing.assert_close(swapped.losses - out.losses, margin, atol=TOL, rtol=0)


# ------------------------------------------------------------------------------------------ CPO
def test_cpo_worked_example():
    """β = 0.1, α = 1. Chosen −10 over 5 tokens, rejected −12 over 4 (summed log-probs in the margin):
    h = 0.1·(−10 + 12) = 0.2, −log σ(0.2) = 0.598138869382; NLL(y_w) = 10/5 = 2. L = 2.598138869382."""
    out = rf.cpo_loss(pair([-10.0], [-12.0], [5], [4]), rf.CPOParams())
    assert float(out.losses[0]) == pytest.approx(2.598138869382, abs=TOL)
    assert float(out.metrics["rewards/chosen"][0]) == pytest.approx(-1.0, abs=TOL)
    assert float(out.metrics["rewards/margins"][0]) == pytest.approx(0.2, abs=TOL)
    assert float(out.metrics["nll"][0]) == pytest.approx(2.0, abs=TOL)


def test_cpo_label_smoothing():
    """ε = 0.2: 0.8·softplus(−0.2) + 0.2·softplus(0.2) + 2 = 0.478511095505 + 0.159627773876 + 2
    = 2.638138869382."""
    out = rf.cpo_loss(pair([-10.0], [-12.0], [5], [4]), rf.CPOParams(label_smoothing=0.2))
    assert float(out.losses[0]) == pytest.approx(2.638138869382, abs=TOL)


def test_cpo_without_nll_is_dpo_with_a_uniform_reference():
    """α = 0 leaves −log σ(β(ℓ_w − ℓ_l)): DPO with reference log-probs 0."""
    logps = pair(C, R, CL, RL)
    out = rf.cpo_loss(logps, rf.CPOParams(beta=0.3, alpha=0.0))
    zeros = torch.zeros(3, dtype=torch.float64)
    with_zero_ref = PairLogps(logps.chosen, logps.rejected, logps.chosen_len, logps.rejected_len,
                              ref_chosen=zeros, ref_rejected=zeros)
    dpo = dpo_loss(with_zero_ref, DPOParams(beta=0.3))
    torch.testing.assert_close(out.losses, dpo.losses, atol=1e-12, rtol=0)


def test_cpo_gradient_by_hand():
    """dL/dℓ_w = −β·σ(−h) − α/|y_w| = −0.1·0.450166002688 − 1/5 = −0.245016600269;
    dL/dℓ_l = β·σ(−h) = 0.045016600269."""
    logps = pair([-10.0], [-12.0], [5], [4], requires_grad=True)
    rf.cpo_loss(logps, rf.CPOParams()).losses.sum().backward()
    assert float(logps.chosen.grad[0]) == pytest.approx(-0.245016600269, abs=TOL)
    assert float(logps.rejected.grad[0]) == pytest.approx(0.045016600269, abs=TOL)


def test_cpo_swap_mirrors_the_margin():
    """α = 0: L_swapped − L = h, the margin β(ℓ_w − ℓ_l). On C/R (β = 0.1): ℓ_w − ℓ_l = 4, −0.5, −11,
    h = 0.4, −0.05, −1.1."""
    logps = pair(C, R, CL, RL)
    params = rf.CPOParams(alpha=0.0)
    out, swapped = rf.cpo_loss(logps, params), rf.cpo_loss(logps.swapped(), params)
    h = torch.tensor([0.4, -0.05, -1.1], dtype=torch.float64)
    torch.testing.assert_close(swapped.losses - out.losses, h, atol=TOL, rtol=0)
    torch.testing.assert_close(out.metrics["rewards/margins"], h, atol=TOL, rtol=0)


# ----------------------------------------------------------------------------------------- ORPO
ORPO_PAIR = ([3 * math.log(0.5)], [2 * math.log(0.2)], [3], [2])  # p_w = 0.5, p_l = 0.2


def test_orpo_worked_example():
    """ℓ̄_w = log 0.5 (p_w = ½), ℓ̄_l = log 0.2 (p_l = ⅕).

    lo_w = log(0.5/0.5) = 0, lo_l = log(0.2/0.8) = −log 4, z = lo_w − lo_l = log 4 = 1.386294361120.
    log σ(log 4) = log(4/5) = −0.223143551314. NLL = log 2.
    L = 0.693147180560 + 0.1·0.223143551314 = 0.715461535691.
    rewards λ·ℓ̄: 0.1·log 0.5 = −0.069314718056, 0.1·log 0.2 = −0.160943791243.
    """
    out = rf.orpo_loss(pair(*ORPO_PAIR), rf.ORPOParams())
    assert float(out.losses[0]) == pytest.approx(0.715461535691, abs=TOL)
    m = out.metrics
    assert float(m["log_odds_chosen"][0]) == pytest.approx(1.386294361120, abs=TOL)
    assert float(m["log_odds_ratio"][0]) == pytest.approx(-0.223143551314, abs=TOL)
    assert float(m["nll"][0]) == pytest.approx(0.693147180560, abs=TOL)
    assert float(m["rewards/chosen"][0]) == pytest.approx(-0.069314718056, abs=TOL)
    assert float(m["rewards/rejected"][0]) == pytest.approx(-0.160943791243, abs=TOL)


def test_orpo_gradient_by_hand():
    """d lo/dℓ̄ = 1 + p/(1 − p) = 1/(1 − p); σ(−z) = σ(−log 4) = ⅕.
    dL/dℓ̄_w = −1 − λ·σ(−z)/(1 − p_w) = −1 − 0.1·0.2·2 = −1.04, so dL/dℓ_w = −1.04/3 = −0.346666666667.
    dL/dℓ̄_l = λ·σ(−z)/(1 − p_l) = 0.1·0.2·1.25 = 0.025, so dL/dℓ_l = 0.025/2 = 0.0125."""
    logps = pair(*ORPO_PAIR, requires_grad=True)
    rf.orpo_loss(logps, rf.ORPOParams()).losses.sum().backward()
    assert float(logps.chosen.grad[0]) == pytest.approx(-0.346666666667, abs=TOL)
    assert float(logps.rejected.grad[0]) == pytest.approx(0.0125, abs=TOL)


def test_orpo_swap_identity():
    """L = −ℓ̄_w − λ log σ(z); swapped: −ℓ̄_l − λ log σ(−z). So L_swapped − L = ℓ̄_w − ℓ̄_l + λ·z
    (log σ(z) − log σ(−z) = z). On C/R: ℓ̄_w = −1.5, −1.5, −2; ℓ̄_l = −2, −0.5, −3; with
    lo(x) = x − log(1 − e^x), z = lo(ℓ̄_w) − lo(ℓ̄_l) = 0.607069001057, −1.680269670642, 1.094344276926,
    and at λ = 0.3, L_swapped − L = 0.682120700317, −1.504080901193, 1.328303283078. Recomputed below
    in plain float math."""
    def lo(x: float) -> float:
        return x - math.log1p(-math.exp(x))

    mean_w = [c / n for c, n in zip(C, CL, strict=True)]
    mean_l = [r / n for r, n in zip(R, RL, strict=True)]
    z = [lo(a) - lo(b) for a, b in zip(mean_w, mean_l, strict=True)]
    diff = [a - b + 0.3 * zz for a, b, zz in zip(mean_w, mean_l, z, strict=True)]
    assert z == pytest.approx([0.607069001057, -1.680269670642, 1.094344276926], abs=1e-12)
    assert diff == pytest.approx([0.682120700317, -1.504080901193, 1.328303283078], abs=1e-12)

    logps = pair(C, R, CL, RL)
    params = rf.ORPOParams(lam=0.3)
    out, swapped = rf.orpo_loss(logps, params), rf.orpo_loss(logps.swapped(), params)
    torch.testing.assert_close(swapped.losses - out.losses, torch.tensor(diff, dtype=torch.float64), atol=TOL, rtol=0)
    torch.testing.assert_close(out.metrics["log_odds_chosen"], torch.tensor(z, dtype=torch.float64), atol=TOL, rtol=0)
    torch.testing.assert_close(swapped.metrics["log_odds_chosen"], -torch.tensor(z, dtype=torch.float64),
                               atol=TOL, rtol=0)


@pytest.mark.parametrize("fn", [rf.orpo_loss, rf.asft_loss])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_odds_losses_are_finite_for_a_certain_response(fn, dtype):
    """ℓ̄_w = 0 (p_w = 1) makes log(1 − p) = −inf uncapped; with the cap p ≤ 1 − 1e-6 the loss and its
    gradients stay finite, and low-precision inputs are computed in float32."""
    logps = pair([0.0, -1.0], [-6.0, 0.0], [2, 2], [2, 2], requires_grad=True, dtype=dtype)
    out = fn(logps, LOSSES["orpo" if fn is rf.orpo_loss else "asft"][1])
    assert out.losses.dtype == torch.float32
    assert torch.isfinite(out.losses).all()
    out.losses.sum().backward()
    assert torch.isfinite(logps.chosen.grad).all() and torch.isfinite(logps.rejected.grad).all()


@pytest.mark.parametrize("fn", [rf.orpo_loss, rf.asft_loss])
def test_odds_losses_in_float32_match_float64(fn):
    """Inputs exact in every dtype (ℓ̄ = −1 and −3): the float32 result equals the float64 one to 1e-6."""
    params = LOSSES["orpo" if fn is rf.orpo_loss else "asft"][1]
    lo = fn(pair([-2.0], [-6.0], [2], [2], dtype=torch.bfloat16), params).losses
    hi = fn(pair([-2.0], [-6.0], [2], [2], dtype=torch.float64), params).losses
    assert hi.dtype == torch.float64
    assert float(lo[0]) == pytest.approx(float(hi[0]), abs=1e-6)


def test_log1mexp_is_accurate_on_both_branches():
    """log(1 − e^x): x = −1e-10 gives log(1e-10·(1 − 5e-11)) = −23.025850929990 (the naive log1p(−e^x)
    is −inf in float32); x = −1 gives log(0.632120558829) = −0.458675145387; x = −50 gives −e^{−50}
    = −1.928749847964e-22 (the naive log(−expm1(x)) rounds it to 0)."""
    x64 = torch.tensor([-1e-10, -1.0, -50.0], dtype=torch.float64)
    out = rf.log1mexp(x64)
    assert float(out[0]) == pytest.approx(-23.025850929990, abs=1e-9)
    assert float(out[1]) == pytest.approx(-0.458675145387, abs=1e-12)
    assert float(out[2]) == pytest.approx(-1.928749847964e-22, rel=1e-9, abs=0)
    out32 = rf.log1mexp(torch.tensor([-1e-10, -50.0], dtype=torch.float32))
    assert float(out32[0]) == pytest.approx(-23.025850929990, rel=1e-6)
    assert float(out32[1]) == pytest.approx(-1.928749847964e-22, rel=1e-5, abs=0)


# ----------------------------------------------------------------------------------------- ASFT
def test_asft_worked_example_beta_1():
    """p_w = ½, p_l = ⅕, λ = 0.1, β = 1: −log σ(lo_w) = −log p_w = log 2,
    −log σ(−lo_l) = −log(1 − p_l) = −log 0.8.
    L = log 2 + 0.1·(0.693147180560 + 0.223143551314) = 0.693147180560 + 0.091629073187 = 0.784776253747."""
    out = rf.asft_loss(pair(*ORPO_PAIR), rf.ASFTParams())
    assert float(out.losses[0]) == pytest.approx(0.784776253747, abs=TOL)
    assert float(out.metrics["logodds/chosen"][0]) == pytest.approx(0.0, abs=TOL)
    assert float(out.metrics["logodds/rejected"][0]) == pytest.approx(-1.386294361120, abs=TOL)


def test_asft_worked_example_beta_2():
    """β = 2: −log σ(2·0) = log 2; −log σ(−2·(−log 4)) = −log σ(log 16) = log(17/16) = 0.060624621816.
    L = log 2 + 0.1·(0.693147180560 + 0.060624621816) = 0.693147180560 + 0.075377180238 = 0.768524360798."""
    out = rf.asft_loss(pair(*ORPO_PAIR), rf.ASFTParams(beta=2.0))
    assert float(out.losses[0]) == pytest.approx(0.768524360798, abs=TOL)


@pytest.mark.parametrize("lam", [0.1, 0.7])
def test_asft_beta_1_is_the_pointwise_identity(lam):
    """β = 1: σ(lo(y)) = p(y), so L = NLL(y_w) − λ[ℓ̄(y_w) + log(1 − e^{ℓ̄(y_l)})], here with math."""
    out = rf.asft_loss(pair(C, R, CL, RL), rf.ASFTParams(lam=lam, beta=1.0))
    for i in range(3):
        mw, ml = C[i] / CL[i], R[i] / RL[i]
        expected = -mw - lam * (mw + math.log(-math.expm1(ml)))
        assert float(out.losses[i]) == pytest.approx(expected, abs=1e-9)


def test_asft_is_pointwise_and_orpo_is_not():
    """ASFT has no term coupling the two responses: the chosen gradient is the same whatever the rejected
    log-prob. ORPO's odds ratio couples them, so its chosen gradient changes."""
    def chosen_grad(fn, params, rejected):
        logps = pair([-3.0], [rejected], [3], [2], requires_grad=True)
        fn(logps, params).losses.sum().backward()
        return float(logps.chosen.grad[0])

    asft = rf.ASFTParams(beta=2.0)
    a, b = chosen_grad(rf.asft_loss, asft, -1.0), chosen_grad(rf.asft_loss, asft, -9.0)
    assert a == pytest.approx(b, abs=1e-12)
    orpo = rf.ORPOParams()
    o1, o2 = chosen_grad(rf.orpo_loss, orpo, -1.0), chosen_grad(rf.orpo_loss, orpo, -9.0)
    assert abs(o1 - o2) > 1e-3


# ----------------------------------------------------------------------------------------- dtype
@pytest.mark.parametrize("name", ["simpo", "cpo"])
def test_simpo_and_cpo_keep_the_input_dtype(name):
    fn, params = LOSSES[name]
    assert fn(pair(C, R, CL, RL, dtype=torch.float32), params).losses.dtype == torch.float32


# ----------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("cls,name,value", [
    (rf.SimPOParams, "beta", 0.0), (rf.SimPOParams, "beta", -2.0), (rf.SimPOParams, "beta", float("nan")),
    (rf.SimPOParams, "gamma_beta_ratio", -0.1), (rf.SimPOParams, "gamma_beta_ratio", float("inf")),
    (rf.SimPOParams, "label_smoothing", 0.5), (rf.SimPOParams, "label_smoothing", -0.01),
    (rf.SimPOParams, "sft_weight", -1.0), (rf.SimPOParams, "sft_weight", float("nan")),
    (rf.CPOParams, "beta", 0.0), (rf.CPOParams, "alpha", -0.5), (rf.CPOParams, "label_smoothing", 0.7),
    (rf.ORPOParams, "lam", 0.0), (rf.ORPOParams, "lam", float("nan")),
    (rf.ASFTParams, "lam", -0.1), (rf.ASFTParams, "beta", 0.0), (rf.ASFTParams, "beta", float("inf")),
])
def test_params_reject_out_of_range_values(cls, name, value):
    with pytest.raises(ParamError, match=f"^{name}"):
        cls(**{name: value})


def test_params_accept_zero_weights():
    assert rf.SimPOParams(gamma_beta_ratio=0.0, sft_weight=0.0).gamma_beta_ratio == 0.0
    assert rf.CPOParams(alpha=0.0).alpha == 0.0
