"""The online policy-gradient methods as registry entries: GRPO and its named variants, RLOO,
ReMax, OPO, pass@k, OTB, REINFORCE++ and PPO.

Each entry pairs the per-token loss of ``policy_gradient.py`` with an advantage rule of
``advantages.py``, of one of two kinds:
- sequence rules (``LossSpec.advantages``): the round's rewards, one row per prompt and one column
  per sample, to one advantage per sample; the step source calls it on the whole round's rewards,
  over every process, so a statistic of the batch is the batch's. ReMax's also gets the reward of
  each prompt's greedy answer (``LossSpec.greedy_baseline``), OPO's the length of every
  completion (``LossSpec.lengths``).
- token rules (``LossSpec.token_advantages``): a process's completions with their per-token
  log-probs (sampling policy, reference), for OTB each token's Σπ² and for PPO the critic's
  values (``RoundTokens``), to
  per-token advantages and returns. Each completion's are its own, so a process computes its
  share; the step source then whitens the advantages over every completion token of the round,
  on all processes (``whiten`` = True), as OpenRLHF normalises over its global batch.
The GRPO variants differ only in their defaults, so that ``--method dapo`` trains with the DAPO
paper's loss settings (its dynamic sampling, which refills a round with groups of differing
rewards, is the step source's ``dynamic_sampling``, a run setting), and each default is a field
the user can change.

Defaults and their sources:
- ``grpo``: TRL 1.16's ``GRPOConfig`` defaults: token-mean aggregation over the global batch
  (TRL's ``loss_type="dapo"``), ε = 0.2 on both sides, group-std scaling, β = 0 (no reference).
- ``dapo``: Yu et al. 2025 (DAPO): clip-higher ε_high = 0.28, completions cut at the length limit
  masked out, token-mean aggregation, β = 0.
- ``dr_grpo``: Liu et al. 2025 (Understanding R1-Zero-Like Training): no std scaling, a constant
  normaliser (the completion-length limit), β = 0.
- ``gspo``: Zheng et al. 2025 (Group Sequence Policy Optimization): one ratio per sequence,
  ε = 3e-4 / 4e-4 (the paper's), sequence-mean-token-mean aggregation as in TRL's GSPO example.
- ``luspo``: Liu et al. 2026 (Length-Unbiased Sequence Policy Optimization, arXiv 2602.05261): GSPO
  with each sequence's loss summed over its tokens rather than averaged (``seq_mean_token_sum``),
  so that a long sequence weighs by its length, as TRL 1.16's ``luspo``; sequence-level ratios
  (TRL's documentation requires them, though its default level is "token", with a warning) and
  GSPO's ε (TRL's default ε is 0.2).
- ``cispo``: MiniMax 2025 (MiniMax-M1, arXiv 2506.13585): the ratio, capped at ``cispo_max`` = 5, is a
  constant weight on A·log π, so no token loses its gradient; token-mean aggregation as TRL's
  ``cispo``. MiniMax-M1 writes the weight clip(c, 1 − ε_low, 1 + ε_high) with the lower bound set
  out of reach; the one-sided cap min(c, ε_max) is the form of ScaleRL (Khatri et al. 2025) and TRL,
  whose ``epsilon_high`` is the cap: 5 is the value TRL recommends for it (left unset, TRL's cap
  falls back to ε = 0.2).
- ``sapo``: Gao et al. 2025 (Soft Adaptive Policy Optimization, arXiv 2511.20347): a sigmoid gate in
  place of the clip, τ = 1.0 for positive and 1.05 for negative advantages (TRL's defaults);
  sequence-mean-token-mean aggregation as TRL's ``sapo``.
- ``vespo``: Variational Sequence-Level Soft Policy Optimization (arXiv 2602.10693): each
  sequence's tokens weighted by φ(w) = e^λ·w^k·e^{−λw} of its ratio w (the product of its token
  ratios and, when on, of the sampler's token weights), k = 2, λ = 3 for A ≥ 0 and k = 3, λ = 2
  below (TRL's defaults), token-mean aggregation as TRL's ``vespo``.
- ``gmpo``: Zhao et al. 2025 (Geometric-Mean Policy Optimization, arXiv 2507.20673): the geometric
  mean of a sequence's token ratios, each clipped in log space to ±0.4 (the paper's and verl's
  recipe: ``clip_ratio_low = clip_ratio_high = 0.4`` with ``loss_mode=geo_mean``), times its
  advantage, one loss per sequence (sequence-mean-token-mean aggregation: verl's mean over
  sequences); group-normalised advantages as the recipe's ``adv_estimator=grpo``.
- ``dppo``: Divergence Proximal Policy Optimization (arXiv 2602.04879), as verl's ``dppo_tv`` policy
  loss with its DPPO recipe's settings: a trust region of 0.15 on the change of each sampled
  token's probability (``surrogate="dppo_kl"``: on its binary KL; the recipe's bound for it is
  0.05), the ratio weight capped at 10⁴, each sequence's loss summed over its tokens and divided
  by the completion-length limit (``constant``, verl's ``seq-mean-token-sum-norm``), group-centred
  advantages without std scaling, β = 0.
- ``rloo``: Ahmadian et al. 2024 (Back to Basics): leave-one-out baseline, no std scaling; TRL
  wraps it in the PPO clip, as here (ε = 0.2).
- ``remax``: Li et al. 2023 (ReMax): A_i = r_i − r(greedy answer to the prompt), one greedy
  answer per prompt and round, sampled with the same generator at temperature 0; REINFORCE
  (with one update per round the clip never binds).
- ``opo``: Hao et al. 2025 (On-Policy RL with Optimal Reward Baseline, arXiv 2505.23585), as verl's
  ``adv_estimator=opo``: A_i = r_i − Σ_j |y_j|·r_j / Σ_j |y_j| over the prompt's samples, |y_j| the
  completion's tokens, no std scaling. The loss is verl's actor defaults (its OPO recipe changes
  only the estimator): the clip at ε = 0.2, token-mean aggregation, β = 0 (the recipe turns the KL
  loss and the entropy bonus off). OPO's exact on-policy training is one update per round
  (``updates_per_rollout`` = 1, the run's default) with the round's whole batch in one optimizer
  step, which alignlab's step always is.
- ``gpg``: Chu et al. 2025 (GPG, arXiv 2504.02546), as verl's ``adv_estimator=gpg`` with
  ``loss_mode=gpg``: the plain policy gradient −A·log π (no ratio, no clip, no KL), A = α·(r −
  mean of the group), α = B / (samples with a non-zero reward), token-mean aggregation.
- ``grpo_passk``: Tang et al. 2025 (Optimizing Language Models for Inference Time Objectives using
  Reinforcement Learning, arXiv 2503.19595), as verl's ``adv_estimator=grpo_passk``: only a
  prompt's best sample has an advantage, r_max − r_second_max (0 when the best is tied), divided by
  the group's std + 1e-6 (``scale_rewards="group"``: verl's ``norm_adv_by_std_in_grpo`` = True, its
  default); the loss as ``opo``'s (verl's actor defaults). Most advantages are 0, so
  ``skip_zero_advantage`` leaves most completions out of the forward and backward passes.
- ``otb``: the Optimal Token Baseline (arXiv 2602.07078), as verl's
  ``adv_estimator=optimal_token_baseline``: each token's baseline is the group's returns weighted by
  their accumulated energy Σ_{j≤t} (1 − 2π_j + Σπ²) under the policy at the round's start
  (``advantages.optimal_token_baseline``), with verl's ``handle_zero_tail`` on and its actor
  defaults for the loss (ε = 0.2, token-mean aggregation, β = 0).
- ``reinforce++``: Hu 2025 (REINFORCE++), as OpenRLHF's ``advantage_estimator=reinforce``: the
  per-token reward −β_KL·KL_t plus the score on the last token, returns with γ = 1, whitened over
  the round's tokens; KL_t is k1 of the sampling policy against the reference (OpenRLHF's default
  estimator) with β_KL = 0.01 (OpenRLHF's default ``init_kl_coef``). ``baseline="group"``
  subtracts each prompt's mean score first (OpenRLHF's ``reinforce_baseline``).
- ``ppo``: Schulman et al. 2017 with the RLHF shaping of Ouyang et al. 2022; the defaults of
  "Secrets of RLHF" (ALGORITHMS.md 6.5): β_KL = 0.05 (k1 in the reward), GAE γ = 1, λ = 0.95,
  ε = 0.2, value clip 0.2, vf_coef 0.1, advantages whitened. The critic is a value head on the
  policy's last hidden states (``critic="shared"``), a copy of the policy's network with its own
  head (``"separate"``), or a model or reward-model directory to start one from
  (``training/critic.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignlab.losses.advantages import (
    discounted_returns,
    gae,
    gpg_advantages,
    group_advantages,
    kl_estimate,
    opo_advantages,
    optimal_token_baseline,
    otb_energy,
    passk_advantages,
    remax_advantages,
    rloo_advantages,
    token_rewards,
)
from alignlab.losses.params import param, require, require_non_negative
from alignlab.losses.policy_gradient import PolicyGradientParams, PPOParams, policy_gradient_loss, ppo_loss
from alignlab.losses.registry import LossSpec, register
from alignlab.losses.surrogates import importance_weights

SCALES = ("group", "batch", "none")
PASSK_SCALES = ("group", "none")
KL_ESTIMATORS = ("k1", "k2", "k3")
BASELINES = ("none", "group")
MULTI_OBJECTIVE = ("sum_then_normalize", "normalize_then_sum")


@dataclass
class GRPOParams(PolicyGradientParams):
    scale_rewards: str = param("group", "advantage scaling: 'group' (divide by the group's std, GRPO), 'batch' "
                                        "(by the whole batch's std), 'none' (Dr. GRPO)")
    multi_objective_aggregation: str = param(
        "sum_then_normalize", "how several reward terms become advantages: 'sum_then_normalize' (their weighted sum "
                              "is the reward, scaled by scale_rewards) or 'normalize_then_sum' (GDPO: each term "
                              "normalised within its group, the weighted sum divided by its batch std; TRL's names)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.scale_rewards in SCALES, "scale_rewards", f"must be one of {SCALES}, got {self.scale_rewards!r}")
        require(self.multi_objective_aggregation in MULTI_OBJECTIVE, "multi_objective_aggregation",
                f"must be one of {MULTI_OBJECTIVE}, got {self.multi_objective_aggregation!r}")
        if self.multi_objective_aggregation == "normalize_then_sum":
            require(self.scale_rewards == "group", "scale_rewards", f"must be 'group' with multi_objective_aggregation "
                    f"'normalize_then_sum', which scales each term by its group's std and the sum by the batch's "
                    f"(got {self.scale_rewards!r})")


@dataclass
class DAPOParams(GRPOParams):
    eps_high: float = param(0.28, "ε_high: the ratio is clipped above at 1 + ε_high (DAPO's clip-higher)")
    mask_truncated: bool = param(True, "drop completions cut at the length limit from the loss (DAPO)")


@dataclass
class DrGRPOParams(GRPOParams):
    scale_rewards: str = param("none", "advantage scaling: 'none' (Dr. GRPO), 'group' or 'batch'")
    aggregation: str = param("constant", "'constant' (Dr. GRPO: the sum over tokens / the completion-length "
                                         "limit), 'token_mean' or 'seq_mean_token_mean'")


@dataclass
class GSPOParams(GRPOParams):
    ratio_level: str = param("sequence", "'sequence': one ratio per sequence (GSPO), or 'token'")
    eps_low: float = param(3e-4, "ε_low of the sequence ratio (GSPO paper: 3e-4)")
    eps_high: float = param(4e-4, "ε_high of the sequence ratio (GSPO paper: 4e-4)")
    aggregation: str = param("seq_mean_token_mean", "'seq_mean_token_mean', 'token_mean', 'seq_mean_token_sum' or "
                                                    "'constant'")


@dataclass
class LUSPOParams(GSPOParams):
    aggregation: str = param("seq_mean_token_sum", "'seq_mean_token_sum' (LUSPO: each sequence's loss summed "
                                                   "over its tokens, so weighted by its length), or another")


@dataclass
class CISPOParams(GRPOParams):
    surrogate: str = param("cispo", "'cispo' (the capped ratio as a constant weight on A·log π), 'clip', 'sapo' or "
                                    "'vespo'")


@dataclass
class SAPOParams(GRPOParams):
    surrogate: str = param("sapo", "'sapo' (a sigmoid gate in place of the clip), 'clip', 'cispo' or 'vespo'")
    aggregation: str = param("seq_mean_token_mean", "'seq_mean_token_mean' (as TRL's sapo), 'token_mean', "
                                                    "'seq_mean_token_sum' or 'constant'")


@dataclass
class VESPOParams(GRPOParams):
    surrogate: str = param("vespo", "'vespo' (a Gamma-shaped weight of the sequence's ratio on A·log π), 'clip', "
                                    "'cispo' or 'sapo'")


@dataclass
class GMPOParams(GRPOParams):
    surrogate: str = param("gmpo", "'gmpo' (the geometric mean of the token ratios, each clipped in log space), "
                                   "'clip', 'cispo', 'sapo' or 'vespo'")
    eps_low: float = param(0.4, "ε_low: GMPO clips each token's log-ratio below at −ε_low (paper and verl: 0.4)")
    eps_high: float = param(0.4, "ε_high: GMPO clips each token's log-ratio above at ε_high (paper and verl: 0.4)")
    aggregation: str = param("seq_mean_token_mean", "'seq_mean_token_mean' (GMPO's loss per sequence, averaged over "
                                                    "sequences), 'token_mean', 'seq_mean_token_sum' or 'constant'")


@dataclass
class DPPOParams(GRPOParams):
    surrogate: str = param("dppo_tv", "'dppo_tv' (DPPO-Binary-TV: a token's loss is 0 once its probability moved "
                                      "past eps_low / eps_high) or 'dppo_kl' (DPPO-Binary-KL: the binary KL of "
                                      "the token's probability past them; verl's recipe uses 0.05), or another "
                                      "surrogate")
    eps_low: float = param(0.15, "DPPO's trust region below: the bound of the decrease of a token's probability "
                                 "(TV; verl's DPPO recipe: 0.15 for TV, 0.05 for KL)")
    eps_high: float = param(0.15, "DPPO's trust region above: the bound of the increase of a token's probability "
                                  "(TV; verl's DPPO recipe: 0.15 for TV, 0.05 for KL)")
    aggregation: str = param("constant", "'constant' (verl's DPPO recipe: seq-mean-token-sum-norm, each sequence's "
                                         "sum over the completion-length limit), 'token_mean', 'seq_mean_token_mean' "
                                         "or 'seq_mean_token_sum'")
    scale_rewards: str = param("none", "advantage scaling: 'none' (verl's DPPO recipe: norm_adv_by_std_in_grpo "
                                       "False), 'group' or 'batch'")


@dataclass
class RLOOParams(PolicyGradientParams):
    """The leave-one-out baseline needs no scaling option."""


@dataclass
class ReMaxParams(PolicyGradientParams):
    """The greedy baseline needs no option."""


@dataclass
class OPOParams(PolicyGradientParams):
    """The length-weighted baseline needs no option."""


@dataclass
class GPGParams(PolicyGradientParams):
    surrogate: str = param("pg", "'pg' (GPG's plain policy gradient −A·log π, no ratio), or another surrogate")


@dataclass
class PassKParams(PolicyGradientParams):
    scale_rewards: str = param("group", "'group': the best sample's margin over the second best is divided by the "
                                        "group's std + 1e-6 (verl's norm_adv_by_std_in_grpo, its default), or 'none'")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.scale_rewards in PASSK_SCALES, "scale_rewards",
                f"must be one of {PASSK_SCALES}, got {self.scale_rewards!r}")


@dataclass
class OTBParams(PolicyGradientParams):
    zero_tail: bool = param(True, "where one completion is strictly the longest of its group, its tokens past the "
                                  "second longest get baseline 0 (verl's handle_zero_tail, its default)")


@dataclass
class KLRewardParams(PolicyGradientParams):
    """A per-token KL penalty in the reward, returns, and whitened advantages (REINFORCE++, PPO)."""

    kl_coef: float = param(0.01, "β_KL: the reward of token t is −β_KL·KL_t (+ the score on the last token); "
                                 "KL_t of the sampling policy to the reference (0: no reference)")
    kl_estimator: str = param("k1", "estimator of KL_t: 'k1' (log π_old/π_ref, OpenRLHF's default), 'k2', 'k3'")
    gamma: float = param(1.0, "γ: discount of the returns")
    whiten: bool = param(True, "normalise the advantages over every completion token of the round (all processes)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require_non_negative(self.kl_coef, "kl_coef")
        require(self.kl_estimator in KL_ESTIMATORS, "kl_estimator",
                f"must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}")
        require(0 <= self.gamma <= 1, "gamma", f"must be in [0, 1], got {self.gamma}")
        require(self.surrogate != "gmpo", "surrogate", "'gmpo' needs one advantage per sequence (it averages them "
                "and clips each token by its own advantage's sign); these advantages differ token by token")


@dataclass
class ReinforcePPParams(KLRewardParams):
    baseline: str = param("none", "'none' (REINFORCE++) or 'group': subtract each prompt's mean score first "
                                  "(REINFORCE++-baseline)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.baseline in BASELINES, "baseline", f"must be one of {BASELINES}, got {self.baseline!r}")


@dataclass
class PPOOnlineParams(PPOParams, KLRewardParams):
    kl_coef: float = param(0.05, "β_KL: the reward of token t is −β_KL·KL_t (+ the score on the last token); "
                                 "KL_t of the sampling policy to the reference (0: no reference)")
    lam: float = param(0.95, "λ of generalized advantage estimation")
    critic: str = param("shared", "the value model: 'shared' (a head on the policy's last hidden states), "
                                  "'separate' (a copy of the policy's network with its own head), or a model or "
                                  "reward-model directory to start a separate critic from")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 <= self.lam <= 1, "lam", f"must be in [0, 1], got {self.lam}")
        require(bool(self.critic), "critic", "give 'shared', 'separate' or a model directory")


@dataclass
class RoundTokens:
    """A process's completions of a round, as a token rule reads them: prompt-major, G per prompt,
    right-padded to T tokens, float64. ``old_logps_BT``: the sampling policy's log-probs as the
    trainer computes them; ``ref_logps_BT``: the reference's (None when the method has no KL);
    ``values_BT``: the critic's value of the state before each token (PPO)."""

    scores_PG: torch.Tensor
    mask_BT: torch.Tensor
    old_logps_BT: torch.Tensor | None = None
    ref_logps_BT: torch.Tensor | None = None
    values_BT: torch.Tensor | None = None
    sum_pi_sq_BT: torch.Tensor | None = None  # Σ_v π_v² where each token was drawn, at the round's start (OTB)
    sampler_logps_BT: torch.Tensor | None = None  # the sampler's own log-probs


def needs_reference(params) -> bool:
    """Whether an online method's params use the reference model: a KL term in the loss or the
    reward, or online DPO's implicit reward (its β is always > 0, so it always does)."""
    return getattr(params, "beta", 0.0) > 0 or getattr(params, "kl_coef", 0.0) > 0


def group_baseline(spec: LossSpec, params) -> str | None:
    """What makes an online method's advantage compare a prompt's samples with each other (the
    GRPO family's group-normalised rewards, RLOO's leave-one-out baseline, REINFORCE++'s group
    baseline, OPO's length-weighted baseline, pass@k's margin over the second best), or None: with
    one sample per prompt such an advantage is 0 for every sample."""
    if spec.advantages is grpo_advantages:
        return "its advantage is a reward minus its group's mean"
    if spec.advantages is rloo_group_advantages:
        return "its baseline is the mean reward of the prompt's other samples"
    if spec.advantages is opo_group_advantages:
        return "its baseline is the length-weighted mean reward of the prompt's samples"
    if spec.advantages is gpg_group_advantages:
        return "its baseline is the mean reward of the prompt's samples"
    if spec.advantages is passk_group_advantages:
        return "its advantage is the best sample's margin over the prompt's second best"
    if spec.token_advantages is reinforce_pp_token_advantages and getattr(params, "baseline", None) == "group":
        return "baseline 'group' subtracts the prompt's mean score"
    return None


def learns_nothing_from_tied_samples(spec: LossSpec, params, num_generations: int) -> str | None:
    """Why an online method learns nothing from the reward when every sample of a prompt is one
    completion (sampling with top_k 1, which keeps only the most likely token at each step: the
    samples differ only where two logits tie exactly), or None where it still learns. A reward is
    taken to score one completion alike each time.

    - The group baselines (``group_baseline``: the GRPO family, RLOO, OPO, GPG, pass@k, and
      REINFORCE++ with ``baseline="group"``): G equal rewards are their own mean (their own
      length-weighted mean, their own second best), so the reward adds nothing to any advantage,
      as with one sample per prompt. REINFORCE++'s group baseline leaves only the KL penalty in
      its per-token rewards (nothing at all with ``kl_coef`` 0).
    - ReMax: its baseline is the reward of the prompt's greedy answer, which each sample then is,
      so every advantage is 0, whatever G.
    - OTB with G >= 2: each token's baseline is the energy-weighted mean of the group's returns,
      which is the sample's own return R_t but for the ε = 1e-8 guard of its denominator: the
      advantage is R_t·ε/(G·W_t + ε). A token's energy term is the squared norm of its log-prob's
      gradient in the logits and W_t is at least that term, so A_t·∂log π_t/∂z is at most
      |R_t|·√(ε/G)/2 < 5e-5·|R_t| in norm (with an importance-sampling correction too, whose
      weight scales the energy by its square): nothing learned. With G = 1 OTB has no baseline
      (REINFORCE) and learns.
    - Online DPO: its two answers tie, and a tie adds no loss.
    Still learning, so not refused: REINFORCE++ without a group baseline whitens its returns over
    the whole round, across prompts, so a prompt whose one answer scores above the round's mean
    gets positive advantages and one below negative ones (the policy pushes its answer up where
    it scores well and down where it does not, which can change the answer); PPO's baseline is
    its critic's value, which the reward differs from until the critic has learned it.
    Small ``top_p`` is not refused either: it keeps the second most likely token wherever the most
    likely one has less probability than ``top_p``, which depends on the model."""
    from alignlab.losses.online_pref import pair_labels

    why = group_baseline(spec, params)
    if why is not None:
        return f"{why}, so the reward adds nothing to any advantage"
    if spec.greedy_baseline:
        return ("its baseline is the reward of the prompt's greedy answer, which each sample then is, so every "
                "advantage is 0")
    if spec.token_advantages is otb_token_advantages and num_generations >= 2:
        return ("each token's baseline is the energy-weighted mean of the group's returns, which is then the "
                "sample's own return (but for a 1e-8 guard), so every advantage is about 0")
    if spec.advantages is pair_labels:
        return "its two answers tie, and a tie adds no loss"
    return None


def grpo_advantages(rewards_PG: torch.Tensor, params: GRPOParams, greedy_P: torch.Tensor | None = None) -> torch.Tensor:
    """(P, G) rewards → (P, G) advantages with the params' scaling."""
    return group_advantages(rewards_PG, scale=params.scale_rewards)


def rloo_group_advantages(rewards_PG: torch.Tensor, params: RLOOParams,
                          greedy_P: torch.Tensor | None = None) -> torch.Tensor:
    return rloo_advantages(rewards_PG)


def remax_group_advantages(rewards_PG: torch.Tensor, params: ReMaxParams, greedy_P: torch.Tensor | None = None
                           ) -> torch.Tensor:
    if greedy_P is None:
        raise ValueError("remax needs the reward of each prompt's greedy answer")
    return remax_advantages(rewards_PG, greedy_P)


def opo_group_advantages(rewards_PG: torch.Tensor, params: OPOParams, greedy_P: torch.Tensor | None = None,
                         lengths_PG: torch.Tensor | None = None) -> torch.Tensor:
    if lengths_PG is None:
        raise ValueError("opo needs the length of each completion")
    return opo_advantages(rewards_PG, lengths_PG)


def gpg_group_advantages(rewards_PG: torch.Tensor, params: GPGParams, greedy_P: torch.Tensor | None = None
                         ) -> torch.Tensor:
    return gpg_advantages(rewards_PG)


def passk_group_advantages(rewards_PG: torch.Tensor, params: PassKParams,
                           greedy_P: torch.Tensor | None = None) -> torch.Tensor:
    return passk_advantages(rewards_PG, scale=params.scale_rewards)


def _token_rewards(r: RoundTokens, params: KLRewardParams, scores_PG: torch.Tensor) -> torch.Tensor:
    """−β_KL·KL_t on every token, plus the score on the last one (B, T)."""
    kl = None
    if params.kl_coef > 0:
        if r.old_logps_BT is None or r.ref_logps_BT is None:
            raise ValueError("kl_coef > 0 needs the sampling policy's and the reference's log-probs")
        kl = kl_estimate(r.old_logps_BT, r.ref_logps_BT, params.kl_estimator, r.mask_BT)
    return token_rewards(scores_PG.reshape(-1), r.mask_BT, kl, params.kl_coef)


def reinforce_pp_token_advantages(r: RoundTokens, params: ReinforcePPParams) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++: (advantages, returns) before whitening, both the returns G_t."""
    scores = r.scores_PG
    if params.baseline == "group":
        scores = scores - scores.mean(dim=1, keepdim=True)
    returns = discounted_returns(_token_rewards(r, params, scores), r.mask_BT, params.gamma)
    return returns.clone(), returns


def otb_token_advantages(r: RoundTokens, params: OTBParams) -> tuple[torch.Tensor, torch.Tensor]:
    """OTB: (advantages, returns) from the returns G_t (the score, on every token of its completion)
    and each token's energy under the policy at the round's start, scaled by ρ̄_t² under an
    importance-sampling correction (ρ̄ the weights the loss applies: ``importance_weights``)."""
    if r.old_logps_BT is None or r.sum_pi_sq_BT is None:
        raise ValueError("otb needs the policy's log-probs and Σπ² of every completion token at the round's start")
    returns = discounted_returns(token_rewards(r.scores_PG.reshape(-1), r.mask_BT), r.mask_BT)
    energy = otb_energy(r.old_logps_BT, r.sum_pi_sq_BT)
    if params.is_mode != "off":
        if r.sampler_logps_BT is None:
            raise ValueError(f"is_mode={params.is_mode!r} needs the sampler's log-probs")
        energy = energy * importance_weights(r.old_logps_BT, r.sampler_logps_BT, r.mask_BT, params.is_mode,
                                             params.is_clip_max, params.is_clip_min) ** 2
    group = r.scores_PG.shape[1]
    return optimal_token_baseline(returns, energy, r.mask_BT, group, zero_tail=params.zero_tail), returns


def ppo_token_advantages(r: RoundTokens, params: PPOOnlineParams) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO: GAE(γ, λ) advantages (before whitening) and returns (the value targets)."""
    if r.values_BT is None:
        raise ValueError("ppo needs the critic's values")
    return gae(_token_rewards(r, params, r.scores_PG), r.values_BT, r.mask_BT, gamma=params.gamma, lam=params.lam)


_GRPO_SUMMARY = "clipped policy gradient with group-normalised advantages (+ β·k3 KL)"
_SUMMARIES = {
    "cispo": "policy gradient weighted by the capped ratio sg(min(c, C)), group-normalised advantages (+ β·k3 KL)",
    "sapo": "policy gradient through a sigmoid gate on the ratio, group-normalised advantages (+ β·k3 KL)",
    "luspo": "GSPO's sequence-ratio clip, each sequence's loss summed over its tokens (+ β·k3 KL)",
    "vespo": "policy gradient weighted by a Gamma-shaped function of the sequence's ratio (+ β·k3 KL)",
    "gmpo": "the geometric mean of log-clipped token ratios times the advantage, per sequence (+ β·k3 KL)",
    "dppo": "the capped ratio as a constant weight on A·log π, 0 for a token whose probability left the trust "
            "region (+ β·k3 KL)",
}
for _name, _params, _paper in (
        ("grpo", GRPOParams, "Shao et al. 2024, DeepSeekMath (GRPO); defaults as TRL 1.16"),
        ("dapo", DAPOParams, "Yu et al. 2025, DAPO"),
        ("dr_grpo", DrGRPOParams, "Liu et al. 2025, Understanding R1-Zero-Like Training (Dr. GRPO)"),
        ("gspo", GSPOParams, "Zheng et al. 2025, Group Sequence Policy Optimization"),
        ("luspo", LUSPOParams, "Liu et al. 2026, Length-Unbiased Sequence Policy Optimization (LUSPO), "
                               "arXiv 2602.05261"),
        ("cispo", CISPOParams, "MiniMax 2025, MiniMax-M1 (CISPO), arXiv 2506.13585"),
        ("sapo", SAPOParams, "Gao et al. 2025, Soft Adaptive Policy Optimization (SAPO), arXiv 2511.20347"),
        ("vespo", VESPOParams, "Variational Sequence-Level Soft Policy Optimization (VESPO), arXiv 2602.10693"),
        ("gmpo", GMPOParams, "Zhao et al. 2025, Geometric-Mean Policy Optimization (GMPO), arXiv 2507.20673"),
        ("dppo", DPPOParams, "Divergence Proximal Policy Optimization (DPPO), Rethinking the Trust Region in LLM "
                             "Reinforcement Learning, arXiv 2602.04879; defaults as verl's DPPO recipe")):
    register(LossSpec(name=_name, fn=policy_gradient_loss, shape="online", params=_params, needs_reference=False,
                      paper=_paper, summary=_SUMMARIES.get(_name, _GRPO_SUMMARY), advantages=grpo_advantages))
register(LossSpec(name="rloo", fn=policy_gradient_loss, shape="online", params=RLOOParams, needs_reference=False,
                  paper="Ahmadian et al. 2024, Back to Basics (RLOO)",
                  summary="clipped policy gradient with a leave-one-out baseline", advantages=rloo_group_advantages))
register(LossSpec(name="remax", fn=policy_gradient_loss, shape="online", params=ReMaxParams, needs_reference=False,
                  paper="Li et al. 2023, ReMax", summary="policy gradient with the greedy answer's reward as baseline",
                  advantages=remax_group_advantages, greedy_baseline=True))
register(LossSpec(name="opo", fn=policy_gradient_loss, shape="online", params=OPOParams, needs_reference=False,
                  paper="Hao et al. 2025, On-Policy RL with Optimal Reward Baseline (OPO), arXiv 2505.23585; "
                        "defaults as verl",
                  summary="clipped policy gradient with the length-weighted mean reward of the group as baseline",
                  advantages=opo_group_advantages, lengths=True))
register(LossSpec(name="grpo_passk", fn=policy_gradient_loss, shape="online", params=PassKParams,
                  needs_reference=False,
                  paper="Tang et al. 2025, Optimizing Language Models for Inference Time Objectives using "
                        "Reinforcement Learning (pass@k), arXiv 2503.19595; defaults as verl",
                  summary="clipped policy gradient; only each group's best sample has an advantage, its margin over "
                          "the second best", advantages=passk_group_advantages))
register(LossSpec(name="gpg", fn=policy_gradient_loss, shape="online", params=GPGParams, needs_reference=False,
                  paper="Chu et al. 2025, GPG: A Simple and Strong Reinforcement Learning Baseline for Model "
                        "Reasoning, arXiv 2504.02546",
                  summary="plain policy gradient −A·log π with the group mean as baseline, scaled by the batch's "
                          "share of non-zero rewards", advantages=gpg_group_advantages))
register(LossSpec(name="otb", fn=policy_gradient_loss, shape="online", params=OTBParams, needs_reference=False,
                  paper="Optimal Token Baseline (OTB), arXiv 2602.07078; as verl's adv_estimator="
                        "optimal_token_baseline, with verl's actor defaults",
                  summary="clipped policy gradient; each token's baseline the group's returns weighted by their "
                          "accumulated energy Σ(1 − 2π + Σπ²)", token_advantages=otb_token_advantages,
                  sum_pi_squared=True))
# ``needs_reference``: what the defaults need (kl_coef > 0); a run loads the reference exactly when
# its params do (``needs_reference(params)``)
register(LossSpec(name="reinforce++", fn=policy_gradient_loss, shape="online", params=ReinforcePPParams,
                  needs_reference=True, paper="Hu 2025, REINFORCE++",
                  summary="clipped policy gradient, KL in the per-token reward, returns whitened over the batch",
                  token_advantages=reinforce_pp_token_advantages))
register(LossSpec(name="ppo", fn=ppo_loss, shape="online", params=PPOOnlineParams, needs_reference=True,
                  paper="Schulman et al. 2017, PPO; Ouyang et al. 2022 (RLHF); Zheng et al. 2023, Secrets of RLHF",
                  summary="clipped policy gradient with a critic: GAE over a KL-shaped per-token reward, "
                          "clipped value loss", token_advantages=ppo_token_advantages, value_model=True))
