"""Synthetic feedback: pair rules, ranks, label noise, and files that alignlab's loaders accept."""

from __future__ import annotations

import json

import pytest

from alignlab.data.convert import competition_ranks
from alignlab.data.load import load_records
from alignlab.errors import UserError
from alignlab.tasks import get_task
from alignlab.testbed.feedback import FeedbackSpec, pairs_of, synthesize


def pick_pairs(scores: list[float], draws: int = 1, **spec) -> set[tuple[int, int] | None]:
    """The (chosen, rejected) sample indices that feedback's pairing picks for ``scores`` over
    ``draws`` copies of one prompt's samples; None for a copy without a pair."""
    texts = [f"s{i}" for i in range(len(scores))]
    pairs, _ = pairs_of(["p"] * draws, [texts] * draws, [list(scores)] * draws, FeedbackSpec(**spec))
    picked = {(texts.index(r.chosen), texts.index(r.rejected)) for r in pairs}
    return picked | ({None} if len(pairs) < draws else set())


def test_best_worst_takes_first_best_and_first_worst():
    assert pick_pairs([0.0, 1.0, 1.0, 0.0]) == {(1, 0)}
    assert pick_pairs([0.5, 0.5, 0.5]) == {None}


def test_random_and_margin_rules_only_return_strictly_ordered_pairs():
    scores = [0.0, 0.3, 1.0]
    seen = pick_pairs(scores, 200, pair_rule="random", seed=1)
    assert seen == {(1, 0), (2, 0), (2, 1)}
    seen = pick_pairs(scores, 200, pair_rule="margin", margin=0.5, seed=1)
    assert seen == {(2, 0), (2, 1)}  # 0.3 - 0.0 < 0.5 is excluded
    assert pick_pairs(scores, pair_rule="margin", margin=1.5) == {None}


def test_competition_ranks():
    assert competition_ranks([3.0, 1.0, 3.0, 0.0]) == [1, 3, 1, 4]
    assert competition_ranks([2.0]) == [1]


@pytest.mark.parametrize("kwargs,match", [
    ({"k": 1}, "k must be"), ({"num_prompts": 0}, "num_prompts"), ({"reward": "gold!"}, "reward"),
    ({"pair_rule": "best"}, "pair_rule"), ({"label_noise": 1.5}, "label_noise"), ({"margin": -1.0}, "margin"),
    ({"task": "arithmetc"}, "arithmetic"), ({"margin": 0.5}, "margin applies to pair_rule margin or random"),
])
def test_bad_specs_are_user_errors(kwargs, match):
    with pytest.raises(UserError, match=match):
        FeedbackSpec(**kwargs)


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def synthesized(tiny_model_dir, tmp_path_factory):
    """The untrained tiny model answering sentiment prompts, scored by the proxy (gold plus a
    length bonus), so that almost every prompt's samples differ in score."""
    out = tmp_path_factory.mktemp("feedback")
    spec = FeedbackSpec("sentiment", num_prompts=40, k=3, reward="proxy", label_noise=0.25, seed=4)
    return spec, out, synthesize(tiny_model_dir, spec, out)


def test_every_shape_is_written_and_consistent(synthesized):
    spec, out, meta = synthesized
    task = get_task("sentiment")
    scored = read(out / "scored.jsonl")
    assert len(scored) == 40 * 3 - meta["empty_samples_dropped"] == meta["rows"]["scored"]
    for row in scored:
        assert row["score"] == pytest.approx(task.proxy(row["prompt"], row["completion"]), abs=1e-12)
    threshold = sum(r["score"] for r in scored) / len(scored)
    assert meta["label_threshold"] == pytest.approx(threshold, abs=1e-12)
    unpaired = read(out / "unpaired.jsonl")
    assert [r["label"] for r in unpaired] == [r["score"] > threshold for r in scored]
    negatives = read(out / "negatives.jsonl")
    assert len(negatives) == sum(not r["label"] for r in unpaired)
    ranked = read(out / "ranked.jsonl")
    assert len(ranked) == 40 and all(len(r["completions"]) == len(r["scores"]) for r in ranked)
    assert sum(len(r["completions"]) for r in ranked) == len(scored)
    assert all(r["ranks"] == competition_ranks(r["scores"]) for r in ranked)
    pairs = read(out / "pairs.jsonl")
    assert len(pairs) == meta["rows"]["pairs"] == 40 - meta["prompts_without_pair"]
    assert meta["unfinished_samples_kept"] == unfinished_by_regenerating(spec, out) > 0


def unfinished_by_regenerating(spec, out) -> int:
    """The same samples drawn again with the generator directly; count those cut off at the
    task's max_new_tokens (the untrained model seldom stops on its own)."""
    from alignlab.generation import SamplingParams, make_generator
    from alignlab.models import load_model, load_tokenizer

    meta = json.loads((out / "metadata.json").read_text())
    task = get_task(spec.task)
    model, tok = load_model(meta["model"]), load_tokenizer(meta["model"])
    rows = make_generator(model, tok, batch_size=256).generate(task.train_prompts(spec.num_prompts, spec.seed), spec.k,
                                                 SamplingParams(max_new_tokens=task.max_new_tokens, seed=spec.seed))
    return sum(not s.finished for row in rows for s in row if s.text.strip())


def test_label_noise_flips_exactly_the_recorded_pairs(synthesized):
    _, out, meta = synthesized
    pairs = read(out / "pairs.jsonl")
    flipped = set(meta["flipped_rows"])
    assert len(flipped) == meta["flipped_pairs"] == round(0.25 * len(pairs))
    for i, row in enumerate(pairs):
        if i in flipped:
            assert row["score_chosen"] < row["score_rejected"]
        else:
            assert row["score_chosen"] > row["score_rejected"]


def test_files_load_as_alignlab_data(synthesized):
    """The pairs file is a TRL standard-format preference file that the pair loader accepts."""
    _, out, meta = synthesized
    loaded = load_records(str(out / "pairs.jsonl"), "pair")
    assert len(loaded.records) == meta["rows"]["pairs"] and not loaded.skipped
    first = read(out / "pairs.jsonl")[0]
    assert loaded.records[0].prompt == first["prompt"] and loaded.records[0].chosen == first["chosen"]


def test_same_seed_same_files(synthesized, tiny_model_dir, tmp_path):
    spec, out, _ = synthesized
    synthesize(tiny_model_dir, spec, tmp_path)
    for name in ("pairs", "ranked", "unpaired", "scored", "negatives"):
        assert (tmp_path / f"{name}.jsonl").read_text() == (out / f"{name}.jsonl").read_text()


def test_empty_answers_are_dropped_and_counted(tiny_model_dir, tmp_path, monkeypatch):
    """A model that answers with nothing half of the time: no file holds an empty response, and
    the metadata counts the dropped answers."""
    from alignlab.generation import Sample
    from alignlab.generation.native import NativeGenerator

    real = NativeGenerator.generate

    def half_empty(self, prompts, n, params, start=0):
        rows = real(self, prompts, n, params, start)
        return [[Sample("" if j % 2 else s.text, s.prompt_ids, s.token_ids, s.finished) for j, s in enumerate(row)]
                for row in rows]

    monkeypatch.setattr(NativeGenerator, "generate", half_empty)
    meta = synthesize(tiny_model_dir, FeedbackSpec("sentiment", num_prompts=5, k=4, reward="proxy"), tmp_path)
    assert meta["empty_samples_dropped"] == 10
    assert meta["rows"]["scored"] == 10
    for name in ("pairs", "scored", "unpaired", "negatives"):
        for row in read(tmp_path / f"{name}.jsonl"):
            assert all(v.strip() for k, v in row.items() if k in ("chosen", "rejected", "completion"))
