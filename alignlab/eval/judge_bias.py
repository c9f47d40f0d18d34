"""Judge bias: how far a judge's verdicts depend on things that should not matter.

Any scorer can be the judge (``alignlab.rewards.load_scorer``: a pairwise or pointwise LLM judge,
a reward model, a task's reward, a function). Over pairs (prompt, first, second) its verdict is
read from ``compare``: P(first better) > 1/2 is "A" (first wins), < 1/2 is "B", = 1/2 a tie.

**Position** (ALGORITHMS.md §8.4; PORTIA, "Split and Merge"): the judge is asked about every pair
in both orders and ``rewards.judge.JudgeReport`` gives the consistency rate and, among the
inconsistent pairs, the share that favoured slot 1 and slot 2. A ``PairwiseJudge`` is asked
through ``swap_consistency`` (its raw one-order verdicts, whatever its ``swap`` setting); any
other scorer through ``compare(first, second)`` and ``compare(second, first)``, the second verdict
mapped back (a pointwise scorer is consistent by construction, which the report then shows).

**Perturbations** ("Assessing Judging Bias in Large Reasoning Models", Wang et al. 2025): each
perturbation (``eval/perturbations.py``, or a file of the user's) rewrites one answer of a pair
without changing what it says. For every pair, perturbation and slot (the first or the second
answer of the pair, as passed to ``compare``), the verdict on the perturbed pair is compared with
the verdict on the original pair. Reported per perturbation and slot:

- ``robustness_rate``: the share of pairs whose verdict is unchanged;

An unparsed verdict (a judge's output that names no answer, or a rating that cannot be read) is no
verdict: a pair whose original or perturbed verdict is unparsed is left out of that slot's rates
(``compared`` counts the pairs kept; ``unparsed`` counts the judge calls that gave none), and a
perturbed verdict that is unparsed is left out of its accuracy, as ``base.accuracy`` leaves out an
unparsed original. A rate over no pair is None.
- ``toward_perturbed`` / ``away_from_perturbed``: the share whose verdict moved in favour of the
  perturbed answer (its loss became a tie or a win, or its tie a win) / against it;
- ``mean_shift``: the mean change of P(perturbed answer better), the same in continuous form;
- with labels (which answer is better, where the input knows it): ``accuracy`` of the verdicts
  on the perturbed pairs beside ``base.accuracy`` (a tie counts 1/2).

Per perturbation the two slots are pooled into one ``robustness_rate``, and ``robustness_rate`` at
the top pools everything. Note the slot is a slot of the *pair*: a ``PairwiseJudge`` that asks in
both orders (``swap=true``, the default) shows each answer in both positions of its prompt, so
its numbers measure the perturbation alone; with ``swap=false`` the slot is the position in the
judge prompt as well.

All the judge's queries go in one ``compare`` call (the original pairs and every perturbed copy).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alignlab.errors import UserError
from alignlab.eval.perturbations import PERTURBATIONS
from alignlab.rewards.base import Scorer, check_lengths
from alignlab.rewards.guard import Guarded
from alignlab.rewards.judge import JudgeReport, PairVerdict, PairwiseJudge, PointwiseJudge, swap_consistency
from alignlab.rewards.verdicts import Verdict, flip

PLACEHOLDER = "{answer}"
SLOTS = ("first", "second")
_RANK = {"B": 0, "tie": 1, "A": 2}  # how well the first answer did


def verdict_of(p_first: float) -> Verdict:
    """"A" when P(first better) > 1/2, "B" when below, "tie" at exactly 1/2."""
    return "A" if p_first > 0.5 else "B" if p_first < 0.5 else "tie"


def _points(v: Verdict, label: Verdict) -> float:
    return 0.5 if v == "tie" else float(v == label)


@dataclass(frozen=True)
class Perturbation:
    """A rewrite of an answer: ``template`` with ``{answer}`` (once) where the answer goes."""

    name: str
    template: str

    def __post_init__(self) -> None:
        if not isinstance(self.template, str) or self.template.count(PLACEHOLDER) != 1:
            raise UserError(f"perturbation '{self.name}': the template must be a string holding {PLACEHOLDER} "
                            f"exactly once, got {self.template!r}")

    def apply(self, answer: str) -> str:
        return self.template.replace(PLACEHOLDER, answer)


def default_perturbations() -> list[Perturbation]:
    return [Perturbation(name, template) for name, template in PERTURBATIONS.items()]


def load_perturbations(path: str | Path) -> list[Perturbation]:
    """Perturbations from a JSON file holding one object, name -> template; errors name the file
    and the entry."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{path}: no such perturbation file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a JSON file of perturbations ({e})") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"{path}: expected a JSON object of perturbations, name -> template with {PLACEHOLDER}")
    out = []
    for name, template in data.items():
        try:
            out.append(Perturbation(str(name), template))
        except UserError as e:
            raise UserError(f"{path}: {e}") from None
    return out


def unwrapped(judge: Scorer) -> Scorer:
    """The scorer inside a guarded one (``rewards/guard.py``), else ``judge``."""
    return getattr(judge, "inner", judge)


def parsed_items(judge: Scorer, count: int) -> list[bool]:
    """Per item of ``judge``'s latest ``compare`` call (``count`` items), whether every verdict or
    rating behind it was parsed; a scorer that reads no judge output parses everything."""
    judge = unwrapped(judge)
    if isinstance(judge, PairwiseJudge) and judge.last_report is not None:
        return [p.verdict is not None and (p.raw_swapped is None or p.swapped_verdict is not None)
                for p in judge.last_report.pairs]
    if isinstance(judge, PointwiseJudge) and judge.last_report is not None:
        ratings = judge.last_report.ratings
        return [ratings[i] is not None and ratings[count + i] is not None for i in range(count)]
    return [True] * count


def position_report(judge: Scorer, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> JudgeReport:
    """The position-bias report of the module docstring for any scorer."""
    n = check_lengths("position bias", prompts, first, second)
    inner = unwrapped(judge)
    if isinstance(inner, PairwiseJudge):
        if not isinstance(judge, Guarded):
            return swap_consistency(inner, prompts, first, second)
        # through the guard (a failure is one line naming the answer and its prompt's row), asking
        # in both orders as swap_consistency does, whatever the judge's own swap setting
        asked = copy.copy(inner)
        asked.swap = True
        Guarded(asked, judge.label, judge.where).compare(prompts, first, second)
        return asked.last_report
    both = judge.compare(list(prompts) * 2, list(first) + list(second), list(second) + list(first))
    pairs = [PairVerdict(prompts[i], first[i], second[i], verdict_of(both[i]), flip(verdict_of(both[n + i])),
                         raw=repr(both[i]), raw_swapped=repr(both[n + i]), p_first=(both[i] + 1 - both[n + i]) / 2)
             for i in range(n)]
    return JudgeReport.from_pairs(pairs, swapped=True)


def perturbation_suite(judge: Scorer, prompts: Sequence[str], first: Sequence[str], second: Sequence[str],
                       perturbations: Sequence[Perturbation] | None = None,
                       labels: Sequence[Verdict | None] | None = None) -> dict:
    """The perturbation report of the module docstring. ``labels``: per pair "A" (first is the
    better answer), "B", or None (unknown); without them no accuracy is reported."""
    n = check_lengths("perturbation suite", prompts, first, second, *([labels] if labels is not None else []))
    if n == 0:
        raise UserError("perturbation suite: no pairs to judge")
    perturbations = list(perturbations) if perturbations is not None else default_perturbations()
    names = [p.name for p in perturbations]
    if len(set(names)) != len(names):
        raise UserError(f"perturbation suite: perturbation names must differ, got {names}")
    prompts, first, second = list(prompts), list(first), list(second)
    q_first, q_second = list(first), list(second)
    for p in perturbations:
        q_first += [p.apply(a) for a in first] + first
        q_second += second + [p.apply(b) for b in second]
    probs = judge.compare(prompts * (1 + 2 * len(perturbations)), q_first, q_second)
    if len(probs) != n * (1 + 2 * len(perturbations)):
        raise UserError(f"perturbation suite: the judge gave {len(probs)} preferences for {len(q_first)} pairs")
    parsed = parsed_items(judge, len(probs))
    base = [float(x) for x in probs[:n]]
    base_v = [verdict_of(x) for x in base]
    labelled = [i for i in range(n) if labels is not None and labels[i] is not None]

    def rate(hits: int, count: int) -> float | None:
        return hits / count if count else None

    def accuracy(verdicts: list[Verdict], ok: list[bool]) -> float | None:
        kept = [i for i in labelled if ok[i]]
        return rate(sum(_points(verdicts[i], labels[i]) for i in kept), len(kept))

    out: dict = {"pairs": n, "labelled": len(labelled), "unparsed": parsed.count(False),
                 "base": {"mean_p_first": sum(base) / n, "first_wins": base_v.count("A") / n,
                          "second_wins": base_v.count("B") / n, "ties": base_v.count("tie") / n,
                          "unparsed": parsed[:n].count(False)},
                 "perturbations": {}}
    if labelled:
        out["base"]["accuracy"] = accuracy(base_v, parsed[:n])
    unchanged_all = compared_all = 0
    for j, p in enumerate(perturbations):
        entry: dict = {"template": p.template}
        unchanged_p = compared_p = 0
        for s, slot in enumerate(SLOTS):
            start = n * (1 + 2 * j + s)
            new = [float(x) for x in probs[start:start + n]]
            new_v = [verdict_of(x) for x in new]
            both = [parsed[i] and parsed[start + i] for i in range(n)]  # an unparsed verdict is no verdict
            sign = 1 if slot == "first" else -1  # +1: a higher rank is better for the perturbed answer
            moves = [sign * (_RANK[b] - _RANK[a]) for a, b, ok in zip(base_v, new_v, both, strict=True) if ok]
            unchanged, compared = sum(m == 0 for m in moves), len(moves)
            stats = {"robustness_rate": rate(unchanged, compared),
                     "toward_perturbed": rate(sum(m > 0 for m in moves), compared),
                     "away_from_perturbed": rate(sum(m < 0 for m in moves), compared),
                     "mean_shift": rate(sum(sign * (b - a) for a, b, ok in zip(base, new, both, strict=True) if ok),
                                        compared),
                     "compared": compared}
            if labelled:
                stats["accuracy"] = accuracy(new_v, [parsed[start + i] for i in range(n)])
            entry[slot] = stats
            unchanged_p, compared_p = unchanged_p + unchanged, compared_p + compared
        entry["robustness_rate"] = rate(unchanged_p, compared_p)
        out["perturbations"][p.name] = entry
        unchanged_all, compared_all = unchanged_all + unchanged_p, compared_all + compared_p
    out["robustness_rate"] = rate(unchanged_all, compared_all)
    return out
