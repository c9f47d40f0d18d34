"""Batch 8 × accumulation 1 and batch 1 × accumulation 8 must give the same update.

The runs use fp64 weights: the claim is that the two compute the same gradient; in fp32 the
different summation order leaves ~1e-7 relative noise that Adam's normalisation can blow up for
parameters whose gradient is nearly zero, which would test float rounding, not the loop."""

from __future__ import annotations

import pytest

from alignlab import train
from tests.training.helpers import base_config, max_abs_diff, weights


# lcpo and bco keep state that is updated once per step from sums over the whole step; kto's
# reference point is a mean over the whole step's mismatched pairs.
@pytest.mark.parametrize("method,data_fixture", [("dpo", "pairs_file"), ("sft", "sft_file"), ("lcpo", "pairs_file"),
                                                 ("bco", "unpaired_file"), ("listmle", "ranked_file"),
                                                 ("kto", "unpaired_file")])
def test_accumulation_equals_big_batch(tmp_path, tiny_model_dir, request, method, data_fixture):
    data = request.getfixturevalue(data_fixture)
    big = train(base_config(tiny_model_dir, data, tmp_path / "big", method=method, batch_size=8, grad_accum=1, dtype="fp64"))
    acc = train(base_config(tiny_model_dir, data, tmp_path / "acc", method=method, batch_size=1, grad_accum=8, dtype="fp64"))
    diff = max_abs_diff(weights(big.model_dir), weights(acc.model_dir))
    assert diff < 1e-9, diff
    # The logged loss is the same number too: it is normalised over the whole step.
    assert acc.train_metrics["loss"] == pytest.approx(big.train_metrics["loss"], abs=1e-6)
    states = sorted(k for k in big.train_metrics if k.startswith("state/"))
    assert bool(states) == (method in ("lcpo", "bco"))
    for k in states:
        assert acc.train_metrics[k] == pytest.approx(big.train_metrics[k], abs=1e-9)
    # And training did something: the weights moved away from the initial model.
    assert max_abs_diff(weights(tiny_model_dir), weights(big.model_dir)) > 1e-4


def test_uneven_token_counts_are_weighted_by_tokens(tmp_path, tiny_model_dir, sft_file):
    """SFT normalises by the step's tokens, not per micro-batch: with unequal lengths per
    micro-batch a per-micro-batch mean would differ from the big batch; ours must not."""
    big = train(base_config(tiny_model_dir, sft_file, tmp_path / "big", method="sft", batch_size=4, grad_accum=1, dtype="fp64"))
    acc = train(base_config(tiny_model_dir, sft_file, tmp_path / "acc", method="sft", batch_size=2, grad_accum=2, dtype="fp64"))
    assert max_abs_diff(weights(big.model_dir), weights(acc.model_dir)) < 1e-6


def test_held_out_kto_loss_does_not_depend_on_the_eval_batch(tmp_path, tiny_model_dir, unpaired_file):
    """KTO's held-out reference point z0 is the mean over the whole held-out set, so evaluating in
    batches of 1 gives the same loss and KL as in one batch. (With a z0 per batch, a batch of one
    row uses that row's own mismatched pair, and the numbers differ.) The held-out set has several
    prompts' records: 0.3 of 16 is at least 4 records."""
    runs = []
    for eval_bs in (1, 16):
        runs.append(train(base_config(tiny_model_dir, unpaired_file, tmp_path / f"e{eval_bs}", method="kto",
                                      max_steps=1, batch_size=4, dtype="fp64", eval_fraction=0.3,
                                      eval_batch_size=eval_bs)).eval_metrics)
    assert runs[0]["eval/loss"] == pytest.approx(runs[1]["eval/loss"], abs=1e-12)
    assert runs[0]["eval/kl"] == pytest.approx(runs[1]["eval/kl"], abs=1e-12)
    assert runs[0]["eval/kl"] > 0.0  # z0 is clamped at 0; a zero would make the check above empty
