"""How good is a reward model (or any scorer) on held-out preference pairs.

For each pair the scorer gives p = P(chosen ≻ rejected) (``Scorer.compare``). Reported:

- ``accuracy``: mean of 1[p > 0.5], a tie (p = 0.5) counting one half;
- calibration, as reliability bins: each pair's confidence is max(p, 1 − p) and it is right when
  the side it leans to is the chosen one. Bins split [0.5, 1] into ``bins`` equal parts; each
  reports its count, mean confidence and accuracy. ``ece`` (expected calibration error) is
  Σ_b (n_b/N)·|accuracy_b − confidence_b|; a calibrated model's pairs at confidence 0.8 are right
  80% of the time;
- length: ``length_correlation`` is Pearson's correlation of ``score`` with the response length in
  words over every response (chosen and rejected); ``prefers_longer`` is, over pairs whose
  responses differ in length, how often the scorer leans to the longer one, beside
  ``data_prefers_longer``, how often the data's chosen response is the longer. A reward model
  that prefers longer responses more often than the data does has learnt length;
- ``subsets``: accuracy and count per value of a subset column, when the data has one (as
  RewardBench reports accuracy per subset).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from alignlab.rewards.base import Scorer, check_lengths, sigmoid


@dataclass(frozen=True)
class HeldOutPair:
    prompt: str
    chosen: str
    rejected: str
    subset: str | None = None
    source: str = ""  # the data file and row it was read from (errors name them)
    row: int = 0


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's correlation; NaN when either side is constant or there are fewer than two points."""
    n = len(x)
    if n < 2:
        return float("nan")
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def _correct(p: float) -> float:
    return 1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0


def calibration(probs: Sequence[float], bins: int = 10) -> tuple[list[dict], float]:
    """Reliability bins over confidence max(p, 1 − p) ∈ [0.5, 1], and the expected calibration error."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    table = [{"low": 0.5 + 0.5 * b / bins, "high": 0.5 + 0.5 * (b + 1) / bins, "count": 0, "confidence": 0.0,
              "accuracy": 0.0} for b in range(bins)]
    for p in probs:
        conf = max(p, 1.0 - p)
        b = min(math.floor((conf - 0.5) * 2 * bins + 1e-9), bins - 1)  # bins include their lower edge
        table[b]["count"] += 1
        table[b]["confidence"] += conf
        table[b]["accuracy"] += _correct(p)
    ece = 0.0
    for row in table:
        if row["count"]:
            row["confidence"] /= row["count"]
            row["accuracy"] /= row["count"]
            ece += row["count"] / max(len(probs), 1) * abs(row["accuracy"] - row["confidence"])
    return table, ece


def evaluate_pairs(scorer: Scorer, pairs: Sequence[HeldOutPair], bins: int = 10) -> dict:
    """Every metric of the module docstring for ``pairs``: one ``score`` call over every response,
    and one ``compare`` call unless the scorer's comparison is σ of the score difference."""
    prompts = [p.prompt for p in pairs]
    chosen, rejected = [p.chosen for p in pairs], [p.rejected for p in pairs]
    n = check_lengths("pairs", prompts, chosen, rejected)
    if n == 0:
        raise ValueError("no pairs to evaluate")
    scores = scorer.score(prompts * 2, chosen + rejected)
    if scorer.compares_by_score:
        probs = [sigmoid(c - r) for c, r in zip(scores[:n], scores[n:], strict=True)]
    else:
        probs = scorer.compare(prompts, chosen, rejected)
    table, ece = calibration(probs, bins)
    lengths = [len(t.split()) for t in chosen + rejected]
    lean, data_lean = [], []
    for p, c, r in zip(probs, chosen, rejected, strict=True):
        lc, lr = len(c.split()), len(r.split())
        if lc != lr:
            lean.append(_correct(p) if lc > lr else 1.0 - _correct(p))
            data_lean.append(1.0 if lc > lr else 0.0)
    result = {
        "pairs": n,
        "accuracy": sum(_correct(p) for p in probs) / n,
        "mean_prob_chosen": sum(probs) / n,
        "ece": ece,
        "calibration": table,
        "length_correlation": pearson(scores, [float(v) for v in lengths]),
        "prefers_longer": sum(lean) / len(lean) if lean else float("nan"),
        "data_prefers_longer": sum(data_lean) / len(data_lean) if data_lean else float("nan"),
        "pairs_differing_in_length": len(lean),
    }
    if any(p.subset is not None for p in pairs):
        subsets: dict[str, list[float]] = {}
        for pair, prob in zip(pairs, probs, strict=True):
            subsets.setdefault(str(pair.subset), []).append(_correct(prob))
        result["subsets"] = {k: {"accuracy": sum(v) / len(v), "pairs": len(v)} for k, v in sorted(subsets.items())}
    return result


def load_pairs(source: str, subset_column: str | None = "subset", columns: dict[str, str] | None = None,
               split: str | None = None, skip_invalid: bool = False) -> list[HeldOutPair]:
    """Plain-text preference pairs from any source alignlab reads, with each row's subset (the
    value of ``subset_column``, when the rows have it). Conversations are refused: scorers take
    strings."""
    from alignlab.data.load import load_records
    from alignlab.data.sources import iter_rows
    from alignlab.errors import UserError

    records = load_records(source, "pair", columns=columns, split=split, skip_invalid=skip_invalid).records
    subsets: dict[int, object] = {}
    if subset_column:
        for raw in iter_rows(source, split=split):
            if isinstance(raw.data, dict) and raw.data.get(subset_column) is not None:
                subsets[raw.row] = raw.data[subset_column]
    out = []
    for rec in records:
        if not all(isinstance(t, str) for t in (rec.prompt, rec.chosen, rec.rejected)):
            raise UserError(f"{rec.source}, row {rec.row}: scorers take plain-text pairs; this row is a conversation")
        subset = subsets.get(rec.row)
        out.append(HeldOutPair(rec.prompt, rec.chosen, rec.rejected, None if subset is None else str(subset),
                               rec.source, rec.row))
    return out
