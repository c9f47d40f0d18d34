"""PPO's critic: V(state before each completion token), trained with the policy.

Two kinds (the ``critic`` field of the ``ppo`` method):
- ``shared``: a linear head on the policy's last hidden states (the decoder's output). The policy's
  forward pass gives both its log-probs and, through a hook on its decoder, the values; the value
  loss also trains the shared network.
- ``separate`` or a directory: a network of its own with a linear head (a ``RewardModel`` with a
  scalar head, so the saved critic is also a reward-model directory): a copy of the policy's
  starting weights, a model directory, or a Bradley-Terry reward model saved by alignlab (its
  head then starts the critic, as InstructGPT starts its value model from the reward model).
A new head starts at zero, so the first round's values are 0 and GAE is the whitened return.

The critic hangs on the policy module as the submodule ``value_model``: the optimizer, gradient
clipping, DDP's gradient averaging and the checkpoint (trainable parameters by name) then cover it
with no code of their own, and a resumed run resumes the critic. ``save_critic`` writes it beside
the saved policy, in ``value_model/``; the policy is saved without it (``detached_critic``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from alignlab.data.collate import Batch
from alignlab.errors import UserError
from alignlab.generation.vllm import NOT_SAMPLED
from alignlab.logprobs import forward_inputs, left_align, response_positions
from alignlab.training.distributed import unwrap

ATTR = "value_model"
DIR = "value_model"
SHARED_HEAD_FILE = "value_head.safetensors"


class SharedValueHead(torch.nn.Module):
    """A scalar head on the policy's own last hidden states."""

    def __init__(self, hidden_size: int, dtype: torch.dtype):
        super().__init__()
        self.head = torch.nn.Linear(hidden_size, 1, dtype=dtype)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)


def attach_critic(policy: torch.nn.Module, kind: str, model_source: str, dtype: str = "fp32",
                  trust_remote_code: bool = False) -> torch.nn.Module:
    """Build the critic ``kind`` names and hang it on ``policy`` as ``value_model``."""
    from alignlab.rewards.model import (
        HeadSettings,
        RewardModel,
        is_causal,
        is_reward_model_dir,
        load_backbone,
        load_reward_model,
    )

    if kind == "shared":
        critic = SharedValueHead(policy.config.hidden_size, next(policy.parameters()).dtype)
    else:
        source = model_source if kind == "separate" else kind
        if kind != "separate" and not Path(source).exists():
            raise UserError(f"critic: '{source}' is neither 'shared', 'separate' nor a model directory")
        if is_reward_model_dir(source):
            critic = load_reward_model(source, dtype, trust_remote_code)
            if critic.settings.dim != 1 or critic.gate is not None:
                raise UserError(f"critic: {source} is a reward model with a {critic.settings.dim}-dimensional "
                                f"({critic.settings.objective}) head; a critic needs a scalar (Bradley-Terry) head")
        else:
            backbone = load_backbone(source, dtype, trust_remote_code)
            critic = RewardModel(backbone, HeadSettings(objective="bt", dim=1, pool="last",
                                                        causal=is_causal(backbone.config)))
            torch.nn.init.zeros_(critic.head.weight)
            torch.nn.init.zeros_(critic.head.bias)
        if not critic.settings.causal:
            raise UserError(f"critic: {source} is not a causal LM; a token's value must not see the tokens after it")
    critic.to(next(policy.parameters()).device)
    setattr(critic, NOT_SAMPLED, True)  # a generator with weights of its own (Ray, vLLM) is not sent it
    setattr(policy, ATTR, critic)
    return critic


def critic_of(model: torch.nn.Module) -> torch.nn.Module | None:
    return getattr(unwrap(model), ATTR, None)


@contextlib.contextmanager
def decoder_output(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collects the policy decoder's output (B, T, d) of every forward pass run inside."""
    seen: list[torch.Tensor] = []
    decoder = unwrap(model).get_decoder()
    handle = decoder.register_forward_hook(lambda _m, _a, out: seen.append(out[0]))
    try:
        yield seen
    finally:
        handle.remove()


def token_values(model: torch.nn.Module, batch: Batch, policy_hidden: torch.Tensor | None = None) -> torch.Tensor:
    """The critic's value of the state before each completion token, left-aligned (B, L) as the
    policy's token log-probs are. A shared head reads ``policy_hidden`` (the policy's decoder
    output for ``batch``, from ``decoder_output``), or runs the policy for it."""
    critic = critic_of(model)
    if critic is None:
        raise ValueError("the policy has no critic (value_model)")
    if isinstance(critic, SharedValueHead):
        if policy_hidden is None:
            with decoder_output(model) as seen:
                model(**forward_inputs(model, batch), logits_to_keep=1, use_cache=False)
            policy_hidden = seen[-1]
        hidden = policy_hidden
    else:
        hidden = critic.backbone(**forward_inputs(critic.backbone, batch)).last_hidden_state
    values_BT = critic.head(hidden).squeeze(-1).float()
    # the state at the position that predicts a completion token is the state before that token
    rows_N, pred_NL, _, mask_NL = response_positions(batch)
    return left_align(values_BT[rows_N[:, None], pred_NL], mask_NL)


@contextlib.contextmanager
def detached_critic(policy: torch.nn.Module) -> Iterator[torch.nn.Module | None]:
    """The policy without its critic for the time of the block (to save or copy the policy alone)."""
    critic = getattr(policy, ATTR, None)
    if critic is not None:
        delattr(policy, ATTR)
    try:
        yield critic
    finally:
        if critic is not None:
            setattr(policy, ATTR, critic)


def save_critic(critic: torch.nn.Module, tokenizer, out_dir: Path) -> Path:
    """``out_dir/value_model``: a reward-model directory (separate critic) or the shared head's weights."""
    from safetensors.torch import save_file

    from alignlab.rewards.model import save_reward_model

    out = Path(out_dir) / DIR
    if isinstance(critic, SharedValueHead):
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in critic.head.state_dict().items()},
                  out / SHARED_HEAD_FILE)
        return out
    return save_reward_model(critic, tokenizer, out)
