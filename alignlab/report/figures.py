"""The report's figures, as PNG files (matplotlib, no display needed).

Each function draws one figure from collected cells (``collect.py``) and returns its path, or None
when the cells hold nothing to draw. A row keeps its colour in every figure (``colours``).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignlab.report.collect import OK, CellResult, Collected
from alignlab.report.stats import spread

GOLD, KL, LENGTH = "eval/gold/sampled", "eval/gold/kl", "eval/gold/length"
DPI = 100


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def colours(groups: Sequence[str]) -> dict[str, Any]:
    """One colour per row, in order (tab10, then tab20 beyond ten rows)."""
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    return {g: cmap(i % cmap.N) for i, g in enumerate(groups)}


def _short(label: str, width: int = 28) -> str:
    return "\n".join(textwrap.wrap(label, width)) or label


def _whole_steps(ax) -> None:
    """Ticks at whole optimizer steps only."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path


def _values(cells: Sequence[CellResult], key: str) -> list[float]:
    return [c.metrics[key] for c in cells if c.status == OK and c.metrics.get(key) is not None]


def frontier(data: Collected, path: Path) -> Path | None:
    """Gold reward (sampled) against KL to the base model, one point per row: the mean over seeds
    with ± one standard deviation as error bars, each seed a faint dot. A row without a KL (a
    decoding method) is a dashed horizontal line at its mean gold reward."""
    groups = [g for g in data.groups if _values(data.of(g), GOLD)]
    if not any(_values(data.of(g), KL) for g in groups):
        return None
    plt = _pyplot()
    colour = colours(data.groups)
    fig, ax = plt.subplots(figsize=(8, 5))
    for g in groups:
        cells = [c for c in data.of(g) if c.status == OK and GOLD in c.metrics]
        gold = spread([c.metrics[GOLD] for c in cells])
        kl = spread([c.metrics[KL] for c in cells if KL in c.metrics])
        if kl is None:
            ax.axhline(gold.mean, color=colour[g], linestyle="--", linewidth=1.2, label=f"{_short(g)} (no KL)")
            continue
        ax.scatter([c.metrics[KL] for c in cells if KL in c.metrics], [c.metrics[GOLD] for c in cells if KL in c.metrics],
                   color=colour[g], alpha=0.3, s=18)
        ax.errorbar(kl.mean, gold.mean, xerr=kl.std or 0, yerr=gold.std or 0, fmt="o", color=colour[g], capsize=3,
                    markersize=7, label=_short(g))
    ax.set_xlabel("KL to the base model (nats, held-out prompts)")
    ax.set_ylabel("gold reward, sampled answers")
    ax.set_title("Gold reward against KL: mean ± std over seeds, seeds as faint dots")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def _curve_keys(data: Collected) -> list[tuple[str, str]]:
    """The metrics a comparison's learning curves show: gold reward and KL on a task, else the
    held-out reward accuracy and loss, else the training loss."""
    seen = {k for c in data.cells for row in c.history for k in row}
    if GOLD in seen:
        return [(GOLD, "gold reward, sampled answers"), (KL, "KL to the base model (nats)")]
    keys = [(k, label) for k, label in (("eval/rewards/accuracies", "held-out reward accuracy"),
                                        ("eval/loss", "held-out loss")) if k in seen]
    return keys or ([("loss", "training loss")] if "loss" in seen else [])


def _start(data: Collected) -> dict[int | None, dict[str, float]]:
    """The base model's final metrics by seed (the ``base`` row), which is where each training run
    of the same seed started: its step 0 when it did not evaluate before its first step."""
    return {c.seed: c.metrics for c in data.cells if c.kind == "base" and c.status == OK}


def _by_step(cells: Sequence[CellResult], key: str, start: dict[int | None, dict[str, float]] | None = None
             ) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps at which some seed measured ``key``; at each, the mean, min and max over those seeds."""
    per_step: dict[int, list[float]] = {}
    for c in cells:
        history = c.history
        if start and c.history and c.seed in start and key in start[c.seed] and not any(
                row.get("step") == 0 and key in row for row in history):
            history = [{"step": 0, key: start[c.seed][key]}, *history]
        for row in history:
            if row.get(key) is not None and "step" in row:
                per_step.setdefault(int(row["step"]), []).append(float(row[key]))
    steps = sorted(per_step)
    return (steps, [sum(per_step[s]) / len(per_step[s]) for s in steps], [min(per_step[s]) for s in steps],
            [max(per_step[s]) for s in steps])


def curves(data: Collected, path: Path) -> Path | None:
    """Learning curves of a comparison: per row, the mean over seeds against the optimizer step
    with a band from the lowest to the highest seed; rows that do not train (the base model, its
    decoding methods) as dashed horizontal lines at their final value. A run that did not evaluate
    before its first step starts from the base row's value for its seed (the same evaluation of the
    same model)."""
    keys = _curve_keys(data)
    if not keys:
        return None
    plt = _pyplot()
    colour = colours(data.groups)
    start = _start(data)
    fig, axes = plt.subplots(1, len(keys), figsize=(max(6.5 * len(keys), 8), 4.5), squeeze=False)
    for ax, (key, label) in zip(axes[0], keys, strict=True):
        for g in data.groups:
            cells = data.of(g)
            steps, mean, low, high = _by_step(cells, key, start)
            if steps:
                ax.plot(steps, mean, color=colour[g], label=_short(g), marker="o" if len(steps) < 30 else None,
                        markersize=3)
                ax.fill_between(steps, low, high, color=colour[g], alpha=0.2, linewidth=0)
            elif all(c.kind != "train" for c in cells) and _values(cells, key):
                values = _values(cells, key)
                ax.axhline(sum(values) / len(values), color=colour[g], linestyle="--", linewidth=1.2,
                           label=_short(g))
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
        _whole_steps(ax)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="best")
    fig.suptitle("Learning curves: mean over seeds, band from the lowest to the highest seed", fontsize=11)
    return _save(fig, path)


def win_rates(groups: Sequence[str], matrix: Sequence[Sequence[float | None]], path: Path) -> Path | None:
    """The win-rate matrix as a heatmap: cell (a, b) is how often row a's answer beats row b's."""
    if len(groups) < 2:
        return None
    import numpy as np

    plt = _pyplot()
    values = np.array([[np.nan if v is None else v for v in line] for line in matrix], dtype=float)
    size = max(4.5, 0.9 * len(groups) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(values, cmap="RdBu", vmin=0.0, vmax=1.0)
    for i in range(len(groups)):
        for j in range(len(groups)):
            if not np.isnan(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=9,
                        color="white" if abs(values[i, j] - 0.5) > 0.3 else "black")
    labels = [_short(g, 18) for g in groups]
    ax.set_xticks(range(len(groups)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(groups)), labels, fontsize=8)
    ax.set_xlabel("column: the row it is against")
    ax.set_ylabel("row: wins of its answers")
    ax.set_title("Win rate by gold reward (row beats column; a tie counts half)")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def length_vs_gold(data: Collected, path: Path) -> Path | None:
    """Mean response length against gold reward per row (mean ± std over seeds): does a row gain
    gold reward by answering longer or shorter?"""
    groups = [g for g in data.groups if _values(data.of(g), LENGTH) and _values(data.of(g), GOLD)]
    if not groups:
        return None
    plt = _pyplot()
    colour = colours(data.groups)
    fig, ax = plt.subplots(figsize=(8, 5))
    for g in groups:
        length, gold = spread(_values(data.of(g), LENGTH)), spread(_values(data.of(g), GOLD))
        ax.errorbar(length.mean, gold.mean, xerr=length.std or 0, yerr=gold.std or 0, fmt="s", color=colour[g],
                    capsize=3, label=_short(g))
    ax.set_xlabel("mean response length (tokens)")
    ax.set_ylabel("gold reward, sampled answers")
    ax.set_title("Response length against gold reward (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


# Training metrics a run's report plots first, when it logged them.
TRAIN_FIRST = ("loss", "rewards/accuracies", "rewards/margins", "kl", "reward", "grad_norm")
NOT_CURVES = {"step", "epoch", "lr", "tokens_per_s", "padding", "time"}


def run_curves(cell: CellResult, path: Path, evaluation: bool, most: int = 6) -> Path | None:
    """A training run's metrics against the step, one panel each: the training metrics
    (``evaluation`` False: loss first, then those of ``TRAIN_FIRST`` it logged, then others) or
    the evaluation ones (``eval/...``, the task's gold reward first), at most ``most`` panels."""
    seen: dict[str, None] = {}
    for row in cell.history:
        for key, value in row.items():
            if isinstance(value, (int, float)) and key not in NOT_CURVES and key.startswith("eval/") == evaluation:
                seen.setdefault(key)
    if evaluation:
        keys = sorted(seen, key=lambda k: (not k.startswith("eval/gold/"), k))
    else:
        keys = [k for k in TRAIN_FIRST if k in seen] + sorted(k for k in seen if k not in TRAIN_FIRST)
    keys = keys[:most]
    if not keys:
        return None
    plt = _pyplot()
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        points = [(row["step"], row[key]) for row in cell.history if row.get(key) is not None and "step" in row]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if len(points) < 30 else None, markersize=3)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("optimizer step")
        _whole_steps(ax)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle("Evaluation metrics" if evaluation else "Training metrics (every logged step)")
    return _save(fig, path)
