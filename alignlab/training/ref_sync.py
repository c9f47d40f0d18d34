"""A reference that follows the policy: TR-DPO's soft update, for online methods' KL term.

Every ``ref_sync_steps`` optimizer steps the reference moves toward the policy,
``ref ← (1 − α) · ref + α · policy`` (Gorbatovski et al., 2024, "Learn Your Reference Model for
Real Good Alignment"; TRL's ``sync_ref_model`` with ``ref_model_mixup_alpha`` and
``ref_model_sync_steps``, whose ``sync_target_model`` computes the same two in-place operations).
The online source applies it at the start of the step after the update (``OnlineSource.step``),
so the next round's reference log-probs see it, and keeps the synced weights in its checkpoints.
"""

from __future__ import annotations

import torch

from alignlab.errors import ConfigError


def check_sync_pairs(reference: torch.nn.Module, policy: torch.nn.Module) -> None:
    """Every parameter of the reference has one of the same name and shape in the policy (which
    may hold more: PPO's critic), so that ``sync_reference`` can move it; else a one-line error."""
    mine = dict(policy.named_parameters())
    for name, p in reference.named_parameters():
        if name not in mine or mine[name].shape != p.shape:
            theirs = "none" if name not in mine else tuple(mine[name].shape)
            raise ConfigError(f"ref_sync_steps: the reference's parameter {name} {tuple(p.shape)} has no "
                              f"counterpart in the policy (found {theirs}); a synced reference must be the "
                              "policy's architecture (leave reference_model unset, or give one of the same shape)")


@torch.no_grad()
def sync_reference(reference: torch.nn.Module, policy: torch.nn.Module, alpha: float) -> None:
    """TR-DPO's soft update (Gorbatovski et al., 2024), as TRL's ``sync_target_model`` computes it:
    each reference parameter becomes ``(1 − alpha) · itself + alpha · the policy's``, in place.
    Parameters only: these models' buffers (rotary frequencies) do not train."""
    mine = dict(policy.named_parameters())
    for name, p in reference.named_parameters():
        p.mul_(1.0 - alpha).add_(mine[name].detach().to(p.dtype), alpha=alpha)
