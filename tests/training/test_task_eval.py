"""`task:` in a training config: the testbed's gold-reward measurements at every evaluation."""

from __future__ import annotations

import json

import pytest

from alignlab import train
from alignlab.errors import ConfigError
from tests.training.helpers import base_config

KEYS = {"eval/gold/sampled", "eval/gold/greedy", "eval/gold/win_rate", "eval/gold/kl", "eval/gold/length"}


def test_gold_metrics_are_logged_at_each_evaluation_and_at_the_end(tiny_model_dir, pairs_file, tmp_path):
    cfg = base_config(tiny_model_dir, pairs_file, tmp_path / "run", task="arithmetic", task_eval_prompts=6,
                      max_steps=3, eval_every=2, lr=1e-2)
    summary = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/gold/kl" in r]
    assert [r["step"] for r in evals] == [2, 3]
    assert KEYS <= set(summary.eval_metrics)
    # the policy moved away from the starting model, so the sampled KL estimate is no longer 0
    assert summary.eval_metrics["eval/gold/kl"] != 0.0
    assert 0.0 <= summary.eval_metrics["eval/gold/win_rate"] <= 1.0
    assert summary.eval_metrics["eval/gold/length"] <= 6  # the task's max_new_tokens


def test_the_reference_is_the_starting_model_when_reference_logps_are_cached(tiny_model_dir, pairs_file, tmp_path):
    """A second run finds the reference log-probs in the cache, so nothing runs the reference
    before training; the task evaluation must still compare against the starting model, not the
    trained one (then the KL would be exactly 0). Both runs end with the same numbers."""
    cfg = dict(task="arithmetic", task_eval_prompts=6, max_steps=3, eval_every=0, lr=1e-2)
    first = train(base_config(tiny_model_dir, pairs_file, tmp_path / "a", **cfg))
    second = train(base_config(tiny_model_dir, pairs_file, tmp_path / "b", **cfg))
    assert second.eval_metrics["eval/gold/kl"] != 0.0
    assert second.eval_metrics == pytest.approx(first.eval_metrics, abs=1e-9)


def test_unknown_task_is_a_config_error(tiny_model_dir, pairs_file, tmp_path):
    with pytest.raises(ConfigError, match="task: must be one of arithmetic, chainsum, constraints, sentiment"):
        train(base_config(tiny_model_dir, pairs_file, tmp_path / "run", task="arith"))


def test_a_decoding_method_on_top_is_evaluated_too(tiny_model_dir, pairs_file, tmp_path):
    """``task_eval_decoding``: at the end the trained model also answers through best-of-2 by gold.
    Best-of-2's answer to a prompt has gold max(g1, g2) over the two candidates the model draws for
    it with the run's seed, so its mean is recomputed here from the saved model's own two samples
    per prompt (the native sampler's samples depend only on the seed and the prompt's index)."""
    from alignlab.generation import SamplingParams, make_generator
    from alignlab.models import load_model, load_tokenizer
    from alignlab.rewards import load_scorer
    from alignlab.tasks import get_task

    cfg = base_config(tiny_model_dir, pairs_file, tmp_path / "run", task="arithmetic", task_eval_prompts=6,
                      max_steps=2, lr=1e-2, task_eval_decoding="best-of-n --n 2 --scorer task:arithmetic")
    summary = train(cfg)
    got = summary.eval_metrics
    assert KEYS <= set(got)
    assert {k for k in got if "@" in k} == {f"eval/gold@best-of-n/{m}" for m in
                                           ("sampled", "win_rate", "length", "forward_tokens")}
    model_dir = str(tmp_path / "run" / "model")
    prompts = get_task("arithmetic").eval_prompts()[:6]
    params = SamplingParams(max_new_tokens=get_task("arithmetic").max_new_tokens, temperature=1.0, seed=cfg["seed"])
    rows = make_generator(load_model(model_dir), load_tokenizer(model_dir)).generate(prompts, 2, params)
    gold = load_scorer("task:arithmetic")
    best = [max(gold.score([p, p], [s.text for s in row])) for p, row in zip(prompts, rows, strict=True)]
    assert got["eval/gold@best-of-n/sampled"] == pytest.approx(sum(best) / 6, abs=1e-12)
    spent = sum(len(s.prompt_ids) + len(s.token_ids) for row in rows for s in row)
    assert got["eval/gold@best-of-n/forward_tokens"] == pytest.approx(spent / 6, abs=1e-12)


def test_a_decoding_method_that_cannot_work_stops_the_run_before_training(tiny_model_dir, pairs_file, tmp_path):
    with pytest.raises(ConfigError, match="task_eval_decoding: --n must be >= 1, got 0"):
        train(base_config(tiny_model_dir, pairs_file, tmp_path / "run", task="arithmetic",
                          task_eval_decoding="best-of-n --n 0 --scorer task:arithmetic"))
    assert not (tmp_path / "run").exists()


def test_a_greedy_only_method_with_a_second_model_is_evaluated_greedily(tiny_model_dir, pairs_file, tmp_path):
    """Nudging reads a second model (loaded once for the run) and decodes only greedily, so its
    evaluation asks for greedy answers rather than failing at the sampling temperature. Nudged by a
    copy of the starting model, the trained model's answers are judged like any other."""
    cfg = base_config(tiny_model_dir, pairs_file, tmp_path / "run", task="arithmetic", task_eval_prompts=3,
                      max_steps=1, lr=1e-2, task_eval_decoding=f"nudging --aligned {tiny_model_dir} --threshold 0.5")
    got = train(cfg).eval_metrics
    assert {k for k in got if "@" in k} == {f"eval/gold@nudging/{m}" for m in
                                           ("sampled", "win_rate", "length", "forward_tokens")}
    assert 0.0 <= got["eval/gold@nudging/win_rate"] <= 1.0 and got["eval/gold@nudging/forward_tokens"] > 0


def test_transfer_q_with_models_of_another_vocabulary_stops_the_run_before_training(tiny_model_dir, pairs_file,
                                                                                    tmp_path):
    """The vocabulary check `alignlab decode` makes for transfer-q holds for the evaluation too."""
    import shutil

    from alignlab.errors import UserError
    from alignlab.models import load_tokenizer

    other = tmp_path / "other"  # the tiny model with one token more in its vocabulary
    shutil.copytree(tiny_model_dir, other)
    tokenizer = load_tokenizer(str(other))
    tokenizer.add_tokens(["<another-token>"])
    tokenizer.save_pretrained(str(other))
    cfg = base_config(tiny_model_dir, pairs_file, tmp_path / "run", task="arithmetic", task_eval_prompts=3,
                      max_steps=1, lr=1e-2, task_eval_decoding=f"transfer-q --aligned {other} --reference {other}")
    with pytest.raises(UserError, match="^task_eval_decoding: transfer-q needs one vocabulary: the base model "):
        train(cfg)
    assert not (tmp_path / "run" / "model").exists()


def test_a_run_evaluated_on_another_task_than_its_prompts_says_so(tiny_model_dir, tmp_path, capsys):
    """Trained on task:arithmetic's prompts, evaluated with task: chainsum (a slip, or on purpose:
    the run says which, and goes on)."""
    cfg = base_config(tiny_model_dir, "task:arithmetic", tmp_path / "run", method="grpo", reward=["length"],
                      num_generations=2, batch_size=4, max_new_tokens=4, max_steps=1, task="chainsum",
                      task_eval_prompts=2)
    train(cfg)
    err = capsys.readouterr().err
    assert ("note: the run trains on task arithmetic's prompts and is evaluated on task chainsum's held-out prompts "
            "and gold reward (task: chainsum)") in err
    train({**cfg, "task": "arithmetic", "output_dir": str(tmp_path / "same")})
    assert "note: the run trains on task" not in capsys.readouterr().err
