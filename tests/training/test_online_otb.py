"""OTB's inputs from a round: each completion token's log-prob and Σ_v π_v² under the policy at the
round's start, computed in the pass that gives the old log-probs, against a plain forward pass."""

from __future__ import annotations

import pytest
import torch

from alignlab.models import load_model
from alignlab.training.online import token_logps_and_sum_pi_sq
from alignlab.training.rollout import RolloutExample


def _example(prompt, completion):
    return RolloutExample(row=1, prompt_ids=tuple(prompt), completion_ids=tuple(completion), finished=True,
                          reward=0.0, advantages=())


@pytest.mark.parametrize("pack,tol", [(False, 1e-12), (True, 1e-6)])
def test_the_rounds_sum_pi_squared_is_the_softmaxs(tiny_model_dir, pack, tol):
    """Σ_v p_v² and log p of each completion token, from softmax over the model's full logits at
    the position that predicts it (prompt + completion fed whole, one sequence at a time). Padded
    rows agree to fp64 rounding; packed rows (the prompt once per group) to the fp32 rounding of
    Llama's RMSNorm."""
    model = load_model(str(tiny_model_dir), dtype="fp64").eval()
    examples = [_example([5, 9, 11], [20, 21, 22, 23]), _example([5, 9, 11], [30]), _example([7, 8], [40, 41])]
    logps, sum_pi_sq = token_logps_and_sum_pi_sq(model, examples, pad_id=0, batch_size=3, device="cpu", pack=pack)
    for e, lp, sq in zip(examples, logps, sum_pi_sq, strict=True):
        ids = torch.tensor([e.prompt_ids + e.completion_ids])
        with torch.no_grad():
            probs = model(ids).logits[0].double().softmax(-1)
        at = range(len(e.prompt_ids) - 1, len(ids[0]) - 1)
        want_sq = [float((probs[t] ** 2).sum()) for t in at]
        want_lp = [float(probs[t, ids[0, t + 1]].log()) for t in at]
        assert len(sq) == len(e.completion_ids) and sq == pytest.approx(want_sq, abs=tol, rel=0)
        assert lp == pytest.approx(want_lp, abs=tol * 10, rel=0)
        assert all(0 < v <= 1 for v in sq)


def test_no_completions_give_no_values(tiny_model_dir):
    """An empty list of completions: two empty lists (log-probs, Σπ²), as ``token_logps`` gives one."""
    model = load_model(str(tiny_model_dir), dtype="fp64").eval()
    assert token_logps_and_sum_pi_sq(model, [], pad_id=0, batch_size=3, device="cpu") == ([], [])


@pytest.mark.parametrize("method", ["otb", "reinforce++"])
def test_under_bf16_a_rounds_first_update_is_on_policy(tmp_path, tiny_model_dir, method):
    """The round's own pass (the old log-probs: OTB's π and Σπ², REINFORCE++'s KL side) runs in the
    training pass's bf16 autocast, on the same micro-batches, so at μ = 1 every ratio is exactly 1,
    as for GRPO, which takes its old log-probs from the training pass itself. Run outside autocast,
    it read 0.99992."""
    import json

    from alignlab import train
    from tests.training.test_online import online

    train(online(tiny_model_dir, tmp_path / "run", method=method, dtype="bf16", max_steps=2))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(rows) == 2 and all(r["ratio/mean"] == 1.0 for r in rows)
