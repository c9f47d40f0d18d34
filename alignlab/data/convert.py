"""Converters between feedback shapes: pure functions over records.

Each returns a ``Converted``: the records it made, and how many things it dropped and why. A
made record keeps the ``source`` and ``row`` of the record it came from (a ranked list made from
scored rows: of its first row), so that a later error still points into the original data.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

from alignlab.data.records import (
    Message,
    PairRecord,
    RankedRecord,
    ScoredRecord,
    SFTRecord,
    Text,
    UnpairedRecord,
)
from alignlab.errors import DataError, RowIssue, UserError

T = TypeVar("T")
PAIR_RULES = ("best_worst", "all_pairs", "random", "margin")
VARIANTS = ("system", "nosys")
TARGET_SCORE_SYSTEM = (
    "You are an assistant that generates responses for the instruction while implicitly achieving the "
    "following target scores (on a scale of 1-10, where 1 is lowest and 10 is highest):\nOverall score: {s}."
)


@dataclass
class Converted(Generic[T]):
    """What a converter made, and what it dropped: ``dropped`` maps a reason to a count."""

    records: list[T]
    dropped: dict[str, int] = field(default_factory=dict)
    flipped: list[int] = field(default_factory=list)  # flip_labels: 0-based positions of the flipped pairs
    merged: int = 0  # scored responses merged into an earlier one with the same prompt and text

    def drop(self, reason: str, n: int = 1) -> None:
        if n:
            self.dropped[reason] = self.dropped.get(reason, 0) + n


# ---------------------------------------------------------------- scored -> ranked -> pairs


def scored_to_ranked(records: Sequence[ScoredRecord]) -> Converted[RankedRecord]:
    """Group scored responses by prompt into ranked lists, best first.

    A response given to one prompt more than once (the same text; HelpSteer2 rates some twice)
    is one response whose score is the mean of its scores; ``Converted.merged`` counts the
    repeats merged away. Prompts come in the order they first appear; responses that tie keep
    the order of their first appearance. A prompt with a single distinct response makes no list:
    counted under "prompts with one response".
    """
    groups: dict[Text, dict[Text, list[ScoredRecord]]] = {}
    for rec in records:
        groups.setdefault(rec.prompt, {}).setdefault(rec.completion, []).append(rec)
    out: Converted[RankedRecord] = Converted([])
    for prompt, responses in groups.items():
        out.merged += sum(len(same) - 1 for same in responses.values())
        if len(responses) < 2:
            out.drop("prompts with one response")
            continue
        first = next(iter(responses.values()))[0]
        means = [sum(r.score for r in same) / len(same) for same in responses.values()]
        out.records.append(rank_responses(prompt, list(responses), means, source=first.source, row=first.row))
    return out


def rank_responses(prompt: Text, completions: Sequence[Text], scores: Sequence[float], *, source: str = "",
                   row: int = 0) -> RankedRecord:
    """The responses to one prompt as a ranked list, best first; responses that tie keep their
    order (a stable sort)."""
    best_first = sorted(zip(completions, scores, strict=True), key=lambda item: -item[1])
    return RankedRecord(prompt, tuple(c for c, _ in best_first), tuple(float(s) for _, s in best_first),
                        source=source, row=row)


def competition_ranks(scores: Sequence[float]) -> list[int]:
    """Rank of each score in the order given: 1 for the best; equal scores share the lower rank
    (scores 3, 1, 3, 0 have ranks 1, 3, 1, 4)."""
    return [1 + sum(other > s for other in scores) for s in scores]


def ranked_to_pairs(
    records: Sequence[RankedRecord], rule: str = "best_worst", *, margin: float = 0.0, seed: int | str = 0
) -> Converted[PairRecord]:
    """Pairs from ranked lists; each pair carries its two scores.

    Rules: ``best_worst``, one pair per list, the first best against the first worst (in the
    data's order, as the testbed picks them); ``all_pairs``, every two responses whose scores
    differ; ``random``, one pair per list drawn by ``random.Random(seed)`` from those whose scores
    differ by at least ``margin`` (0: any that differ; the list's pairs in best-first order);
    ``margin``, every two responses whose scores differ by at least ``margin`` (> 0 always).
    Responses that tie never make a pair: the tied pairs (or, for one-pair rules, the lists that
    tie throughout) are counted, and so are pairs below the margin (for ``random``: the lists
    with no pair at the margin).
    """
    if rule not in PAIR_RULES:
        raise UserError(f"unknown pair rule '{rule}'; expected one of: {', '.join(PAIR_RULES)}")
    if rule in ("margin", "random") and not margin >= 0:
        raise UserError(f"margin must be >= 0, got {margin}")
    rng = random.Random(seed)
    out: Converted[PairRecord] = Converted([])
    for rec in records:
        n, s = len(rec.scores), rec.scores
        ordered = [(i, j) for i in range(n) for j in range(i + 1, n) if s[i] > s[j]]
        if rule in ("best_worst", "random"):
            if not ordered:
                out.drop("lists whose scores all tie")
                continue
            wide = [(i, j) for i, j in ordered if s[i] - s[j] >= margin] if rule == "random" else ordered
            if not wide:
                out.drop(f"lists with no pair whose scores differ by at least {margin:g}")
                continue
            worst = next(i for i in range(n) if s[i] == s[-1])  # the first of the worst
            picks = [(0, worst)] if rule == "best_worst" else [rng.choice(wide)]
        else:
            out.drop("pairs with tied scores", n * (n - 1) // 2 - len(ordered))
            picks = ordered if rule == "all_pairs" else [(i, j) for i, j in ordered if s[i] - s[j] >= margin]
            out.drop(f"pairs whose scores differ by less than {margin:g}", len(ordered) - len(picks))
        for i, j in picks:
            out.records.append(PairRecord(rec.prompt, rec.completions[i], rec.completions[j], source=rec.source,
                                          row=rec.row, score_chosen=s[i], score_rejected=s[j]))
    return out


def scored_to_pairs(
    records: Sequence[ScoredRecord], rule: str = "best_worst", *, margin: float = 0.0, seed: int | str = 0
) -> Converted[PairRecord]:
    """``scored_to_ranked`` then ``ranked_to_pairs``; the drops and merges of both are counted."""
    ranked = scored_to_ranked(records)
    pairs = ranked_to_pairs(ranked.records, rule, margin=margin, seed=seed)
    for reason, n in ranked.dropped.items():
        pairs.drop(reason, n)
    pairs.merged = ranked.merged
    return pairs


def pairs_to_unpaired(records: Sequence[PairRecord]) -> Converted[UnpairedRecord]:
    """Each pair as two labelled responses: chosen a thumbs up (True), rejected a thumbs down.

    There is no converter back: a thumbs up or down does not say which of two responses is better.
    """
    out: Converted[UnpairedRecord] = Converted([])
    for rec in records:
        for completion, label in ((rec.chosen, True), (rec.rejected, False)):
            out.records.append(UnpairedRecord(rec.prompt, completion, label, source=rec.source, row=rec.row))
    return out


# ---------------------------------------------------------------- best of n


def ranked_to_sft(records: Sequence[RankedRecord], top: int = 1, min_score: float | None = None
                  ) -> Converted[SFTRecord]:
    """Best-of-n SFT data (rejection sampling): each list's ``top`` best responses as SFT examples,
    best first, those scored below ``min_score`` left out (counted).

    A ranked record lists its responses best first, responses that tie in the data's order, so the
    best is the first of the top-scored ones as the data gave them.
    """
    if top < 1:
        raise UserError(f"top must be >= 1, got {top}")
    out: Converted[SFTRecord] = Converted([])
    for r in records:
        best = list(zip(r.completions, r.scores, strict=True))[:top]
        kept = [c for c, s in best if min_score is None or s >= min_score]
        out.drop(f"responses scored below {min_score:g}" if min_score is not None else "", len(best) - len(kept))
        out.records.extend(SFTRecord(r.prompt, c, source=r.source, row=r.row) for c in kept)
    return out


def scored_to_sft(records: Sequence[ScoredRecord]) -> Converted[SFTRecord]:
    """Best-of-n SFT data from scored responses: per prompt, the response with the highest score.

    Prompts come in the order they first appear; among responses that tie for the highest score
    the first to appear wins. A prompt with a single response keeps it (it is the best it has).
    The example keeps the ``source`` and ``row`` of the response it holds.
    """
    best: dict[Text, ScoredRecord] = {}
    for rec in records:
        if rec.prompt not in best or rec.score > best[rec.prompt].score:
            best[rec.prompt] = rec
    return Converted([SFTRecord(r.prompt, r.completion, source=r.source, row=r.row) for r in best.values()])


# ---------------------------------------------------------------- relabeling and label noise


def target_score_prompt(score: float) -> str:
    """S(s): the system text that asks for a response of target score ``s`` (ALGORITHMS 1.11).

    An integral score is printed as an int ("7", not "7.0").
    """
    s = int(score) if float(score).is_integer() else score
    return TARGET_SCORE_SYSTEM.format(s=s)


def reward_augment(records: Sequence[PairRecord], variant: str = "system") -> Converted[PairRecord]:
    """Reward-augmented relabeling (ALGORITHMS 1.11; *Reward-Augmented Data Enhances Direct
    Preference Alignment of LLMs*).

    Scores are on the paper's scale of 1-10, which the target-score text states; a score off it
    is an error naming its row. Pairs with ``score_chosen >= score_rejected`` are kept; each gives two pairs, in this order:
    (S(rw)+x, yw over yl) and (S(rl)+x, yl over yw), the scores going with their responses. Pairs
    the other way round are dropped and counted. A pair without scores is an error, and so is,
    for "nosys", a conversation prompt without a user turn; all such pairs are reported at once.

    ``variant`` "system": a conversation prompt gets S(s) as its system message (before the
    system message it already has, with a blank line between, as templates allow only one);
    "nosys": S(s) and a blank line start the first user turn. A plain-text prompt has no turns, so
    under both variants it becomes S(s), a blank line, and the prompt.
    """
    if variant not in VARIANTS:
        raise UserError(f"unknown variant '{variant}'; expected one of: {', '.join(VARIANTS)}")
    unscored = [RowIssue(r.source, r.row, "score_chosen", "reward-augmented relabeling needs score_chosen "
                                                          "and score_rejected; this pair has no scores")
                for r in records if r.score_chosen is None or r.score_rejected is None]
    # the target-score text states a scale of 1-10 (the paper's, UltraFeedback's); a score off it
    # would be written into the prompt as it is
    off_scale = [RowIssue(r.source, r.row, name, f"{value!r} is off the 1-10 scale that the target-score prompt "
                                                 "states; rescale the scores to 1-10")
                 for r in records for name, value in (("score_chosen", r.score_chosen),
                                                      ("score_rejected", r.score_rejected))
                 if value is not None and not 1 <= value <= 10]
    no_user = [RowIssue(r.source, r.row, "prompt", "the prompt has no user turn to put the target score in; use "
                                                   "the variant 'system'")
               for r in records if variant == "nosys" and isinstance(r.prompt, tuple)
               and not any(m.role == "user" for m in r.prompt)]
    issues = unscored + off_scale + no_user
    if issues:
        hint = "every pair needs its two scores" if unscored else "scores from 1 to 10" if off_scale \
            else "use the variant 'system'"
        raise DataError(sorted(issues, key=lambda i: (i.source, i.row)), hint=hint)
    out: Converted[PairRecord] = Converted([])
    for rec in records:
        rw, rl = rec.score_chosen, rec.score_rejected
        assert rw is not None and rl is not None
        if rw < rl:
            out.drop("pairs with score_chosen < score_rejected")
            continue
        out.records.append(replace(rec, prompt=_with_target(rec.prompt, rw, variant), strength=None))
        out.records.append(replace(rec, prompt=_with_target(rec.prompt, rl, variant), chosen=rec.rejected,
                                   rejected=rec.chosen, score_chosen=rl, score_rejected=rw, strength=None))
    return out


def _with_target(prompt: Text, score: float, variant: str) -> Text:
    head = target_score_prompt(score)
    if isinstance(prompt, str):
        return f"{head}\n\n{prompt}"
    messages = list(prompt)
    if variant == "system":
        if messages and messages[0].role == "system":
            return (Message("system", f"{head}\n\n{messages[0].content}"), *messages[1:])
        return (Message("system", head), *messages)
    first = next(i for i, m in enumerate(messages) if m.role == "user")
    messages[first] = Message("user", f"{head}\n\n{messages[first].content}")
    return tuple(messages)


def flip_labels(records: Sequence[PairRecord], rate: float, *, seed: int | str = 0) -> Converted[PairRecord]:
    """Label noise: swap chosen and rejected (and their scores) in exactly ``round(rate * n)`` pairs.

    The pairs are drawn by ``random.Random(seed)`` (one ``sample`` call, so a given seed and
    number of pairs always flip the same positions); ``Converted.flipped`` lists their 0-based
    positions, ascending. A strength stays as it is: the flipped label is asserted as firmly.
    """
    if isinstance(rate, bool) or not 0.0 <= rate < 0.5:
        raise UserError(f"--rate must be in [0, 0.5), got {rate!r}: at 0.5 the labels say nothing, above it they "
                        "mostly say the opposite")
    n = len(records)
    flipped = sorted(random.Random(seed).sample(range(n), round(rate * n)))
    out: Converted[PairRecord] = Converted(list(records), flipped=flipped)
    for i in flipped:
        r = records[i]
        out.records[i] = replace(r, chosen=r.rejected, rejected=r.chosen,
                                 score_chosen=r.score_rejected, score_rejected=r.score_chosen)
    return out
