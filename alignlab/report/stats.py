"""The numbers of a report: mean and spread over seeds, and the win-rate matrix between rows."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from alignlab.rewards.base import win_points


@dataclass(frozen=True)
class Spread:
    """A metric over seeds: the mean, the sample standard deviation (n − 1 in the denominator;
    None for one seed) and the number of seeds."""

    mean: float
    std: float | None
    n: int


def spread(values: Sequence[float]) -> Spread | None:
    """Mean ± sample standard deviation of the finite ``values``; None when there are none."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return None
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return Spread(mean, std, len(xs))


def number(x: float, like: float | None = None) -> str:
    """A number as tables show it: three decimals below 10, one below 1000, none above
    (``like``: format as for that magnitude, so a spread matches its mean)."""
    size = abs(like if like is not None else x)
    if size >= 1000:
        return f"{x:,.0f}"
    if size >= 10:
        return f"{x:.1f}"
    return f"{x:.3f}"


def spread_text(s: Spread | None, like: float | None = None) -> str:
    """``0.675 ± 0.012`` (one seed: ``0.675``); ``–`` for no value. ``like``: the magnitude whose
    decimals to use (a column's largest), so that a column's numbers line up."""
    if s is None:
        return "–"
    like = s.mean if like is None else like
    if s.std is None:
        return number(s.mean, like=like)
    return f"{number(s.mean, like=like)} ± {number(s.std, like=like)}"


def column_texts(spreads: Sequence[Spread | None]) -> list[str]:
    """A column's entries, all with the decimals of its largest mean; a column of whole numbers
    that agree across seeds (optimizer steps) as whole numbers."""
    found = [s for s in spreads if s is not None]
    if found and all(s.mean.is_integer() and not s.std for s in found):
        return ["–" if s is None else f"{int(s.mean)}" for s in spreads]
    like = max((abs(s.mean) for s in found), default=None)
    return [spread_text(s, like) for s in spreads]


def win_matrix(golds: Mapping[str, Mapping[int, Mapping[int, float]]]) -> list[list[float | None]]:
    """``M[a][b]``: how often row a's answer beats row b's, by gold reward (a tie counts half).

    ``golds[row][seed][prompt]`` is the gold reward of the answer of the row's cell of that seed to
    that held-out prompt. For rows a and b: the seeds both have are paired (seed s of a against
    seed s of b); with none in common every seed of a is paired with every seed of b. Each pair
    gives the mean of ``win_points`` over the prompts both answered; M[a][b] is the mean over the
    pairs (None when no pair shares a prompt). So M[a][b] + M[b][a] = 1 and M[a][a] = 0.5."""
    rows = list(golds)
    out: list[list[float | None]] = []
    for a in rows:
        line: list[float | None] = []
        for b in rows:
            ga, gb = golds[a], golds[b]
            common = sorted(set(ga) & set(gb))
            pairs = [(s, s) for s in common] or [(s, t) for s in ga for t in gb]
            means = []
            for s, t in pairs:
                prompts = sorted(set(ga[s]) & set(gb[t]))
                if prompts:
                    points = win_points([ga[s][p] for p in prompts], [gb[t][p] for p in prompts])
                    means.append(sum(points) / len(points))
            line.append(sum(means) / len(means) if means else None)
        out.append(line)
    return out
