"""Parity with TRL 1.16: every alignlab loss that TRL also has, against TRL's own loss code.

TRL's trainers are called without a model (tests/losses/trl_harness.py says how): its DPO, KTO and
reward trainers' ``_compute_loss``/``compute_loss`` with a stand-in that returns per-token log-probs
chosen here, the CPO and ORPO trainers' ``cpo_loss``/``odds_ratio_loss`` on log-prob tensors and their
``get_batch_loss_metrics`` on fixed logits. Inputs are random (seeded), in float64 unless TRL computes
in float32 itself, and losses and logged metrics must agree to 1e-9 (float64) or 1e-6 (float32),
relative and absolute.

TRL returns one number per batch, the mean over pairs; alignlab returns one loss per pair. So each
case runs TRL once per pair (comparing per pair) and once on the whole batch (comparing the mean).
Where the two conventions differ the mapping is written out at the case, with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch

from alignlab.losses import REGISTRY, get_loss
from alignlab.losses.reward import RewardModelParams, RewardPairs, reward_model_loss
from tests.losses import trl_harness as th

trl = pytest.importorskip("trl")

TOL64 = {"rtol": 1e-9, "atol": 1e-9}
TOL32 = {"rtol": 1e-6, "atol": 1e-6}  # TRL computes in float32: f-DPO's α-divergence, ORPO's odds ratio, EXO's log ε

REWARDS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
LOGPS = ("logps/chosen", "logps/rejected")
ALL = REWARDS + LOGPS
SEEDS = (0, 1)


def test_trl_is_the_version_the_docstrings_name():
    assert trl.__version__ == "1.16.0"


def close(actual: float, expected: float, tol: dict, what: str) -> None:
    assert math.isclose(actual, expected, rel_tol=tol["rtol"], abs_tol=tol["atol"]), \
        f"{what}: alignlab {actual!r}, TRL {expected!r}"


# ---------------------------------------------------------------------------------------------
# DPOTrainer: one alignlab method per loss_type (or setting)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    method: str  # alignlab's name (get_loss)
    params: dict  # alignlab's hyperparameters
    trl: dict  # keyword arguments of trl_harness.trl_dpo
    metrics: tuple = ALL  # logged metrics that mean the same in both
    per_pair: bool = True  # compare pair by pair (TRL run on one pair at a time)
    batch: bool = True  # compare the batch mean (TRL run on the whole batch)
    tol: dict = field(default_factory=lambda: TOL64)

    def __str__(self) -> str:
        return f"{self.method}{self.params}"


def _dpo_cases() -> list[Case]:
    cases = []

    def add(method, params_list, trl_of, **kw):
        for params in params_list:
            cases.append(Case(method, params, trl_of(**params), **kw))

    betas = [{"beta": b} for b in (0.1, 0.5, 2.0)]
    add("dpo", betas, lambda beta: {"loss_type": ["sigmoid"], "beta": beta})
    # DOVE is DPO on joint pairs: the rejected response answers another prompt (3 tokens here).
    add("dove", betas, lambda beta: {"loss_type": ["sigmoid"], "beta": beta, "rejected_prompt_len": 3})
    add("hinge", [{"beta": b} for b in (0.1, 0.5, 3.0)], lambda beta: {"loss_type": ["hinge"], "beta": beta})
    # IPO: TRL's beta is τ; both use token-mean log-ratios and log rewards β·ρ (summed).
    add("ipo", [{"beta": b} for b in (0.1, 0.5, 1.0)], lambda beta: {"loss_type": ["ipo"], "beta": beta})
    # LN-DPO = sigmoid_norm. TRL logs rewards/* as β·ρ (summed); alignlab logs β·ρ̄ (token means),
    # the quantity the loss compares, so only the log-prob metrics are compared.
    add("ln-dpo", [{"beta": b} for b in (0.5, 2.0, 5.0)],
        lambda beta: {"loss_type": ["sigmoid_norm"], "beta": beta}, metrics=LOGPS)
    # RPO = loss_type ["sigmoid", "sft"] with loss_weights [1, η] (or [1, η·β] with eta_times_beta).
    # TRL's SFT term is the NLL averaged over all chosen tokens of the batch, alignlab's the per-pair
    # token mean: equal on one pair, so this case compares pair by pair; the batch mapping is
    # test_rpo_batch_sft_term_is_token_weighted_in_trl.
    add("rpo", [{"beta": 0.01, "eta": 0.005}, {"beta": 0.1, "eta": 0.5}],
        lambda beta, eta: {"loss_type": ["sigmoid", "sft"], "beta": beta, "loss_weights": [1.0, eta]}, batch=False)
    add("rpo", [{"beta": 0.2, "eta": 0.5, "eta_times_beta": True}],
        lambda beta, eta, eta_times_beta: {"loss_type": ["sigmoid", "sft"], "beta": beta,
                                           "loss_weights": [1.0, eta * beta]}, batch=False)
    # The combination formula gives the same objective as RPO.
    add("dpo+0.005*sft", [{"beta": 0.01}],
        lambda beta: {"loss_type": ["sigmoid", "sft"], "beta": beta, "loss_weights": [1.0, 0.005]}, batch=False)
    # cDPO: TRL 1.16's sigmoid ignores label_smoothing; its aot with label smoothing on a batch of
    # one pair is −(1 − ε)·log σ(h) − ε·log σ(−h) (sorting one value is the identity). So pair by
    # pair only: on a larger batch TRL's aot is another loss.
    add("cdpo", [{"beta": 0.1, "epsilon": 0.1}, {"beta": 0.5, "epsilon": 0.3}, {"beta": 1.0, "epsilon": 0.0}],
        lambda beta, epsilon: {"loss_type": ["aot"], "beta": beta, "label_smoothing": epsilon}, batch=False)
    add("rdpo", [{"beta": 0.1, "epsilon": 0.1}, {"beta": 0.5, "epsilon": 0.3}, {"beta": 1.0, "epsilon": 0.45}],
        lambda beta, epsilon: {"loss_type": ["robust"], "beta": beta, "label_smoothing": epsilon})
    # EXO: TRL reads ε from label_smoothing, and takes log ε and log(1 − ε) of a float32 tensor.
    add("exo", [{"beta": 0.1, "epsilon": 1e-3}, {"beta": 0.5, "epsilon": 0.1}, {"beta": 1.0, "epsilon": 0.3}],
        lambda beta, epsilon: {"loss_type": ["exo_pair"], "beta": beta, "label_smoothing": epsilon}, tol=TOL32)
    add("nca", betas, lambda beta: {"loss_type": ["nca_pair"], "beta": beta})
    # BCO-pair: TRL 1.16 has no reward shift δ; alignlab's reward_shift=False is that form.
    add("bco-pair", [{"beta": b, "reward_shift": False} for b in (0.1, 0.5, 2.0)],
        lambda beta, reward_shift: {"loss_type": ["bco_pair"], "beta": beta})
    add("sppo-hard", betas, lambda beta: {"loss_type": ["sppo_hard"], "beta": beta})
    # AOT sorts over the batch: losses[i] belongs to the i-th quantile, so only the batch mean compares.
    aot = [{"beta": 0.1, "label_smoothing": 0.0}, {"beta": 0.5, "label_smoothing": 0.2},
           {"beta": 2.0, "label_smoothing": 0.4}]
    add("aot", aot, lambda beta, label_smoothing: {"loss_type": ["aot"], "beta": beta,
                                                    "label_smoothing": label_smoothing}, per_pair=False)
    add("aot-unpaired", aot, lambda beta, label_smoothing: {"loss_type": ["aot_unpaired"], "beta": beta,
                                                             "label_smoothing": label_smoothing}, per_pair=False)
    add("apo-zero", betas, lambda beta: {"loss_type": ["apo_zero"], "beta": beta})
    add("apo-down", betas, lambda beta: {"loss_type": ["apo_down"], "beta": beta})
    add("discopop", [{"beta": 0.1, "tau": 0.05}, {"beta": 0.5, "tau": 0.2}, {"beta": 2.0, "tau": 1.0}],
        lambda beta, tau: {"loss_type": ["discopop"], "beta": beta, "discopop_tau": tau})
    # f-DPO: TRL's f_divergence_type on the sigmoid loss. TRL logs rewards/* as β·ρ whatever the
    # divergence; alignlab logs β·s(ρ), the scores the loss compares (the same for reverse KL). TRL
    # keeps the constants alignlab drops (1 − e^{−ρ}, log 2 + log σ(ρ)); they cancel in the margin.
    add("f-dpo-reverse-kl", [{"beta": b} for b in (0.1, 0.5)],
        lambda beta: {"loss_type": ["sigmoid"], "beta": beta, "f_divergence_type": "reverse_kl"})
    add("f-dpo-forward-kl", [{"beta": b} for b in (0.1, 0.5)],
        lambda beta: {"loss_type": ["sigmoid"], "beta": beta, "f_divergence_type": "forward_kl"}, metrics=LOGPS)
    add("f-dpo-js", betas, lambda beta: {"loss_type": ["sigmoid"], "beta": beta,
                                          "f_divergence_type": "js_divergence"}, metrics=LOGPS)
    # α-divergence: TRL's coefficient a is 1 − α, and TRL computes the scores in float32 (its clamp
    # table has no float64 entry), so TRL runs in float32 on the same (exactly representable) inputs.
    add("f-dpo-alpha", [{"beta": 0.1, "alpha": 0.5}, {"beta": 0.5, "alpha": 0.3}, {"beta": 1.0, "alpha": 0.8}],
        lambda beta, alpha: {"loss_type": ["sigmoid"], "beta": beta, "f_divergence_type": "alpha_divergence",
                             "f_alpha_divergence_coef": 1.0 - alpha, "dtype": torch.float32},
        metrics=LOGPS, tol=TOL32)
    # LD-DPO = ld_alpha; TRL 1.16 desensitizes policy and reference alike, alignlab's default. TRL logs
    # the desensitized log-probs under logps/*, alignlab the plain sums, so only rewards compare.
    add("ld-dpo", [{"beta": 0.1, "alpha": 0.5}, {"beta": 0.5, "alpha": 0.0}, {"beta": 1.0, "alpha": 0.8},
                   {"beta": 0.3, "alpha": 1.0}],
        lambda beta, alpha: {"loss_type": ["sigmoid"], "beta": beta, "ld_alpha": alpha}, metrics=REWARDS)
    # WPO = use_weighting; TRL 1.16 does not cap the weight (alignlab's clamp_weight=False).
    add("wpo", [{"beta": b, "clamp_weight": False} for b in (0.1, 0.5, 2.0)],
        lambda beta, clamp_weight: {"loss_type": ["sigmoid"], "beta": beta, "use_weighting": True})
    return cases


DPO_CASES = _dpo_cases()


def _alignlab(case: Case, pairs: th.Pairs):
    spec = get_loss(case.method)
    return spec.fn(th.pair_logps(pairs), spec.params(**case.params))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", [c for c in DPO_CASES if c.per_pair], ids=str)
def test_dpo_trainer_pair_by_pair(case, seed):
    pairs = th.random_pairs(seed)
    out = _alignlab(case, pairs)
    for i in range(len(pairs)):
        loss, metrics = th.trl_dpo(pairs.pick(i), **case.trl)
        close(float(out.losses[i]), loss, case.tol, f"{case} pair {i}: loss")
        for name in case.metrics:
            close(float(out.metrics[name][i]), metrics[name], case.tol, f"{case} pair {i}: {name}")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", [c for c in DPO_CASES if c.batch], ids=str)
def test_dpo_trainer_batch_mean(case, seed):
    pairs = th.random_pairs(seed)
    out = _alignlab(case, pairs)
    loss, metrics = th.trl_dpo(pairs, **case.trl)
    close(float(out.losses.mean()), loss, case.tol, f"{case}: loss")
    for name in case.metrics:
        close(float(out.metrics[name].mean()), metrics[name], case.tol, f"{case}: {name}")


@pytest.mark.parametrize("seed", SEEDS)
def test_rpo_batch_sft_term_is_token_weighted_in_trl(seed):
    """TRL's batch: mean DPO loss + η·(Σ_i n_i·NLL_i)/(Σ_i n_i), the NLL over all chosen tokens of the
    batch; alignlab's per-pair loss DPO_i + η·NLL_i with NLL_i the token mean of pair i. The DPO part
    is taken from alignlab's DPO loss (compared with TRL above) and NLL_i from the inputs."""
    pairs = th.random_pairs(seed)
    beta, eta = 0.1, 0.5
    lengths = [len(c) for c in pairs.chosen]
    nll = [-sum(c) / len(c) for c in pairs.chosen]
    token_weighted = sum(n * x for n, x in zip(lengths, nll, strict=True)) / sum(lengths)
    dpo = get_loss("dpo").fn(th.pair_logps(pairs), get_loss("dpo").params(beta=beta)).losses
    rpo = get_loss("rpo").fn(th.pair_logps(pairs), get_loss("rpo").params(beta=beta, eta=eta)).losses
    torch.testing.assert_close(rpo, dpo + eta * torch.tensor(nll, dtype=torch.float64), **TOL64)
    loss, _ = th.trl_dpo(pairs, loss_type=["sigmoid", "sft"], beta=beta, loss_weights=[1.0, eta])
    close(float(dpo.mean()) + eta * token_weighted, loss, TOL64, "rpo batch")
    assert len(set(lengths)) > 1 and abs(token_weighted - sum(nll) / len(nll)) > 1e-3  # the mapping matters here


def test_ld_dpo_policy_only_option_is_not_trl_1_16():
    """desensitize_reference=False (TRL 0.18-0.28) differs from TRL 1.16's ld_alpha wherever a pair's
    responses differ in length; the default matches it (test_dpo_trainer_*)."""
    pairs = th.random_pairs(0)
    assert any(len(c) != len(r) for c, r in zip(pairs.chosen, pairs.rejected, strict=True))
    spec = get_loss("ld-dpo")
    old = spec.fn(th.pair_logps(pairs), spec.params(alpha=0.5, desensitize_reference=False))
    loss, _ = th.trl_dpo(pairs, loss_type=["sigmoid"], beta=0.1, ld_alpha=0.5)
    assert abs(float(old.losses.mean()) - loss) > 1e-3


# ---------------------------------------------------------------------------------------------
# CPOTrainer (CPO, SimPO) and ORPOTrainer
# ---------------------------------------------------------------------------------------------

CPO_PARAMS = [{"beta": 0.1, "alpha": 1.0, "label_smoothing": 0.0}, {"beta": 0.5, "alpha": 0.3, "label_smoothing": 0.2},
              {"beta": 1.0, "alpha": 0.0, "label_smoothing": 0.1}]
# TRL's simpo_gamma is γ = β·(γ/β); its cpo_alpha is SimPO's sft_weight.
SIMPO_PARAMS = [{"beta": 2.0, "gamma_beta_ratio": 0.25, "label_smoothing": 0.0, "sft_weight": 0.0},
                {"beta": 2.5, "gamma_beta_ratio": 0.55, "label_smoothing": 0.1, "sft_weight": 0.5},
                {"beta": 10.0, "gamma_beta_ratio": 0.5, "label_smoothing": 0.3, "sft_weight": 1.0}]
ORPO_LAMBDAS = (0.1, 0.5, 1.0)


def _cpo_trainer(method: str, params: dict):
    if method == "cpo":
        return th.cpo_trainer(loss_type="sigmoid", beta=params["beta"], label_smoothing=params["label_smoothing"],
                              cpo_alpha=params["alpha"])
    return th.cpo_trainer(loss_type="simpo", beta=params["beta"], label_smoothing=params["label_smoothing"],
                          cpo_alpha=params["sft_weight"], simpo_gamma=params["beta"] * params["gamma_beta_ratio"])


CPO_CASES = [("cpo", p) for p in CPO_PARAMS] + [("simpo", p) for p in SIMPO_PARAMS]


@pytest.mark.parametrize("method,params", CPO_CASES)
def test_cpo_trainer_cpo_loss_on_log_prob_tensors(method, params):
    """CPOTrainer.cpo_loss: per-pair preference losses and rewards from log-prob tensors (summed for
    sigmoid, token means for simpo, as TRL's forward hands them over). alignlab's NLL term is switched
    off (α = 0 / sft_weight = 0); TRL adds its NLL outside cpo_loss."""
    logps = th.pair_logps(th.random_pairs(3))
    spec = get_loss(method)
    no_nll = {**params, ("alpha" if method == "cpo" else "sft_weight"): 0.0}
    out = spec.fn(logps, spec.params(**no_nll))
    if method == "cpo":
        chosen, rejected = logps.chosen, logps.rejected
    else:
        chosen, rejected = logps.chosen_mean, logps.rejected_mean
    losses, r_chosen, r_rejected = _cpo_trainer(method, params).cpo_loss(chosen, rejected)
    torch.testing.assert_close(out.losses, losses, **TOL64)
    torch.testing.assert_close(out.metrics["rewards/chosen"], r_chosen, **TOL64)
    torch.testing.assert_close(out.metrics["rewards/rejected"], r_rejected, **TOL64)


@pytest.mark.parametrize("method,params", CPO_CASES)
def test_cpo_trainer_whole_loss_pair_by_pair(method, params):
    """get_batch_loss_metrics on one pair at a time: the preference loss plus cpo_alpha times the
    NLL of the chosen response's tokens, which on one pair is alignlab's per-pair token mean."""
    pairs = th.random_logit_pairs(4)
    logps = pairs.pair_logps()
    out = get_loss(method).fn(logps, get_loss(method).params(**params))
    for i in range(pairs.n):
        one = _one_pair(pairs, i)
        loss, metrics = th.trl_full_loss(_cpo_trainer(method, params), one)
        close(float(out.losses[i]), loss, TOL64, f"{method}{params} pair {i}: loss")
        for name in REWARDS:
            close(float(out.metrics[name][i]), metrics[name], TOL64, f"{method}{params} pair {i}: {name}")
        for name, length in (("logps/chosen", logps.chosen_len[i]), ("logps/rejected", logps.rejected_len[i])):
            # TRL logs the log-probs its loss uses: token means for simpo; alignlab logs the sums.
            per = float(length) if method == "simpo" else 1.0
            close(float(out.metrics[name][i]) / per, metrics[name], TOL64, f"{method}{params} pair {i}: {name}")
        if metrics["nll_loss"] != 0.0:  # TRL logs 0 when cpo_alpha = 0
            close(float(out.metrics["nll"][i]), metrics["nll_loss"], TOL64, f"{method}{params} pair {i}: nll")


def _one_pair(pairs: th.LogitPairs, i: int) -> th.LogitPairs:
    rows = [i, pairs.n + i]
    return th.LogitPairs(pairs.input_ids[rows], pairs.attention_mask[rows], pairs.labels[rows], pairs.logits[rows],
                         pairs.prompt_len)


def _chosen_nll(pairs: th.LogitPairs) -> tuple[list[float], list[int]]:
    per_token, mask = pairs.token_logps()
    sums, lengths = per_token[:pairs.n].sum(dim=1), mask[:pairs.n].sum(dim=1)
    return (-sums / lengths).tolist(), lengths.tolist()


def test_cpo_trainer_batch_nll_is_token_weighted():
    """On a batch TRL's NLL is the mean over all chosen tokens, Σ_i n_i·NLL_i / Σ_i n_i; alignlab's is
    the mean over pairs of per-pair token means. TRL's loss = mean preference loss + α·that."""
    pairs = th.random_logit_pairs(5)
    params = CPO_PARAMS[1]
    spec = get_loss("cpo")
    no_nll = spec.fn(pairs.pair_logps(), spec.params(**{**params, "alpha": 0.0})).losses
    nll, lengths = _chosen_nll(pairs)
    token_weighted = sum(n * x for n, x in zip(lengths, nll, strict=True)) / sum(lengths)
    loss, metrics = th.trl_full_loss(_cpo_trainer("cpo", params), pairs)
    close(metrics["nll_loss"], token_weighted, TOL64, "cpo batch nll")
    close(float(no_nll.mean()) + params["alpha"] * token_weighted, loss, TOL64, "cpo batch loss")
    with_nll = spec.fn(pairs.pair_logps(), spec.params(**params))
    torch.testing.assert_close(with_nll.metrics["nll"], torch.tensor(nll, dtype=torch.float64), **TOL64)


ORPO_CASES = [("orpo", {"lam": lam}) for lam in ORPO_LAMBDAS]


@pytest.mark.parametrize("method,params", ORPO_CASES)
def test_orpo_trainer_odds_ratio_loss_on_log_prob_tensors(method, params):
    """ORPOTrainer.odds_ratio_loss returns λ·log σ(z) per pair (z the log odds ratio), which TRL
    subtracts from its NLL; alignlab's per-pair loss is NLL_i − λ·log σ(z_i), NLL_i = −ℓ̄(y_w).
    TRL computes in float32."""
    pairs = th.random_pairs(6)
    logps = th.pair_logps(pairs)
    out = get_loss(method).fn(logps, get_loss(method).params(**params))
    trainer = th.orpo_trainer(beta=params["lam"])
    ratio_term, r_chosen, r_rejected, mean_ratio, mean_log_odds = trainer.odds_ratio_loss(
        logps.chosen_mean, logps.rejected_mean)
    nll = torch.tensor([-sum(c) / len(c) for c in pairs.chosen], dtype=torch.float64)
    torch.testing.assert_close(out.losses, nll - ratio_term.double(), **TOL32)
    torch.testing.assert_close(out.metrics["rewards/chosen"], r_chosen.double(), **TOL32)
    torch.testing.assert_close(out.metrics["rewards/rejected"], r_rejected.double(), **TOL32)
    close(float(out.metrics["log_odds_ratio"].mean()), float(mean_ratio), TOL32, "log_odds_ratio")
    close(float(out.metrics["log_odds_chosen"].mean()), float(mean_log_odds), TOL32, "log_odds_chosen")


@pytest.mark.parametrize("method,params", ORPO_CASES)
def test_orpo_trainer_whole_loss_pair_by_pair(method, params):
    """get_batch_loss_metrics on one pair at a time, with a one-token prompt (see the next test)."""
    pairs = th.random_logit_pairs(7)
    logps = pairs.pair_logps()
    out = get_loss(method).fn(logps, get_loss(method).params(**params))
    for i in range(pairs.n):
        loss, metrics = th.trl_full_loss(th.orpo_trainer(beta=params["lam"]), _one_pair(pairs, i))
        what = f"orpo{params} pair {i}"
        close(float(out.losses[i]), loss, TOL32, f"{what}: loss")
        for name in (*REWARDS, "log_odds_ratio", "log_odds_chosen"):
            close(float(out.metrics[name][i]), metrics[name], TOL32, f"{what}: {name}")
        # TRL logs token-mean log-probs under logps/*; alignlab logs the sums.
        close(float(out.metrics["logps/chosen"][i] / logps.chosen_len[i]), metrics["logps/chosen"], TOL64, what)
        close(float(out.metrics["logps/rejected"][i] / logps.rejected_len[i]), metrics["logps/rejected"], TOL64, what)
        close(float(out.metrics["nll"][i]), metrics["nll_loss"], TOL64, f"{what}: nll")


def test_orpo_trainer_nll_also_covers_the_prompt():
    """A deliberate difference: TRL 1.16's ORPO NLL averages over the chosen row's prompt and response
    tokens (all predicted tokens with attention), alignlab's over the response only, like every
    alignlab loss. With a one-token prompt (never predicted) they agree (previous test); with a
    three-token prompt TRL's NLL also counts prompt tokens 2 and 3, and the rest of the loss agrees."""
    pairs = th.random_logit_pairs(8, n=1, prompt_len=3)
    logp = torch.log_softmax(pairs.logits[:, :-1], dim=-1)
    target = pairs.input_ids[:, 1:]
    picked = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    seen = pairs.attention_mask[:, 1:].bool()
    trl_nll = float(-picked[0][seen[0]].mean())  # chosen row, prompt tokens 2.. and the response
    out = get_loss("orpo").fn(pairs.pair_logps(), get_loss("orpo").params(lam=0.5))
    loss, metrics = th.trl_full_loss(th.orpo_trainer(beta=0.5), pairs)
    close(metrics["nll_loss"], trl_nll, TOL64, "TRL's nll")
    assert abs(trl_nll - float(out.metrics["nll"][0])) > 1e-3
    close(float(out.losses[0]) - float(out.metrics["nll"][0]), loss - trl_nll, TOL32, "odds-ratio part")


# ---------------------------------------------------------------------------------------------
# KTOTrainer
# ---------------------------------------------------------------------------------------------

KTO_CASES = [
    ("kto", {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0}, 20),
    ("kto", {"beta": 0.5, "desirable_weight": 1.33, "undesirable_weight": 1.0}, -20),  # KL estimate < 0 → 0
    ("kto", {"beta": 2.0, "desirable_weight": 1.0, "undesirable_weight": 0.5}, 40),
]


@pytest.mark.parametrize("labels", [[True, False, True, True, False, False], [True, True, False]])
@pytest.mark.parametrize("method,params,kl_shift", KTO_CASES)
def test_kto_trainer(method, params, kl_shift, labels):
    """The batch mean of the per-example losses, the reference point z0 (TRL's "kl"), and TRL's
    per-class means of the rewards and log-probs, from alignlab's per-example metrics."""
    data = th.random_unpaired(11, labels, kl_shift=kl_shift)
    out = get_loss(method).fn(th.unpaired_logps(data), get_loss(method).params(**params))
    loss, metrics = th.trl_kto(data, **params)
    close(float(out.losses.mean()), loss, TOL64, "loss")
    close(float(out.metrics["kl"][0]), metrics["kl"], TOL64, "kl")
    assert metrics["kl"] == 0.0 if kl_shift < 0 else metrics["kl"] > 0.0  # clamped, or a real estimate
    desirable = torch.tensor(labels)
    expected = {
        "rewards/chosen": out.metrics["rewards"][desirable].mean(),
        "rewards/rejected": out.metrics["rewards"][~desirable].mean(),
        "logps/chosen": out.metrics["logps"][desirable].mean(),
        "logps/rejected": out.metrics["logps"][~desirable].mean(),
    }
    for name, value in expected.items():
        close(float(value), metrics[name], TOL64, name)
    close(float(expected["rewards/chosen"] - expected["rewards/rejected"]), metrics["rewards/margins"], TOL64,
          "rewards/margins")


# ---------------------------------------------------------------------------------------------
# RewardTrainer (Bradley-Terry)
# ---------------------------------------------------------------------------------------------

REWARD_CASES = [("reward_model", margin, center) for margin in (False, True) for center in (None, 0.01)]


@pytest.mark.parametrize("method,with_margin,center", REWARD_CASES)
def test_reward_trainer(method, with_margin, center):
    """RewardTrainer.compute_loss: mean of −log σ(r_w − r_l − m) plus c·mean((r_w + r_l)²); TRL's
    center_rewards_coefficient None is alignlab's center_coef 0."""
    gen = torch.Generator().manual_seed(9)
    r_chosen, r_rejected = (torch.randn(5, generator=gen, dtype=torch.float64) for _ in range(2))
    margin = torch.rand(5, generator=gen, dtype=torch.float64) if with_margin else None
    assert get_loss(method).fn is reward_model_loss
    out = reward_model_loss(RewardPairs(r_chosen[:, None], r_rejected[:, None], margin),
                            RewardModelParams(objective="bt", center_coef=center or 0.0))
    loss, metrics = th.trl_reward(r_chosen, r_rejected, margin, center)
    close(float(out.losses.mean()), loss, TOL64, "loss")
    close(float(out.metrics["rewards/accuracies"].mean()), metrics["accuracy"], TOL64, "accuracy")
    close(float(out.metrics["rewards/margins"].mean()), metrics["margin"], TOL64, "margin")


# ---------------------------------------------------------------------------------------------
# Coverage
# ---------------------------------------------------------------------------------------------

COVERED = sorted({c.method for c in DPO_CASES} | {m for m, _ in CPO_CASES} | {m for m, _ in ORPO_CASES}
                 | {m for m, _, _ in KTO_CASES} | {m for m, _, _ in REWARD_CASES})


def test_at_least_twenty_loss_types_are_compared_with_trl():
    methods = [m for m in COVERED if m in REGISTRY]  # combinations such as dpo+0.005*sft not counted
    print(f"{len(methods)} alignlab losses compared with TRL {trl.__version__}: {', '.join(methods)}")
    assert all(m in REGISTRY or "+" in m for m in COVERED)
    assert len(methods) >= 20, methods
