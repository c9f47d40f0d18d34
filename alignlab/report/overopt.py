"""The over-optimisation figure and section of a training run's report, from the JSON that
``alignlab eval overopt`` writes (``RUN_DIR/overopt.json``): proxy and gold reward against √KL to
the starting model, one point per saved model, with their bootstrap intervals, and the table of
the same numbers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from alignlab.report.blocks import Figure, Section, Table

REPORT_NAME = "overopt.json"


def _errors(rows: list[dict], key: str) -> list[list[float]] | None:
    if not all(f"{key}_low" in r for r in rows):
        return None
    return [[max(r[key] - r[f"{key}_low"], 0.0) for r in rows], [max(r[f"{key}_high"] - r[key], 0.0) for r in rows]]


def overopt_figure(report: dict[str, Any], path: Path) -> Path:
    """Proxy and gold (mean over answers, 95% bootstrap intervals) against √KL, each point marked
    with its step; the fitted d(α − β log d) curves dashed where the report has them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    d = [r["sqrt_kl"] for r in rows]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for key, colour, label in (("proxy", "tab:orange", f"proxy ({report['proxy_scorer']})"),
                               ("gold", "tab:blue", f"gold ({report['gold_scorer']})")):
        ax.errorbar(d, [r[key] for r in rows], yerr=_errors(rows, key), xerr=_errors(rows, "sqrt_kl"), marker="o",
                    color=colour, capsize=3, label=label)
        fit = (report.get("fit") or {}).get(key)
        if fit and max(d) > 0:
            xs = [max(d) * (i + 1) / 60 for i in range(60)]
            base = rows[0][key]
            ax.plot([0.0, *xs], [base, *(base + x * (fit["alpha"] - fit["beta"] * math.log(x)) for x in xs)],
                    linestyle="--", linewidth=1, color=colour, alpha=0.6,
                    label=f"{key} fit d(α − β log d): α {fit['alpha']:.2f}, β {fit['beta']:.2f}")
    for r in rows:
        if r["step"] is not None:
            ax.annotate(str(r["step"]), (r["sqrt_kl"], r["gold"]), textcoords="offset points", xytext=(4, -10),
                        fontsize=7, color="tab:blue")
    ax.set_xlabel("√KL(model ‖ start), nats^½")
    ax.set_ylabel("reward of sampled answers")
    ax.set_title("Over-optimisation over training (numbers: optimizer steps)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _cell(row: dict, key: str) -> str:
    text = f"{row[key]:.3f}"
    if f"{key}_low" in row:
        text += f" [{row[f'{key}_low']:.3f}, {row[f'{key}_high']:.3f}]"
    return text


HINT = "; write it again with `alignlab eval overopt --run RUN_DIR`"
NUMBERS = ("kl", "sqrt_kl", "proxy", "gold")


def check_report(report: dict[str, Any], source: Path) -> list[dict]:
    """The rows of an overopt.json that ``alignlab eval overopt`` could have written; anything else
    (a hand edit, another program's file) is one error line naming the row and field."""
    from alignlab.errors import UserError

    for key in ("n", "prompts", "proxy_scorer", "gold_scorer"):
        if key not in report:
            raise UserError(f"{source}: no '{key}'{HINT}")
    rows = report.get("rows")
    if not isinstance(rows, list) or not rows:
        raise UserError(f"{source}: 'rows' must be a non-empty list of the models' rows{HINT}")
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise UserError(f"{source}: row {i}: expected an object, got {type(row).__name__}{HINT}")
        fields = [(k, row.get(k)) for k in NUMBERS] + [(k, row[k]) for k in row if k.endswith(("_low", "_high"))]
        for key, value in fields:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError(f"{source}: row {i}, field '{key}': expected a finite number, got {value!r}{HINT}")
        if not isinstance(row.get("model"), str) or not (row.get("step") is None or type(row["step"]) is int):
            raise UserError(f"{source}: row {i}: needs 'model' (a name) and 'step' (an integer or null){HINT}")
    return rows


def overopt_section(root: Path, images: Path):
    """The report's "Over-optimisation" section when ``root`` holds ``overopt.json``, else None."""
    from alignlab.report.collect import read_json

    source = root / REPORT_NAME
    if not source.is_file():
        return None
    report = read_json(source, HINT)
    rows = check_report(report, source)
    figure = overopt_figure(report, images / "overopt.png")
    table = Table(["model", "step", "KL", "√KL", "proxy", "gold"],
                  [[r["model"], "–" if r["step"] is None else str(r["step"]), _cell(r, "kl"), _cell(r, "sqrt_kl"),
                    _cell(r, "proxy"), _cell(r, "gold")] for r in rows],
                  f"From {REPORT_NAME} (`alignlab eval overopt`): {report['n']} answers per prompt on "
                  f"{report['prompts']}, KL to the starting model, proxy {report['proxy_scorer']}, gold "
                  f"{report['gold_scorer']}; means over the answers"
                  + (", [95% bootstrap interval over the prompts]." if report.get("bootstrap") else ".")
                  + "".join(f" Left out {name}: {why}." for name, why in (report.get("left_out") or {}).items()))
    return Section("Over-optimisation", [
        Figure(figure, "Proxy and gold reward against √KL",
               "Over-optimisation shows as the proxy rising while gold falls as the model moves away from its start "
               "(Gao et al. 2023)."), table])
