"""A generator with weights of its own (Ray workers, a vLLM engine) is sent the policy's network
alone: PPO's critic, which hangs on the policy module, is left out, so the names sent are the
policy checkpoint's keys (before, a Ray worker refused them: unknown value_model.head.bias)."""

from __future__ import annotations

import pytest
from safetensors import safe_open

from alignlab.generation.vllm import policy_weights
from alignlab.models import load_model
from alignlab.training.critic import attach_critic


@pytest.mark.parametrize("kind", ["shared", "separate"])
def test_a_ppo_critic_is_not_sent_to_the_generator(tiny_model_dir, kind):
    policy = load_model(str(tiny_model_dir), "fp32")
    critic = attach_critic(policy, kind, str(tiny_model_dir))
    sent = dict(policy_weights(policy))
    with safe_open(str(tiny_model_dir / "model.safetensors"), "pt") as f:
        assert sorted(sent) == sorted(f.keys())
    params = dict(policy.named_parameters())
    assert all(sent[n].data_ptr() == params[n].data_ptr() for n in sent)
    assert any(n.startswith("value_model.") for n in params) and sum(1 for _ in critic.parameters()) > 0
