"""Runs TRL 1.16's own loss code on log-probs chosen by a test, with no model.

Each TRL trainer object is made with ``object.__new__`` (its ``__init__`` would want a model, a
tokenizer and a dataset) and given only the attributes its loss code reads. Where that code calls a
model, a stand-in answers:

- ``TokenTable`` for the DPO and KTO trainers, which call ``model(..., labels=..., fused_lm_head=True)``
  and read per-token log-probs from the returned ``FusedCausalLMOutput``. Every response token of a
  batch gets a token id of its own and the stand-in returns the log-prob the test stored for that id,
  so the test sets each per-token log-prob of policy and reference.
- ``FixedLogits`` for the CPO and ORPO trainers, which compute log-probs from ``outputs.logits``
  themselves: the test draws the logits and computes the same log-probs on its own.
- ``FixedRewards`` for the reward trainer.

Per-token log-probs are multiples of 1/64, so their sums are exact in float32 and float64 alike.
Nothing here imports the code under test beyond the input containers (``PairLogps`` etc.).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from alignlab.losses.types import PairLogps, UnpairedLogps

CPU = torch.device("cpu")


def fake_accelerator() -> SimpleNamespace:
    """One process: gathering returns the tensor itself."""
    return SimpleNamespace(device=CPU, gather=lambda x: x, gather_for_metrics=lambda x: x, unwrap_model=lambda m: m)


def token_values(rng: random.Random, n: int, low: int = 1, high: int = 160) -> list[float]:
    """n per-token log-probs −k/64, k uniform in [low, high]."""
    return [-rng.randint(low, high) / 64 for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# Pairs of responses, as per-token log-probs
# ---------------------------------------------------------------------------------------------


@dataclass
class Pairs:
    """Per pair: the per-token log-probs of the chosen and rejected responses under the policy and the
    reference, and Σ_v π(v)² per token (log) for WPO. Each is a list (one per pair) of lists."""

    chosen: list[list[float]]
    rejected: list[list[float]]
    ref_chosen: list[list[float]]
    ref_rejected: list[list[float]]
    chosen_sq: list[list[float]]
    rejected_sq: list[list[float]]

    def __len__(self) -> int:
        return len(self.chosen)

    def pick(self, i: int) -> Pairs:
        return Pairs(*([getattr(self, f)[i]] for f in
                       ("chosen", "rejected", "ref_chosen", "ref_rejected", "chosen_sq", "rejected_sq")))


def random_pairs(seed: int, n: int = 4, max_len: int = 6) -> Pairs:
    """n pairs with response lengths 1..max_len drawn independently for chosen and rejected."""
    rng = random.Random(seed)
    out: dict[str, list] = {k: [] for k in ("chosen", "rejected", "ref_chosen", "ref_rejected", "chosen_sq",
                                            "rejected_sq")}
    for _ in range(n):
        for side in ("chosen", "rejected"):
            length = rng.randint(1, max_len)
            out[side].append(token_values(rng, length))
            out[f"ref_{side}"].append(token_values(rng, length))
            out[f"{side}_sq"].append(token_values(rng, length, 8, 96))
    return Pairs(**out)


def _left_aligned(rows: list[list[float]], dtype: torch.dtype) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [0.0] * (width - len(r)) for r in rows], dtype=dtype)


def pair_logps(p: Pairs, dtype: torch.dtype = torch.float64) -> PairLogps:
    """alignlab's input for the pairs: sums, lengths, per-token fields and the WPO masses."""
    def sums(rows):
        return torch.tensor([sum(r) for r in rows], dtype=dtype)

    def lengths(rows):
        return torch.tensor([len(r) for r in rows])

    return PairLogps(
        chosen=sums(p.chosen), rejected=sums(p.rejected), chosen_len=lengths(p.chosen),
        rejected_len=lengths(p.rejected), ref_chosen=sums(p.ref_chosen), ref_rejected=sums(p.ref_rejected),
        chosen_tokens=_left_aligned(p.chosen, dtype), rejected_tokens=_left_aligned(p.rejected, dtype),
        ref_chosen_tokens=_left_aligned(p.ref_chosen, dtype), ref_rejected_tokens=_left_aligned(p.ref_rejected, dtype),
        chosen_sqmass=sums(p.chosen_sq), rejected_sqmass=sums(p.rejected_sq),
    )


# ---------------------------------------------------------------------------------------------
# A model stand-in for TRL's fused LM head
# ---------------------------------------------------------------------------------------------


class TokenTable(torch.nn.Module):
    """Log-prob of the label token = table[token id]; per-token fields are zero where the label is −100,
    as TRL's fused head returns them. Entropy, mean logits and top-1 are zeros (TRL only logs them)."""

    is_gradient_checkpointing = False

    def __init__(self, logps: torch.Tensor, log_sum_sq: torch.Tensor | None = None):
        super().__init__()
        self.logps, self.log_sum_sq = logps, log_sum_sq

    def forward(self, input_ids=None, attention_mask=None, labels=None, fused_lm_head=False, **kwargs):
        from trl.trainer.utils import FusedCausalLMOutput

        assert fused_lm_head, "TRL 1.16's DPO and KTO trainers call the fused LM head"
        next_labels = labels[:, 1:]
        mask = next_labels != -100
        ids = next_labels.clamp(min=0)
        zeros = torch.zeros(ids.shape, dtype=self.logps.dtype)
        log_probs = torch.where(mask, self.logps[ids], zeros)
        log_sum_sq = None if self.log_sum_sq is None else torch.where(mask, self.log_sum_sq[ids], zeros)
        return FusedCausalLMOutput(log_probs=log_probs, entropy=zeros, log_sum_sq_probs=log_sum_sq,
                                   mean_logits=zeros, is_top1=torch.zeros_like(mask), label_mask=mask)


class Vocabulary:
    """Hands out a fresh token id for every response token and records its log-probs (id 0: prompt/pad)."""

    def __init__(self):
        self.policy, self.ref, self.sq = [0.0], [0.0], [0.0]

    def add(self, policy: list[float], ref: list[float], sq: list[float] | None = None) -> list[int]:
        start = len(self.policy)
        self.policy += policy
        self.ref += ref
        self.sq += sq if sq is not None else [0.0] * len(policy)
        return list(range(start, start + len(policy)))

    def models(self, dtype: torch.dtype) -> tuple[TokenTable, TokenTable]:
        return (TokenTable(torch.tensor(self.policy, dtype=dtype), torch.tensor(self.sq, dtype=dtype)),
                TokenTable(torch.tensor(self.ref, dtype=dtype)))


def token_rows(completions: list[list[int]], prompt_lens: list[int], prefix: str = "") -> dict[str, torch.Tensor]:
    """input_ids / attention_mask / completion_mask for rows of prompt tokens (id 0) then completion ids,
    padded on the right with id 0."""
    width = max(p + len(c) for p, c in zip(prompt_lens, completions, strict=True))
    ids, attention, completion = [], [], []
    for p, c in zip(prompt_lens, completions, strict=True):
        pad = width - p - len(c)
        ids.append([0] * p + c + [0] * pad)
        attention.append([1] * (p + len(c)) + [0] * pad)
        completion.append([0] * p + [1] * len(c) + [0] * pad)
    return {f"{prefix}input_ids": torch.tensor(ids), f"{prefix}attention_mask": torch.tensor(attention),
            f"{prefix}completion_mask": torch.tensor(completion)}


def _metrics_of(trainer) -> dict[str, float]:
    return {k: v[-1] for k, v in trainer._metrics["train"].items() if v}


# ---------------------------------------------------------------------------------------------
# TRL's DPOTrainer
# ---------------------------------------------------------------------------------------------


def trl_dpo(p: Pairs, *, loss_type: list[str], beta: float, loss_weights: list[float] | None = None,
            label_smoothing: float = 0.0, ld_alpha: float | None = None, f_divergence_type: str = "reverse_kl",
            f_alpha_divergence_coef: float = 0.5, use_weighting: bool = False, discopop_tau: float = 0.05,
            rejected_prompt_len: int = 1, dtype: torch.dtype = torch.float64) -> tuple[float, dict[str, float]]:
    """TRL 1.16's ``DPOTrainer._compute_loss`` on the pairs (one batch): its scalar loss (the mean over
    pairs of each loss type, weighted and summed) and the metrics it logged. Chosen rows have a
    one-token prompt; the rejected rows' prompt length can differ (joint preference data)."""
    from trl.trainer.dpo_trainer import DPOTrainer

    vocab = Vocabulary()
    chosen = [vocab.add(c, r, s) for c, r, s in zip(p.chosen, p.ref_chosen, p.chosen_sq, strict=True)]
    rejected = [vocab.add(c, r, s) for c, r, s in zip(p.rejected, p.ref_rejected, p.rejected_sq, strict=True)]
    policy, ref = vocab.models(dtype)
    inputs = token_rows(chosen + rejected, [1] * len(p) + [rejected_prompt_len] * len(p))

    trainer = object.__new__(DPOTrainer)
    trainer.__dict__.update(
        model=policy, ref_model=ref, accelerator=fake_accelerator(),
        args=SimpleNamespace(gradient_checkpointing_kwargs=None, discopop_tau=discopop_tau),
        beta=beta, loss_types=list(loss_type), loss_weights=loss_weights or [1.0] * len(loss_type),
        ld_alpha=ld_alpha, f_divergence_type=f_divergence_type, f_alpha_divergence_coef=f_alpha_divergence_coef,
        label_smoothing=label_smoothing, use_weighting=use_weighting, precompute_ref_logps=False,
        aux_loss_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
    )
    with torch.no_grad():
        loss = trainer._compute_loss(policy, inputs, return_outputs=False)
    return float(loss), _metrics_of(trainer)


# ---------------------------------------------------------------------------------------------
# TRL's KTOTrainer
# ---------------------------------------------------------------------------------------------


@dataclass
class Unpaired:
    """Per example: per-token log-probs of the completion and of its mismatched (KL) completion under
    policy and reference, and its label."""

    tokens: list[list[float]]
    ref_tokens: list[list[float]]
    kl_tokens: list[list[float]]
    ref_kl_tokens: list[list[float]]
    labels: list[bool]


def random_unpaired(seed: int, labels: list[bool], max_len: int = 6, kl_shift: int = 0) -> Unpaired:
    """Examples with the given labels; ``kl_shift`` (in 1/64) makes the reference's KL log-probs lower
    (> 0, so the policy-reference KL estimate is positive) or higher (< 0, clamped to 0 by KTO)."""
    rng = random.Random(seed)
    out = Unpaired([], [], [], [], list(labels))
    for _ in labels:
        n, m = rng.randint(1, max_len), rng.randint(1, max_len)
        out.tokens.append(token_values(rng, n))
        out.ref_tokens.append(token_values(rng, n))
        out.kl_tokens.append(token_values(rng, m, 40, 120))
        out.ref_kl_tokens.append([v - kl_shift / 64 for v in token_values(rng, m, 40, 120)])
    return out


def unpaired_logps(u: Unpaired, dtype: torch.dtype = torch.float64) -> UnpairedLogps:
    def sums(rows):
        return torch.tensor([sum(r) for r in rows], dtype=dtype)

    return UnpairedLogps(logps=sums(u.tokens), lengths=torch.tensor([len(r) for r in u.tokens]),
                         labels=torch.tensor([1.0 if x else 0.0 for x in u.labels], dtype=dtype),
                         ref=sums(u.ref_tokens), kl_logps=sums(u.kl_tokens), ref_kl_logps=sums(u.ref_kl_tokens))


def trl_kto(u: Unpaired, *, beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
            dtype: torch.dtype = torch.float64) -> tuple[float, dict[str, float]]:
    """TRL 1.16's ``KTOTrainer._compute_loss`` (loss_type "kto") on one batch, reference model run live."""
    from trl.trainer.kto_trainer import KTOTrainer

    vocab = Vocabulary()
    main = [vocab.add(t, r) for t, r in zip(u.tokens, u.ref_tokens, strict=True)]
    kl = [vocab.add(t, r) for t, r in zip(u.kl_tokens, u.ref_kl_tokens, strict=True)]
    policy, ref = vocab.models(dtype)
    ones = [1] * len(main)
    inputs = {**token_rows(main, ones), **token_rows(kl, ones, prefix="KL_"), "label": torch.tensor(u.labels)}

    trainer = object.__new__(KTOTrainer)
    trainer.__dict__.update(
        model=policy, ref_model=ref, accelerator=fake_accelerator(),
        args=SimpleNamespace(gradient_checkpointing_kwargs=None), beta=beta, loss_type="kto",
        desirable_weight=desirable_weight, undesirable_weight=undesirable_weight, calculate_KL=True,
        precompute_ref_logps=False, aux_loss_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0, _tp_size=1,
    )
    with torch.no_grad():
        loss = trainer._compute_loss(policy, inputs, return_outputs=False)
    return float(loss), _metrics_of(trainer)


# ---------------------------------------------------------------------------------------------
# TRL's CPOTrainer and ORPOTrainer (experimental in 1.16): logits in, log-probs computed by TRL
# ---------------------------------------------------------------------------------------------


class FixedLogits(torch.nn.Module):
    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids, attention_mask=None, **kwargs):
        assert input_ids.shape == self.logits.shape[:2]
        return SimpleNamespace(logits=self.logits)


@dataclass
class LogitPairs:
    """B pairs as token rows (a one-token prompt, then the response, then padding) with the logits a
    model gives them: rows [0, B) chosen, [B, 2B) rejected, all of one width T; logits (2B, T, V)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor  # −100 on the prompt and the padding
    logits: torch.Tensor
    prompt_len: int

    @property
    def n(self) -> int:
        return self.input_ids.shape[0] // 2

    def token_logps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs of each row's response tokens (log-softmax of the logits at the position
        before), zero elsewhere, and the response mask, both (2B, T − 1)."""
        logp = torch.log_softmax(self.logits[:, :-1], dim=-1)
        target = self.labels[:, 1:]
        mask = target != -100
        picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return torch.where(mask, picked, torch.zeros_like(picked)), mask

    def pair_logps(self) -> PairLogps:
        per_token, mask = self.token_logps()
        sums, lengths = per_token.sum(dim=1), mask.sum(dim=1)
        n = self.n
        return PairLogps(chosen=sums[:n], rejected=sums[n:], chosen_len=lengths[:n], rejected_len=lengths[n:])

    def batch(self) -> dict[str, torch.Tensor]:
        n = self.n
        out = {}
        for side, rows in (("chosen", slice(0, n)), ("rejected", slice(n, 2 * n))):
            out[f"{side}_input_ids"] = self.input_ids[rows]
            out[f"{side}_attention_mask"] = self.attention_mask[rows]
            out[f"{side}_labels"] = self.labels[rows]
        return out


def random_logit_pairs(seed: int, n: int = 4, max_len: int = 6, vocab: int = 5, prompt_len: int = 1,
                       equal_chosen_lengths: bool = False) -> LogitPairs:
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    lengths = [rng.randint(1, max_len) for _ in range(2 * n)]
    if equal_chosen_lengths:
        lengths[:n] = [lengths[0]] * n
    width = prompt_len + max(lengths)
    ids = torch.zeros(2 * n, width, dtype=torch.long)
    attention = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, length in enumerate(lengths):
        tokens = torch.randint(0, vocab, (prompt_len + length,), generator=gen)
        ids[i, :prompt_len + length] = tokens
        attention[i, :prompt_len + length] = 1
        labels[i, prompt_len:prompt_len + length] = tokens[prompt_len:]
    logits = 2.0 * torch.randn(2 * n, width, vocab, generator=gen, dtype=torch.float64)
    return LogitPairs(ids, attention, labels, logits, prompt_len)


def cpo_trainer(*, loss_type: str, beta: float, label_smoothing: float = 0.0, cpo_alpha: float = 1.0,
                simpo_gamma: float = 0.5, alpha: float = 0.0):
    from trl.experimental.cpo import CPOTrainer

    trainer = object.__new__(CPOTrainer)
    trainer.__dict__.update(
        accelerator=fake_accelerator(), is_encoder_decoder=False, pad_token_id=0, aux_loss_enabled=False,
        loss_type=loss_type, beta=beta, label_smoothing=label_smoothing, cpo_alpha=cpo_alpha,
        simpo_gamma=simpo_gamma, alpha=alpha,
    )
    return trainer


def orpo_trainer(*, beta: float):
    from trl.experimental.orpo import ORPOTrainer

    trainer = object.__new__(ORPOTrainer)
    trainer.__dict__.update(accelerator=fake_accelerator(), is_encoder_decoder=False, padding_value=0,
                            aux_loss_enabled=False, beta=beta)
    return trainer


def trl_full_loss(trainer, pairs: LogitPairs) -> tuple[float, dict[str, float]]:
    """``get_batch_loss_metrics`` of a CPO or ORPO trainer: the whole loss, NLL term included."""
    with torch.no_grad():
        loss, metrics = trainer.get_batch_loss_metrics(FixedLogits(pairs.logits), pairs.batch())
    return float(loss), {k: float(v) for k, v in metrics.items()}


# ---------------------------------------------------------------------------------------------
# TRL's RewardTrainer
# ---------------------------------------------------------------------------------------------


class FixedRewards(torch.nn.Module):
    def __init__(self, rewards: torch.Tensor):
        super().__init__()
        self.rewards = rewards

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        return SimpleNamespace(logits=self.rewards.unsqueeze(-1))


def trl_reward(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | None,
               center_rewards_coefficient: float | None) -> tuple[float, dict[str, float]]:
    """TRL 1.16's ``RewardTrainer.compute_loss`` for rewards the model gives (chosen rows first)."""
    from trl.trainer.reward_trainer import RewardTrainer

    model = FixedRewards(torch.cat([r_chosen, r_rejected]))
    trainer = object.__new__(RewardTrainer)
    trainer.__dict__.update(model=model, accelerator=fake_accelerator(),
                            args=SimpleNamespace(center_rewards_coefficient=center_rewards_coefficient),
                            _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    n = 2 * r_chosen.shape[0]
    inputs = {"input_ids": torch.zeros(n, 3, dtype=torch.long), "attention_mask": torch.ones(n, 3, dtype=torch.long)}
    if margin is not None:
        inputs["margin"] = margin
    with torch.no_grad():
        loss = trainer.compute_loss(model, inputs)
    return float(loss), _metrics_of(trainer)
