"""What differs between training a policy and training a reward model, chosen once per run.

A policy (SFT and every preference method) is a causal LM scored by its own log-probs; a reward
model is a backbone with a fresh value head (``rewards/model.py``). They differ in how the model
is built and saved, how long a sequence may be, how batches are made and which forward turns a
batch into losses. ``model_kind(cfg)`` picks one; ``run.train`` asks it and never branches itself.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from alignlab.data.collate import collate_pairs, collate_sequences, collate_sft
from alignlab.data.pack import collate_packed
from alignlab.errors import DataError, RowIssue
from alignlab.models import load_model, save_model
from alignlab.rewards.model import backbone_config, new_reward_model, save_reward_model
from alignlab.training.critic import detached_critic, save_critic
from alignlab.training.forward import Forward
from alignlab.training.forward.policy_gradient import PolicyGradientForward
from alignlab.training.forward.preference import PreferenceForward
from alignlab.training.forward.reward_model import RewardModelForward
from alignlab.training.forward.sft import SFTForward


class PolicyKind:
    """A causal LM trained on the log-probs of its responses."""

    def __init__(self, cfg):
        self.cfg = cfg

    def max_length(self) -> int:
        return self.cfg.dataset.max_length

    def check_examples(self, examples: list) -> None:
        """Nothing beyond what loading and rendering check."""

    def build_model(self, dtype: str) -> torch.nn.Module:
        return load_model(self.cfg.model, dtype=dtype, trust_remote_code=self.cfg.trust_remote_code)

    def network(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module whose activations gradient checkpointing recomputes."""
        return model

    def make_forward(self, pad_id: int, autocast: Callable) -> Forward:
        spec, params = self.cfg.spec, self.cfg.method_params
        if spec.shape == "sft":
            return SFTForward(spec, params)
        if spec.shape == "online":
            from alignlab.training.online_run import max_new_tokens

            return PolicyGradientForward(spec, params, max_new_tokens(self.cfg), pad_id, autocast, self.cfg.seed)
        return PreferenceForward(spec, params, pad_id, autocast)

    def collate(self, pad_id: int) -> Callable:
        """Examples -> a Batch: packed rows (a prompt once, its responses after it) or padded ones."""
        shape = self.cfg.spec.shape
        pairs = shape in ("pair", "joint")
        if self.cfg.dataset.packing:
            return partial(collate_packed, role_major=pairs, pad_id=pad_id)
        padded = collate_sft if shape == "sft" else collate_pairs if pairs else collate_sequences
        return partial(padded, pad_id=pad_id)

    def save(self, model: torch.nn.Module, tokenizer, out_dir: Path) -> None:
        """The policy; a PPO critic beside it, in ``value_model/`` (``critic.py``)."""
        with detached_critic(model) as critic:
            save_model(model, tokenizer, out_dir, merge_lora=self.cfg.adapter.merge_lora)
            if critic is not None:
                save_critic(critic, tokenizer, out_dir)


class RewardModelKind:
    """A backbone (a causal LM's decoder or an encoder) with a fresh head, trained on pairs."""

    def __init__(self, cfg):
        self.cfg = cfg

    def max_length(self) -> int:
        """``max_length``, or less when the backbone has fewer positions (MiniLM has 512)."""
        cfg = self.cfg
        positions = getattr(backbone_config(cfg.model, cfg.trust_remote_code), "max_position_embeddings", None)
        return min(cfg.dataset.max_length, positions) if positions else cfg.dataset.max_length

    def check_examples(self, examples: list) -> None:
        """A margin comes from the data's scores: every pair must have them."""
        cfg = self.cfg
        if cfg.method_params.margin_scale > 0:
            bad = [RowIssue(e.source or cfg.data, e.row, "score_chosen", "margin_scale > 0 takes the margin from score_chosen − "
                            "score_rejected; this pair has no scores") for e in examples if e.score_gap is None]
            if bad:
                raise DataError(bad, hint="")

    def build_model(self, dtype: str) -> torch.nn.Module:
        """``model``'s backbone and a head seeded by the run's seed (set before this is called)."""
        cfg, params = self.cfg, self.cfg.method_params
        model = new_reward_model(cfg.model, params.objective, params.head_dim, params.pool,
                                 params.objective == "gpm" and params.gpm_gate,
                                 params.objective == "gpm" and params.gpm_normalize, params.gpm_tau, dtype=dtype,
                                 trust_remote_code=cfg.trust_remote_code)
        if getattr(model.backbone, "pooler", None) is not None:
            model.backbone.pooler = None  # an encoder's pooler is not read: drop it, so every weight gets a gradient
        return model

    def network(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.backbone

    def make_forward(self, pad_id: int, autocast: Callable) -> Forward:
        return RewardModelForward(self.cfg.spec, self.cfg.method_params)

    def collate(self, pad_id: int) -> Callable:
        """Padded pairs always: an encoder cannot share a prompt across rows."""
        return partial(collate_pairs, pad_id=pad_id)

    def save(self, model: torch.nn.Module, tokenizer, out_dir: Path) -> None:
        save_reward_model(model, tokenizer, out_dir)


def model_kind(cfg) -> PolicyKind | RewardModelKind:
    return RewardModelKind(cfg) if cfg.spec.model == "reward" else PolicyKind(cfg)
