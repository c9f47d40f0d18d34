"""A reference that follows the policy: TR-DPO's soft update, for every method that runs a reference.

Every ``ref_sync_steps`` optimizer steps the reference moves toward the policy,
``ref ← (1 − α) · ref + α · policy`` (Gorbatovski et al., 2024, "Learn Your Reference Model for
Real Good Alignment"; TRL's ``sync_ref_model`` with ``ref_model_mixup_alpha`` and
``ref_model_sync_steps``, whose ``sync_target_model`` computes the same two in-place operations).
The loop applies it at the end of the step (``RefSync.after_step``), before that step's
evaluation and checkpoint, so what runs the reference next (an evaluation, an online round's KL
term, an offline method's reference log-probs, computed each step when the reference moves) sees
it; checkpoints hold the synced weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from alignlab.errors import ConfigError, UserError


def check_sync_pairs(reference: torch.nn.Module, policy: torch.nn.Module) -> None:
    """Every parameter of the reference has one of the same name and shape in the policy (which
    may hold more: PPO's critic), so that ``sync_reference`` can move it, and names the reference
    ties to one tensor (an output layer sharing the input embeddings) the policy ties too, else the
    reference could not become the policy; else a one-line error."""
    mine = dict(policy.named_parameters(remove_duplicate=False))
    first: dict[int, str] = {}
    for name, p in reference.named_parameters(remove_duplicate=False):
        if name not in mine or mine[name].shape != p.shape:
            theirs = "none" if name not in mine else tuple(mine[name].shape)
            raise ConfigError(f"ref_sync_steps: the reference's parameter {name} {tuple(p.shape)} has no "
                              f"counterpart in the policy (found {theirs}); a synced reference must be the "
                              "policy's architecture (leave reference_model unset, or give one of the same shape)")
        tied = first.setdefault(id(p), name)
        if mine[name] is not mine[tied]:
            raise ConfigError(f"ref_sync_steps: the reference ties {name} to {tied} and the policy does not "
                              "(tie_word_embeddings differs), so the reference cannot follow the policy; leave "
                              "reference_model unset, or give one that ties its weights as the policy does")


@torch.no_grad()
def sync_reference(reference: torch.nn.Module, policy: torch.nn.Module, alpha: float) -> None:
    """TR-DPO's soft update (Gorbatovski et al., 2024), as TRL's ``sync_target_model`` computes it:
    each reference parameter becomes ``(1 − alpha) · itself + alpha · the policy's``, in place.
    Parameters only: these models' buffers (rotary frequencies) do not train. The policy's are
    found by every name they have, so a reference that holds apart what the policy ties (its
    output layer and input embeddings) takes the tied tensor for both."""
    mine = dict(policy.named_parameters(remove_duplicate=False))
    for name, p in reference.named_parameters():
        p.mul_(1.0 - alpha).add_(mine[name].detach().to(p.dtype), alpha=alpha)


@dataclass
class RefSync:
    """The run's synced reference: ``reference()`` yields its module (a model of its own),
    ``policy`` is the unwrapped module being trained."""

    reference: Callable[[], contextlib.AbstractContextManager[torch.nn.Module]]
    policy: torch.nn.Module
    every: int
    alpha: float

    def __post_init__(self) -> None:
        with self.reference() as ref:
            check_sync_pairs(ref, self.policy)

    def after_step(self, done: int) -> None:
        """At the end of optimizer step ``done`` (skipped or not), the update when it is one of
        every ``every``: what TRL's callback does in ``on_step_end``, before the Trainer evaluates
        and saves, so an evaluation or checkpoint after that step sees the updated reference."""
        if done % self.every == 0:
            with self.reference() as ref:
                sync_reference(ref, self.policy, self.alpha)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        with self.reference() as ref:
            return {n: p.detach().cpu().contiguous() for n, p in ref.named_parameters()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with self.reference() as ref:
            params = dict(ref.named_parameters())
            if set(tensors) != set(params):
                raise UserError("resume: the checkpoint holds no synced reference of this model (was it written "
                                "with ref_sync_steps 0, or another model?); resume with its settings")
            for n, p in params.items():
                p.copy_(tensors[n])
