"""The numbers of a report: mean and spread over seeds, and the win-rate matrix between rows."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from alignlab.rewards.base import win_points


@dataclass(frozen=True)
class Spread:
    """A metric over seeds: the mean, the sample standard deviation (n − 1 in the denominator;
    None for one seed) and the number of seeds. ``nonfinite``: how many seeds gave NaN or ±inf
    (the mean is then NaN or ±inf, the std None)."""

    mean: float
    std: float | None
    n: int
    nonfinite: int = 0


def spread(values: Sequence[float]) -> Spread | None:
    """Mean ± sample standard deviation of the ``values`` (None ones left out); None when there
    are none. A NaN or ±inf among them makes the mean NaN or ±inf, as it is: a seed that diverged
    does not drop out of its row."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None
    mean = sum(xs) / len(xs)
    bad = sum(not math.isfinite(x) for x in xs)
    if bad:
        return Spread(mean, None, len(xs), bad)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return Spread(mean, std, len(xs))


def number(x: float, like: float | None = None) -> str:
    """A number as tables show it: none below 1000 above, one decimal from 10, three from 0.1,
    three significant digits from 0.001, else in exponent form (``like``: format as for that
    magnitude, so a spread matches its mean)."""
    if not math.isfinite(x):
        return str(x)
    size = abs(like if like is not None else x)
    if size >= 1000:
        return f"{x:,.0f}"
    if size >= 10:
        return f"{x:.1f}"
    if size >= 0.1 or size == 0:
        return f"{x:.3f}"
    if size >= 0.001:
        return f"{x:.{2 - math.floor(math.log10(size))}f}"
    return f"{x:.2e}"


def spread_text(s: Spread | None) -> str:
    """``0.675 ± 0.012`` (one seed: ``0.675``), the spread in the mean's decimals; ``–`` for no
    value; ``nan (1 of 2 seeds not finite)`` when a seed gave NaN or ±inf."""
    if s is None:
        return "–"
    if s.nonfinite:
        return f"{number(s.mean)} ({s.nonfinite} of {s.n} seeds not finite)"
    if s.std is None:
        return number(s.mean)
    return f"{number(s.mean)} ± {number(s.std, like=s.mean)}"


def column_texts(spreads: Sequence[Spread | None], counts: bool = False) -> list[str]:
    """A column's entries, each in the decimals its own mean needs (a loss of 0.61 keeps its three
    beside one of 24.6). ``counts``: a column of counts (optimizer steps), whole numbers shown as
    such where the seeds agree."""
    return ["–" if s is None else f"{int(s.mean)}" if counts and s.mean.is_integer() and not s.std
            else spread_text(s) for s in spreads]


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
