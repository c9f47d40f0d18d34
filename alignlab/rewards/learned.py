"""Scorers backed by trained networks: a reward model, and a DPO policy's implicit reward.

``RewardModelScorer`` wraps a model trained with ``alignlab train --method reward_model``:

- Bradley-Terry: ``score`` is the scalar reward r(x, y); ``compare`` is σ(r(x, y₁) − r(x, y₂)).
- GPM: ``compare`` is σ(s(y₁ ≻ y₂)/τ) from the skew-symmetric score, which need not be transitive;
  ``score`` is s(y ≻ anchor), the preference of y over a fixed anchor response to the same prompt
  (the empty response by default). Scores against one anchor rank responses only as far as the
  preferences are transitive; use ``compare`` for the preference itself.

``ImplicitReward`` is the reward a DPO-trained policy defines (Rafailov et al. 2023):
β·(log π(y|x) − log π_ref(y|x)), summed over the response tokens, with responses rendered as in
training (text then EOS).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from alignlab.data.collate import pad_rows
from alignlab.logprobs import completion_logps
from alignlab.losses.reward import gpm_score
from alignlab.rewards.base import Scorer, check_lengths, sigmoid
from alignlab.rewards.model import RewardModel, load_reward_model
from alignlab.rewards.tokens import render_pairs


class RewardModelScorer(Scorer):
    """A trained reward model (Bradley-Terry or GPM) as a scorer; see the module docstring."""

    def __init__(self, model: RewardModel | str | os.PathLike, tokenizer=None, batch_size: int = 32,
                 max_length: int = 1024, anchor: str = "", dtype: str = "fp32"):
        from alignlab.models import load_tokenizer

        if not isinstance(model, RewardModel):
            path = str(model)
            model, tokenizer = load_reward_model(path, dtype), tokenizer or load_tokenizer(path)
            self.name = f"rm:{path}"
        else:
            self.name = "reward model"
        if tokenizer is None:
            raise ValueError("a RewardModel object needs its tokenizer")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size, self.anchor = batch_size, anchor
        positions = getattr(model.config, "max_position_embeddings", None)
        self.max_length = min(max_length, positions) if positions else max_length

    @property
    def objective(self) -> str:
        return self.model.settings.objective

    @torch.no_grad()
    def values(self, prompts: Sequence[str], responses: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The head's values (N, D) and GPM eigenvalues (N, k) or None, float64 on the CPU."""
        check_lengths(f"{self.name}: score", prompts, responses)
        rows = render_pairs(self.tokenizer, prompts, responses, self.max_length)
        device = next(self.model.parameters()).device
        values, lams = [], []
        for start in range(0, len(rows), self.batch_size):
            part = rows[start:start + self.batch_size]
            batch = pad_rows(part, self.tokenizer.pad_token_id).to(device)
            prompt_last = torch.tensor([len(p) - 1 for p, _ in part], device=device)
            v, lam = self.model(batch.input_ids_BT, batch.attention_mask_BT, prompt_last)
            values.append(v.double().cpu())
            if lam is not None:
                lams.append(lam.double().cpu())
        dim = self.model.settings.dim
        v_all = torch.cat(values) if values else torch.zeros((0, dim), dtype=torch.float64)
        return v_all, (torch.cat(lams) if lams else None)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if self.objective == "bt":
            return self.values(prompts, responses)[0][:, 0].tolist()
        return self._gpm(prompts, responses, [self.anchor] * len(responses)).tolist()

    @property
    def compares_by_score(self) -> bool:
        return self.objective == "bt"

    def compare(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> list[float]:
        if self.objective == "bt":
            return super().compare(prompts, first, second)
        tau = self.model.settings.tau
        return [sigmoid(s / tau) for s in self._gpm(prompts, first, second).tolist()]

    def _gpm(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> torch.Tensor:
        n = check_lengths(f"{self.name}: compare", prompts, first, second)
        v, lam = self.values(list(prompts) * 2, list(first) + list(second))
        return gpm_score(v[:n], v[n:], None if lam is None else lam[:n])


class ImplicitReward(Scorer):
    """β·(log π(y|x) − log π_ref(y|x)) of a policy against its reference (both causal LMs)."""

    def __init__(self, policy, reference, tokenizer, beta: float = 0.1, batch_size: int = 32,
                 max_length: int = 1024, name: str = "implicit reward"):
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.policy, self.reference, self.tokenizer = policy, reference, tokenizer
        self.beta, self.batch_size, self.max_length, self.name = beta, batch_size, max_length, name

    @classmethod
    def from_dirs(cls, policy_dir: str, reference_dir: str, beta: float = 0.1, **kwargs) -> ImplicitReward:
        from alignlab.models import load_model, load_tokenizer

        return cls(load_model(policy_dir).eval(), load_model(reference_dir).eval(), load_tokenizer(policy_dir),
                   beta, name=f"implicit:{policy_dir}", **kwargs)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        check_lengths(f"{self.name}: score", prompts, responses)
        rows = render_pairs(self.tokenizer, prompts, responses, self.max_length)
        ids = [p for p, _ in rows]
        resp = [r.ids for _, r in rows]
        pad = self.tokenizer.pad_token_id
        lp = completion_logps(self.policy, ids, resp, pad, self.batch_size)
        lr = completion_logps(self.reference, ids, resp, pad, self.batch_size)
        return (self.beta * (lp - lr)).tolist()
