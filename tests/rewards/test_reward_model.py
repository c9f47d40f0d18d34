"""Reward-model training (--method reward_model), saving, reloading as a scorer, and the implicit reward."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from alignlab import train
from alignlab.cli import main
from alignlab.errors import ConfigError, DataError, UserError
from alignlab.models import load_model, load_tokenizer
from alignlab.rewards import load_scorer
from alignlab.rewards.base import Scorer
from alignlab.rewards.learned import ImplicitReward, RewardModelScorer
from alignlab.rewards.model import load_reward_model
from tests.conftest import (
    DAMAGED_SIZE,
    DAMAGED_TENSOR,
    DAMAGED_VALUES,
    damage,
    make_pairs,
    overwrite_values,
    write_jsonl,
)


def _pairs_file(tmp_path, n=48, scores=True):
    rows = make_pairs(n, seed=3)
    if scores:
        for r in rows:
            r["score_chosen"], r["score_rejected"] = 1.0, -1.0
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


def _config(model, data, out, **kw):
    return {"method": "reward_model", "model": str(model), "data": str(data), "output_dir": str(out),
            "progress": False, "lr": 2e-3, "batch_size": 8, "max_steps": 6, **kw}


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A Bradley-Terry and a gated GPM reward model on the tiny backbone (a few steps each)."""
    tmp = tmp_path_factory.mktemp("rm")
    data = _pairs_file(tmp)
    out = {}
    for objective in ("bt", "gpm"):
        summary = train(_config(tiny_model_dir, data, tmp / objective, objective=objective, gpm_gate=True,
                                eval_fraction=0.25))
        out[objective] = summary
    return out


def test_training_reports_pair_metrics_and_saves_a_reloadable_model(trained):
    bt, gpm = trained["bt"], trained["gpm"]
    assert bt.steps == 6 and "eval/rewards/accuracies" in bt.eval_metrics and "eval/rewards/margins" in bt.eval_metrics
    assert "eval/preference/prob" in gpm.eval_metrics
    settings = json.loads(Path(gpm.model_dir, "reward_model.json").read_text())
    assert settings == {"objective": "gpm", "dim": 4, "pool": "last", "causal": True, "gate": True,
                        "normalize": True, "tau": 0.1}


def test_reloaded_scorer_matches_the_model_and_ignores_padding(trained, tiny_model_dir):
    """Scores of one batch of responses of different lengths (so padded) equal each response
    scored alone; and they equal the head applied by hand to the backbone's state at the last token."""
    scorer = RewardModelScorer(trained["bt"].model_dir)
    prompts = ["Review the lamp.", "Review the desk.", "Review the bike."]
    responses = ["The lamp is great.", "The desk is awful and broken and dull.", "ok"]
    together = scorer.score(prompts, responses)
    alone = [scorer.score([p], [r])[0] for p, r in zip(prompts, responses, strict=True)]
    assert together == pytest.approx(alone, abs=1e-5)
    model = load_reward_model(trained["bt"].model_dir)
    tok = load_tokenizer(trained["bt"].model_dir)
    ids = tok(prompts[0])["input_ids"] + tok(responses[0], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        hidden = model.backbone(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        by_hand = model.head(hidden).item()
    assert together[0] == pytest.approx(by_hand, abs=1e-5)


def test_scorers_from_trained_models_through_the_interface(trained):
    """Bradley-Terry: compare = σ(r₁ − r₂). GPM: P(a ≻ b) + P(b ≻ a) = 1 and P(a ≻ a) = 1/2."""
    prompts, a, b = ["Review the kettle."] * 2, ["The kettle is superb.", "x"], ["The kettle is noisy.", "y y"]
    for objective in ("bt", "gpm"):
        scorer = load_scorer(trained[objective].model_dir)
        assert isinstance(scorer, Scorer)
        ab, ba = scorer.compare(prompts, a, b), scorer.compare(prompts, b, a)
        assert [x + y for x, y in zip(ab, ba, strict=True)] == pytest.approx([1.0, 1.0], abs=1e-9)
        assert scorer.compare(prompts, a, a) == pytest.approx([0.5, 0.5], abs=1e-9)
        assert all(isinstance(s, float) for s in scorer.score(prompts, a))
    bt = load_scorer(f"rm:{trained['bt'].model_dir}")
    ra, rb = bt.score(prompts, a), bt.score(prompts, b)
    assert bt.compare(prompts, a, b)[0] == pytest.approx(1 / (1 + torch.exp(torch.tensor(rb[0] - ra[0])).item()))
    # Evaluation derives a Bradley-Terry model's probabilities from its scores; a GPM's it must ask for.
    assert bt.compares_by_score and not load_scorer(trained["gpm"].model_dir).compares_by_score


def test_gradient_accumulation_matches_a_bigger_batch(tiny_model_dir, tmp_path):
    """Batch 8 × accumulation 1 and batch 2 × accumulation 4 give the same reward model (fp64)."""
    data = _pairs_file(tmp_path, n=16)
    heads = []
    for bs, acc in ((8, 1), (2, 4)):
        s = train(_config(tiny_model_dir, data, tmp_path / f"b{bs}", batch_size=bs, grad_accum=acc, max_steps=3,
                          dtype="fp64", margin_scale=0.5, center_coef=0.01))
        heads.append(load_reward_model(s.model_dir, dtype="fp64").head.weight.detach())
    assert torch.allclose(heads[0], heads[1], atol=1e-10, rtol=0)


def test_margins_need_scores_and_reward_models_refuse_policy_options(tiny_model_dir, tmp_path):
    data = _pairs_file(tmp_path, scores=False)
    with pytest.raises(DataError, match=r"pairs.jsonl, row 1, field 'score_chosen'.*margin_scale"):
        train(_config(tiny_model_dir, data, tmp_path / "m", margin_scale=1.0))
    # in a folder of files the row is named with its file, not the folder
    folder = tmp_path / "folder"
    folder.mkdir()
    data.rename(folder / "part.jsonl")
    with pytest.raises(DataError, match=r"folder/part.jsonl, row 1, field 'score_chosen'.*margin_scale"):
        train(_config(tiny_model_dir, folder, tmp_path / "f", margin_scale=1.0))
    (folder / "part.jsonl").rename(data)
    with pytest.raises(ConfigError, match="lora: reward models train the whole backbone"):
        train(_config(tiny_model_dir, data, tmp_path / "l", lora=True))
    with pytest.raises(ConfigError, match="task: a reward model does not answer prompts"):
        train(_config(tiny_model_dir, data, tmp_path / "t", task="sentiment"))


def test_a_backbone_with_non_finite_weights_is_refused(damaged_model_dir, tmp_path):
    """Training on it: the backbone (a decoder without the causal LM's prefix 'model.') is named
    with the file that holds the damaged tensor."""
    with pytest.raises(UserError) as e:
        train(_config(damaged_model_dir, _pairs_file(tmp_path), tmp_path / "rm", cache_dir=str(tmp_path / "c")))
    assert str(e.value).startswith(
        f"reward-model backbone '{damaged_model_dir}' has non-finite weights: "
        f"'{DAMAGED_TENSOR.removeprefix('model.')}' (in {damaged_model_dir}/model.safetensors) holds "
        f"{DAMAGED_VALUES} NaN or infinite values of {DAMAGED_SIZE}")
    assert not (tmp_path / "rm").exists() and not (tmp_path / "c").exists()


def test_a_saved_reward_model_with_non_finite_weights_is_refused(trained, tmp_path):
    """Its backbone (model.safetensors) or its head (reward_head.safetensors), damaged in place."""
    saved = Path(trained["bt"].model_dir)
    backbone = damage(saved, tmp_path / "backbone", prefix="")
    with pytest.raises(UserError, match=rf"^reward-model backbone '{backbone}' has non-finite weights: "
                                        rf"'{DAMAGED_TENSOR.removeprefix('model.')}'"):
        load_scorer(f"rm:{backbone}")
    head = tmp_path / "head"
    shutil.copytree(saved, head)
    overwrite_values(head / "reward_head.safetensors", "head.weight", [float("inf")])
    with pytest.raises(UserError) as e:
        load_reward_model(head)
    # the Bradley-Terry head is one linear map from the 64-wide state to a scalar
    assert str(e.value) == (f"{head}/reward_head.safetensors: the reward head's 'head.weight' holds 1 NaN or "
                            "infinite value of 64; the file is damaged")


def test_cli_trains_and_evaluates_a_reward_model(tiny_model_dir, tmp_path, capsys):
    data = _pairs_file(tmp_path, n=24)
    out = tmp_path / "run"
    assert main(["train", "--method", "reward_model", "--model", str(tiny_model_dir), "--data", str(data),
                 "--output-dir", str(out), "--max-steps", "2", "--progress", "false"]) == 0
    capsys.readouterr()
    assert main(["eval", "rm", "--data", str(data), "--model", str(out / "model")]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "ece" in printed
    assert main(["eval", "rm", "--data", str(data), "--model", str(tiny_model_dir)]) == 2
    assert "is not a reward model directory" in capsys.readouterr().err


def test_implicit_reward_is_beta_times_the_log_ratio(tiny_model_dir, trained):
    """β·(log π(y|x) − log π_ref(y|x)) against log-probs computed by hand from the logits: the
    policy is the tiny model with its output layer scaled by 1.5, the reference the tiny model."""
    tok = load_tokenizer(str(tiny_model_dir))
    ref = load_model(str(tiny_model_dir), dtype="fp64").eval()
    policy = load_model(str(tiny_model_dir), dtype="fp64").eval()
    with torch.no_grad():
        policy.lm_head.weight.mul_(1.5)
    scorer = ImplicitReward(policy, ref, tok, beta=0.2)
    prompt, response = "Review the lamp.", "The lamp is lovely."
    prompt_ids = tok(prompt)["input_ids"]
    resp_ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([prompt_ids + resp_ids])

    def logp(model):
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
        targets = ids[0, 1:]
        return lp[torch.arange(len(targets)), targets][len(prompt_ids) - 1:].sum().item()

    expected = 0.2 * (logp(policy) - logp(ref))
    assert scorer.score([prompt], [response])[0] == pytest.approx(expected, abs=1e-9)
    assert ImplicitReward(ref, ref, tok).score([prompt], [response]) == [0.0]
