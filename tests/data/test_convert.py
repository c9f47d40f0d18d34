"""Converters between shapes, with outputs worked out by hand."""

from __future__ import annotations

import pytest

from alignlab.data.convert import (
    competition_ranks,
    flip_labels,
    pairs_to_unpaired,
    rank_responses,
    ranked_to_pairs,
    ranked_to_sft,
    reward_augment,
    scored_to_pairs,
    scored_to_ranked,
    scored_to_sft,
    target_score_prompt,
)
from alignlab.data.records import Message, PairRecord, RankedRecord, ScoredRecord, SFTRecord, UnpairedRecord
from alignlab.errors import DataError, UserError

# Written out in full here, not built from the module's constant.
SYSTEM_8 = ("You are an assistant that generates responses for the instruction while implicitly achieving the "
            "following target scores (on a scale of 1-10, where 1 is lowest and 10 is highest):\n"
            "Overall score: 8.")


def S(prompt, completion, score, row):  # noqa: N802
    return ScoredRecord(prompt, completion, score, "s.jsonl", row)


SCORED = [S("a", "x", 1.0, 1), S("a", "y", 3.0, 2), S("b", "z", 2.0, 3), S("a", "w", 3.0, 4)]


def test_scored_to_ranked_groups_by_prompt_and_counts_lone_prompts():
    out = scored_to_ranked(SCORED)
    # prompt a: y (3) and w (3) tie and keep their order, then x (1); prompt b has one response.
    assert out.records == [RankedRecord("a", ("y", "w", "x"), (3.0, 3.0, 1.0), "s.jsonl", 1)]
    assert out.dropped == {"prompts with one response": 1}


# Prompt p has response a twice (scores 3 and 4), prompt q has only x, twice.
REPEATED = [S("p", "a", 3.0, 1), S("p", "b", 1.0, 2), S("q", "x", 5.0, 3), S("p", "a", 4.0, 4), S("p", "c", 2.0, 5),
            S("q", "x", 1.0, 6)]


def test_scored_to_ranked_merges_a_repeated_response_with_the_mean_score():
    out = scored_to_ranked(REPEATED)
    # p: a's score is (3 + 4) / 2 = 3.5, then c (2), then b (1); the list keeps p's first row.
    # q: x twice is one response, so q has one response and makes no list.
    assert out.records == [RankedRecord("p", ("a", "c", "b"), (3.5, 2.0, 1.0), "s.jsonl", 1)]
    assert out.merged == 2
    assert out.dropped == {"prompts with one response": 1}


def test_scored_to_pairs_never_pairs_a_response_with_itself():
    out = scored_to_pairs(REPEATED, "all_pairs")
    assert pairs(out) == [("a", "c", 3.5, 2.0), ("a", "b", 3.5, 1.0), ("c", "b", 2.0, 1.0)]
    assert out.merged == 2
    assert out.dropped == {"prompts with one response": 1}


def test_scored_to_ranked_groups_conversation_prompts():
    q = (Message("user", "q"),)
    answers = [(Message("assistant", t),) for t in ("u", "v")]
    out = scored_to_ranked([S(q, answers[0], 0.0, 1), S(q, answers[1], 1.0, 2)])
    assert out.records[0].completions == (answers[1], answers[0])


LIST = RankedRecord("p", ("a", "b", "c", "d"), (3.0, 2.0, 1.0, 1.0), "r.jsonl", 5)


def pairs(out):
    return [(r.chosen, r.rejected, r.score_chosen, r.score_rejected) for r in out.records]


def test_best_worst_takes_the_first_best_and_the_first_worst():
    out = ranked_to_pairs([LIST], "best_worst")
    assert pairs(out) == [("a", "c", 3.0, 1.0)]
    assert (out.records[0].prompt, out.records[0].source, out.records[0].row) == ("p", "r.jsonl", 5)
    assert out.dropped == {}


def test_all_pairs_skips_ties_and_counts_them():
    out = ranked_to_pairs([LIST], "all_pairs")
    assert pairs(out) == [("a", "b", 3.0, 2.0), ("a", "c", 3.0, 1.0), ("a", "d", 3.0, 1.0),
                          ("b", "c", 2.0, 1.0), ("b", "d", 2.0, 1.0)]
    assert out.dropped == {"pairs with tied scores": 1}


def test_margin_keeps_pairs_with_a_wide_enough_gap():
    out = ranked_to_pairs([LIST], "margin", margin=1.5)
    assert pairs(out) == [("a", "c", 3.0, 1.0), ("a", "d", 3.0, 1.0)]
    assert out.dropped == {"pairs with tied scores": 1, "pairs whose scores differ by less than 1.5": 3}
    assert pairs(ranked_to_pairs([LIST], "margin", margin=2.0)) == pairs(out)  # the gap may equal the margin


def test_random_is_seeded_and_picks_an_ordered_pair():
    lists = [LIST] * 20
    first = pairs(ranked_to_pairs(lists, "random", seed=3))
    assert first == pairs(ranked_to_pairs(lists, "random", seed=3))
    assert first != pairs(ranked_to_pairs(lists, "random", seed=4))
    assert len(first) == 20 and all(c > r for _, _, c, r in first)
    assert len(set(first)) > 1


def test_random_with_a_margin_draws_only_wide_enough_pairs():
    """LIST's pairs with a gap of at least 1.5: a>c and a>d (a>b and b>c, b>d differ by 1)."""
    seen = set(pairs(ranked_to_pairs([LIST] * 200, "random", margin=1.5, seed=0)))
    assert seen == {("a", "c", 3.0, 1.0), ("a", "d", 3.0, 1.0)}
    out = ranked_to_pairs([LIST, RankedRecord("q", ("x", "y"), (1.0, 0.5))], "random", margin=2.0, seed=0)
    assert pairs(out) == [("a", "c", 3.0, 1.0)] or pairs(out) == [("a", "d", 3.0, 1.0)]
    assert out.dropped == {"lists with no pair whose scores differ by at least 2": 1}
    with pytest.raises(UserError, match="margin must be >= 0"):
        ranked_to_pairs([LIST], "random", margin=-0.5)


def test_rank_responses_sorts_best_first_and_keeps_ties_in_order():
    rec = rank_responses("p", ["w", "x", "y", "z"], [1.0, 3.0, 1.0, 2.0], source="s.jsonl", row=4)
    assert rec == RankedRecord("p", ("x", "z", "w", "y"), (3.0, 2.0, 1.0, 1.0), "s.jsonl", 4)


def test_competition_ranks_share_the_lower_rank():
    assert competition_ranks([3.0, 1.0, 3.0, 0.0]) == [1, 3, 1, 4]
    assert competition_ranks([0.5, 0.5]) == [1, 1]


def test_lists_that_tie_throughout_give_no_pair():
    tied = RankedRecord("p", ("a", "b"), (1.0, 1.0))
    for rule in ("best_worst", "random"):
        out = ranked_to_pairs([tied, LIST], rule)
        assert len(out.records) == 1
        assert out.dropped == {"lists whose scores all tie": 1}
    assert ranked_to_pairs([tied], "all_pairs").dropped == {"pairs with tied scores": 1}


def test_bad_rule_and_margin():
    with pytest.raises(UserError, match="unknown pair rule 'best'"):
        ranked_to_pairs([LIST], "best")
    with pytest.raises(UserError, match="margin must be >= 0"):
        ranked_to_pairs([LIST], "margin", margin=-1)


def test_scored_to_pairs_counts_the_drops_of_both_steps():
    out = scored_to_pairs(SCORED, "all_pairs")
    assert pairs(out) == [("y", "x", 3.0, 1.0), ("w", "x", 3.0, 1.0)]
    assert out.dropped == {"pairs with tied scores": 1, "prompts with one response": 1}


def test_scored_to_sft_keeps_each_prompts_first_top_scored_response():
    """SCORED: prompt a has x 1, y 3, w 3 (y and w tie at the top: y came first); b has z alone."""
    out = scored_to_sft(SCORED)
    assert out.records == [SFTRecord("a", "y", "s.jsonl", 2), SFTRecord("b", "z", "s.jsonl", 3)]
    assert out.dropped == {}
    later_best = [S("a", "x", 1.0, 1), S("a", "v", 4.0, 2), S("a", "y", 4.0, 3)]
    assert scored_to_sft(later_best).records == [SFTRecord("a", "v", "s.jsonl", 2)]


def test_ranked_to_sft_keeps_the_best_of_each_list():
    lists = [RankedRecord("p", ("b", "a", "c"), (5.0, 5.0, 1.0), "r.jsonl", 1),
             RankedRecord((Message("user", "q"),), ((Message("assistant", "x"),), (Message("assistant", "y"),)),
                          (2.0, -1.0), "r.jsonl", 2)]
    assert ranked_to_sft(lists).records == [SFTRecord("p", "b", "r.jsonl", 1),
                                            SFTRecord((Message("user", "q"),), (Message("assistant", "x"),),
                                                      "r.jsonl", 2)]


def test_pairs_to_unpaired():
    out = pairs_to_unpaired([PairRecord("p", "good", "bad", "x.jsonl", 3, 1.0, 0.0)])
    assert out.records == [UnpairedRecord("p", "good", True, "x.jsonl", 3),
                           UnpairedRecord("p", "bad", False, "x.jsonl", 3)]
    assert out.dropped == {}


# ---------------------------------------------------------------- reward-augmented relabeling


def test_target_score_text_and_number_format():
    assert target_score_prompt(8) == SYSTEM_8
    assert target_score_prompt(8.0) == SYSTEM_8
    assert target_score_prompt(7.5).endswith("\nOverall score: 7.5.")


def test_reward_augment_string_prompts():
    out = reward_augment([PairRecord("q", "a", "b", "f", 1, 8.0, 6.5, strength=0.9)])
    system_6_5 = SYSTEM_8.replace("score: 8.", "score: 6.5.")
    assert out.records == [
        PairRecord(SYSTEM_8 + "\n\nq", "a", "b", "f", 1, 8.0, 6.5),
        PairRecord(system_6_5 + "\n\nq", "b", "a", "f", 1, 6.5, 8.0),
    ]
    assert reward_augment([PairRecord("q", "a", "b", "f", 1, 8.0, 6.5)], "nosys").records == out.records


def test_reward_augment_keeps_equal_scores_and_drops_reversed_pairs():
    out = reward_augment([PairRecord("q", "a", "b", "f", 1, 5.0, 5.0), PairRecord("q", "a", "b", "f", 2, 4.0, 6.0)])
    assert [r.row for r in out.records] == [1, 1]
    assert out.dropped == {"pairs with score_chosen < score_rejected": 1}


@pytest.mark.parametrize("chosen,rejected,field,value", [
    (0.9, 0.2, "score_chosen", "0.9"), (8.0, 0.0, "score_rejected", "0.0"), (1e308, 5.0, "score_chosen", "1e+308"),
    (float("nan"), 5.0, "score_chosen", "nan"), (11.0, 10.0, "score_chosen", "11.0")])
def test_reward_augment_refuses_scores_off_the_scale_its_prompt_states(chosen, rejected, field, value):
    """S(s) says "on a scale of 1-10": a score of 0.9 (a [0, 1] reward) or 1e308 would be written into
    the prompt under that claim. The ends of the scale, 1 and 10, are on it."""
    with pytest.raises(DataError) as e:
        reward_augment([PairRecord("q", "a", "b", "f.jsonl", 3, chosen, rejected)])
    assert f"f.jsonl, row 3, field '{field}'" in str(e.value) and f"{value} is off the 1-10 scale" in str(e.value)
    assert len(reward_augment([PairRecord("q", "a", "b", "f", 1, 10.0, 1.0)]).records) == 2


def test_reward_augment_system_variant_on_conversations():
    user = Message("user", "q")
    a, b = (Message("assistant", "a"),), (Message("assistant", "b"),)
    out = reward_augment([PairRecord((user,), a, b, score_chosen=8, score_rejected=1)], "system")
    assert out.records[0].prompt == (Message("system", SYSTEM_8), user)
    assert out.records[1].prompt[0].content.endswith("Overall score: 1.")
    own = Message("system", "Be brief.")
    out = reward_augment([PairRecord((own, user), a, b, score_chosen=8, score_rejected=1)], "system")
    assert out.records[0].prompt == (Message("system", SYSTEM_8 + "\n\nBe brief."), user)


def test_reward_augment_nosys_variant_on_conversations():
    own, user = Message("system", "Be brief."), Message("user", "q")
    a, b = (Message("assistant", "a"),), (Message("assistant", "b"),)
    out = reward_augment([PairRecord((own, user), a, b, score_chosen=8, score_rejected=1)], "nosys")
    assert out.records[0].prompt == (own, Message("user", SYSTEM_8 + "\n\nq"))


def test_reward_augment_refuses_pairs_without_scores_by_row():
    records = [PairRecord("q", "a", "b", "p.jsonl", 1, 2.0, 1.0), PairRecord("q", "a", "b", "p.jsonl", 2),
               PairRecord("q", "a", "b", "p.jsonl", 4)]
    with pytest.raises(DataError) as e:
        reward_augment(records)
    assert [(i.row, i.field) for i in e.value.issues] == [(2, "score_chosen"), (4, "score_chosen")]
    assert str(e.value).startswith("p.jsonl, row 2, field 'score_chosen': reward-augmented relabeling needs")


def test_reward_augment_nosys_needs_a_user_turn():
    a, b = (Message("assistant", "a"),), (Message("assistant", "b"),)
    with pytest.raises(DataError, match="p.jsonl, row 3, field 'prompt': the prompt has no user turn"):
        reward_augment([PairRecord((), a, b, "p.jsonl", 3, 2.0, 1.0)], "nosys")
    with pytest.raises(UserError, match="unknown variant 'sys'"):
        reward_augment([], "sys")


# ---------------------------------------------------------------- label noise


PAIRS = [PairRecord("p", f"good{i}", f"bad{i}", "p.jsonl", i + 1, float(i), -1.0) for i in range(10)]


def test_flip_labels_flips_exactly_round_rate_n():
    out = flip_labels(PAIRS, 0.3, seed=0)
    assert len(out.flipped) == 3 and out.flipped == sorted(set(out.flipped))
    for i, (before, after) in enumerate(zip(PAIRS, out.records, strict=True)):
        if i in out.flipped:
            assert (after.chosen, after.rejected) == (before.rejected, before.chosen)
            assert (after.score_chosen, after.score_rejected) == (-1.0, float(i))
            assert after.row == before.row
        else:
            assert after == before
    assert PAIRS[out.flipped[0]].chosen.startswith("good")  # the input is left alone
    assert len(flip_labels(PAIRS, 0.25).flipped) == 2  # round(2.5) == 2
    assert flip_labels(PAIRS, 0.0).flipped == []
    assert len(flip_labels(PAIRS, 0.49).flipped) == 5  # round(4.9)


def test_flip_labels_is_seeded():
    assert flip_labels(PAIRS, 0.4, seed=7).flipped == flip_labels(PAIRS, 0.4, seed=7).flipped
    assert len({tuple(flip_labels(PAIRS, 0.4, seed=s).flipped) for s in range(5)}) > 1


def test_flip_labels_rate_must_be_a_fraction():
    for rate in (-0.1, 0.5, 1.5, True):
        with pytest.raises(UserError, match="rate must be in"):
            flip_labels(PAIRS, rate)
