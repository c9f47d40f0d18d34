"""The entropy online methods log: the mean over every completion token of the step of the policy's
next-token entropy −Σ_v π(v) log π(v), however the step is split into micro-batches."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import alignlab.training.loop as loop
from alignlab import train
from alignlab.losses.registry import get_loss
from alignlab.training.forward.policy_gradient import PolicyGradientForward
from alignlab.training.rollout import RolloutExample, collate_rollout
from tests.data.test_pack import _model
from tests.training.test_online import metrics, online


def direct_entropies(model, examples) -> list[list[float]]:
    """Per completion token, −Σ softmax · log_softmax of the model's own full logits at the position
    that predicts it (the last prompt position predicts the first completion token)."""
    out = []
    with torch.no_grad():
        for e in examples:
            ids = torch.tensor([e.prompt_ids + e.completion_ids])
            logits = model(input_ids=ids).logits[0].double()
            h = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
            first = len(e.prompt_ids) - 1
            out.append(h[first:first + len(e.completion_ids)].tolist())
    return out


def example(row: int, prompt: tuple[int, ...], completion: tuple[int, ...]) -> RolloutExample:
    n = len(completion)
    return RolloutExample(row=row, prompt_ids=prompt, completion_ids=completion, finished=True, reward=float(row),
                          advantages=(0.5 - row % 2,) * n, sampler_logps=(-1.0,) * n)


def test_the_logged_entropy_is_one_mean_over_the_steps_tokens_however_it_is_split():
    """Completions of 1, 6, 2 and 3 tokens (12 in all): the logged value is Σ of the 12 token
    entropies / 12, the same as one micro-batch, four, or two of two, and not the mean of the four
    per-completion means (which weighs the 1-token completion as much as the 6-token one)."""
    model = _model()
    with torch.no_grad():  # logits 30 times larger: entropies far from log V, and far apart
        model.model.norm.weight.mul_(30.0)
    examples = [example(1, (1, 5, 6), (10,)), example(2, (1, 8), (14, 15, 16, 17, 18, 2)),
                example(3, (1, 9, 9, 4), (20, 21)), example(4, (1,), (30, 31, 32))]
    tokens = direct_entropies(model, examples)
    want = sum(map(sum, tokens)) / 12
    per_completion = sum(sum(t) / len(t) for t in tokens) / 4
    assert abs(want - per_completion) > 0.01  # so the check below (to 1e-12) tells the two apart

    spec = get_loss("grpo")
    forward = PolicyGradientForward(spec, spec.params(), max_new_tokens=6)
    for split in ([[0, 1, 2, 3]], [[0], [1], [2], [3]], [[0, 2], [1, 3]], [[3, 1], [2], [0]]):
        sums: dict[str, torch.Tensor] = {}
        for part in split:
            out = forward(model, collate_rollout([examples[i] for i in part], pad_id=0))
            loop._sum_metrics(sums, out)
        logged = loop._means({k: float(v) for k, v in sums.items()}, examples=4)
        assert logged["entropy"] == pytest.approx(want, abs=1e-12), split
        assert "_count/entropy" not in logged


def test_an_online_run_logs_the_entropy_of_its_completions(tmp_path, tiny_model_dir, monkeypatch):
    """Step 1 runs on the starting weights: its logged entropy equals the mean over its 8
    completions' tokens of the entropies of the saved model's own logits; the same steps as 2 × 4
    log the same value, and every step logs one."""
    seen: list[RolloutExample] = []
    real = PolicyGradientForward.__call__

    def keep(self, model, batch):
        seen.extend(batch.examples)
        return real(self, model, batch)

    with monkeypatch.context() as m:
        m.setattr(PolicyGradientForward, "__call__", keep)
        # every completion computed (none left out for a zero advantage), so the mean is over all 8
        train(online(tiny_model_dir, tmp_path / "a", max_steps=1, skip_zero_advantage=False))
    assert len(seen) == 8
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float64).eval()
    tokens = direct_entropies(model, seen)
    want = sum(map(sum, tokens)) / sum(map(len, tokens))
    first = [m for m in metrics(tmp_path / "a") if "loss" in m][0]
    assert first["entropy"] == pytest.approx(want, abs=1e-9)
    assert 0 < want < torch.log(torch.tensor(float(model.config.vocab_size))).item()

    train(online(tiny_model_dir, tmp_path / "b", max_steps=2, batch_size=2, grad_accum=4, skip_zero_advantage=False))
    rows = [m for m in metrics(tmp_path / "b") if "loss" in m]
    assert rows[0]["entropy"] == pytest.approx(first["entropy"], abs=1e-12)
    assert all("entropy" in m for m in rows) and len(rows) == 2
    assert not any(k.startswith("_") for m in rows for k in m)
    assert json.loads((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2
