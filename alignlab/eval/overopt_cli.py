"""``alignlab eval overopt``: reward over-optimisation over a training run's checkpoints.

    alignlab eval overopt --run RUN_DIR [--task T | --prompts FILE] [--proxy SPEC] [--gold SPEC]
                          [-n 4] [--limit N] [--bootstrap 1000] [--out FILE] [--plot PNG]

For the run's starting model (step 0, the reference of the KL) and each checkpoint it kept (train
with ``--save-every N --keep-checkpoints 0`` to keep them all), then its final model when no
checkpoint holds the last step: draw n answers per prompt, score them with the proxy and the gold
scorer and estimate KL(model ‖ start) from the answers' log-probs (``eval/overopt.py``). The proxy
is by default the reward the run optimised, where run.yaml names it (``_run_reward``). Writes
the report as JSON (by default ``RUN_DIR/overopt.json``, where ``alignlab report RUN_DIR`` finds it)
and prints a table: step, KL, √KL, proxy, gold.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignlab.errors import ArgumentParser, UserError
from alignlab.eval.diagnose_cli import (
    _add_drawing,
    _check_counts,
    _device,
    _params,
    _prompt_records,
    _scorer,
)

PROG = "alignlab eval overopt"
REPORT_NAME = "overopt.json"  # in the run's folder, where `alignlab report` looks for it


def overopt_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG, allow_abbrev=False,
        description="Reward over-optimisation over training: for a run's starting model (step 0) and each of its "
                    "checkpoints, the proxy and the gold reward of sampled answers against sqrt(KL) to the starting "
                    "model. Gao, Schulman & Hilton 2023, 'Scaling Laws for Reward Model Overoptimization'.",
        epilog="Each model answers the same prompts with the same seed (temperature 1: KL is estimated from the "
               "model's own samples, log p(y|x) - log p_start(y|x) summed over the answer's tokens). Intervals are "
               "95% percentile bootstraps over the prompts. Without --task or --prompts, the held-out prompts of "
               "the run's task (its `task`, or `data: task:NAME`). Without --out the report goes to RUN/"
               f"{REPORT_NAME}, where `alignlab report RUN` finds it.")
    parser.add_argument("--run", required=True, help="a training run's output_dir (run.yaml, checkpoints/)")
    parser.add_argument("--proxy", default=None, help="the scorer that was optimised (default: the run's own reward, "
                                                      "for a run that names one (an online run without one: its "
                                                      "task's gold reward), else task:TASK:proxy)")
    parser.add_argument("--gold", default=None, help="the scorer that measures what was wanted (default task:TASK, "
                                                     "the task's gold reward)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the prompts for the "
                                                                    "95%% intervals (default 1000; 0: none)")
    parser.add_argument("--plot", default=None, help="also draw proxy and gold against sqrt(KL) to this PNG")
    _add_drawing(parser, n=4)  # its --out: without it, RUN/overopt.json (the epilog says so)
    return parser


def _run_task(config: dict) -> str | None:
    """The testbed task a run trained or evaluated on: its ``task``, or ``data: task:NAME``."""
    if config.get("task"):
        return str(config["task"])
    data = str(config.get("data") or "")
    return data.split(":")[1] if data.startswith("task:") and data.count(":") >= 1 else None


def _run_reward(config: dict) -> tuple[list[str], list[float] | None] | None:
    """The reward a run optimised, as it names it (its ``reward`` specs and ``reward_weights``; an
    online method's default, the gold reward of its ``data: task:NAME``), else None (an offline
    run on a data file: its labels' reward is not recorded)."""
    from alignlab.losses.registry import UnknownLossError, get_loss

    rollout = config.get("rollout") if isinstance(config.get("rollout"), dict) else config
    specs = rollout.get("reward") or []
    if isinstance(specs, str):
        specs = [specs]
    if specs and all(isinstance(s, str) and "{" not in s for s in specs):  # {policy}: a round's, not loadable here
        return [str(s) for s in specs], rollout.get("reward_weights")
    try:
        online = get_loss(str(config.get("method"))).shape == "online"
    except UnknownLossError:
        online = False
    data = str(config.get("data") or "")
    return ([f"task:{data.split(':')[1]}:gold"], None) if online and data.startswith("task:") else None


def _proxy_of_run(config: dict, where=None):
    """(label, scorer) of the run's own reward (``_run_reward``), or None; ``where`` names a
    prompt's file and row in a scorer's failure (``rewards/guard.py``)."""
    from alignlab.rewards.combine import WeightedSum

    reward = _run_reward(config)
    if reward is None:
        return None
    specs, weights = reward
    weights = list(weights) if weights else [1.0] * len(specs)
    if len(weights) != len(specs):
        raise UserError(f"{PROG}: run.yaml names {len(specs)} rewards and {len(weights)} reward_weights; give --proxy")
    if len(specs) == 1 and weights[0] == 1.0:
        return specs[0], _scorer(specs[0], "--proxy (the run's reward)", where)
    scorer = WeightedSum([(w, _scorer(spec, "--proxy (the run's reward)", where))
                          for w, spec in zip(weights, specs, strict=True)])
    return scorer.name, scorer


def run_overopt(args: argparse.Namespace, config: dict, saved: Callable[[], list]) -> dict[str, Any]:
    """The report of ``alignlab eval overopt`` (see the module docstring) on the run whose saved
    config (run.yaml) is ``config`` and whose models ``saved()`` lists in training order as
    (label, step, load): the start (step 0) first."""
    from alignlab.data.write import check_not_input
    from alignlab.eval.overopt import fit_gao, measure, trend
    from alignlab.generation import make_generator
    from alignlab.models import load_tokenizer
    from alignlab.rewards.guard import rows_of

    _check_counts(args)
    if args.temperature != 1.0:
        raise UserError(f"{PROG}: --temperature must be 1 (got {args.temperature:g}): the KL estimate needs the "
                        "models' own samples")
    if args.task is None and args.prompts is None:
        args.task = _run_task(config)
        if args.task is None:
            raise UserError(f"{PROG}: the run names no testbed task; give the prompts with --task or --prompts")
    from alignlab.tasks import task_names

    if args.task is not None and args.task not in task_names():
        raise UserError(f"{PROG}: --task {args.task}: not a testbed task ({', '.join(task_names())})")
    prompts = _prompt_records(args, PROG)
    places = rows_of(prompts)
    own = _proxy_of_run(config, places) if args.proxy is None else None
    if ((args.proxy is None and own is None) or args.gold is None) and args.task is None:
        raise UserError(f"{PROG}: with --prompts there is no task to take the scorers from; give "
                        + ("--gold" if own is not None or args.proxy is not None else "--proxy and --gold"))
    specs = {"gold": args.gold or f"task:{args.task}"}
    if own is None:
        specs["proxy"] = args.proxy or f"task:{args.task}:proxy"
    scorers = {k: _scorer(spec, f"--{k}", places) for k, spec in specs.items()}
    if own is not None:
        specs["proxy"], scorers["proxy"] = own
    models = saved()
    if len(models) < 2:
        raise UserError(f"{PROG}: --run {args.run} has no checkpoint and no final model, only its start (train with "
                        "--save-every N --keep-checkpoints 0 to keep every checkpoint)")
    out = Path(args.out) if args.out else Path(args.run) / REPORT_NAME
    for flag, path in (("--out", out), ("--plot", Path(args.plot) if args.plot else None)):
        if path is None:
            continue
        check_not_input(path, ("the prompt file", "--prompts", args.prompts))
        if path.is_dir():
            raise UserError(f"{flag} {path}: is a folder; name the file to write" + (" (*.png)" if flag == "--plot"
                                                                                    else ""))
        if flag == "--plot" and path.suffix.lower() != ".png":
            raise UserError(f"--plot {path}: the plot is written as PNG; name the file *.png")
        if not path.parent.is_dir():
            raise UserError(f"{flag} {path}: its folder {path.parent} does not exist")
    tokenizer = load_tokenizer(str(config["model"]), bool(config.get("trust_remote_code", False)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = _device(args)
    reference = models[0][2]().to(device).eval()
    rows = []
    for name, step, load in models:
        print(f"{PROG}: {name}: {args.n} answers to each of {len(prompts)} prompts", file=sys.stderr, flush=True)
        model = reference if name == "start" else load().to(device).eval()
        generator = make_generator(model, tokenizer, args.backend, batch_size=args.batch_size * args.n)
        rows.append({"model": name, "step": step, **measure(model, reference, generator, prompts, args.n, _params(args),
                                                          scorers["proxy"], scorers["gold"], pad, args.batch_size,
                                                          args.bootstrap, args.seed)})
        del model
    d = [r["sqrt_kl"] for r in rows]
    return {"run": str(args.run), "reference": str(config["model"]),
            "prompts": f"task:{args.task} held-out prompts" if args.task else str(args.prompts),
            "n": args.n, "seed": args.seed, "proxy_scorer": specs["proxy"], "gold_scorer": specs["gold"],
            "bootstrap": args.bootstrap, "level": 0.95, "rows": rows, "trend": trend(rows),
            "fit": {k: fit_gao(d, [r[k] for r in rows]) for k in ("proxy", "gold")},
            "out": str(out), "plot": args.plot}


def _interval(row: dict, key: str) -> str:
    if f"{key}_low" not in row:
        return ""
    return f" [{row[f'{key}_low']:.3f}, {row[f'{key}_high']:.3f}]"


def format_overopt(report: dict[str, Any]) -> str:
    lines = [f"over-optimisation of {report['run']}: {report['n']} answers per prompt ({report['prompts']}), "
             f"proxy {report['proxy_scorer']}, gold {report['gold_scorer']}, KL to {report['reference']}",
             f"{'model':<16}{'step':>6}{'KL':>9}{'sqrt(KL)':>10}{'':>18}{'proxy':>8}{'':>18}{'gold':>8}{'':>18}"]
    for r in report["rows"]:
        step = "-" if r["step"] is None else str(r["step"])
        lines.append(f"{r['model'][:15]:<16}{step:>6}{r['kl']:>9.3f}{r['sqrt_kl']:>10.3f}"
                     f"{_interval(r, 'sqrt_kl'):<18}{r['proxy']:>8.3f}{_interval(r, 'proxy'):<18}{r['gold']:>8.3f}"
                     f"{_interval(r, 'gold'):<18}")
    t = report["trend"]
    lines.append(f"proxy {t['proxy_change']:+.3f} from step 0 to the last model; gold {t['gold_change']:+.3f}, its peak "
                 f"{t['gold_peak']:.3f} at step {t['gold_peak_step']}, then {-t['gold_fall_from_peak']:+.3f}")
    if report["bootstrap"]:
        lines.append("[low, high]: 95% bootstrap intervals over the prompts")
    for key, fit in report["fit"].items():
        if fit:
            lines.append(f"fit {key} - {key}(0) = d(alpha - beta log d), d = sqrt(KL): alpha {fit['alpha']:.3f}, "
                         f"beta {fit['beta']:.3f} (rmse {fit['rmse']:.3f} over {fit['points']} points)")
    for name, why in (report.get("left_out") or {}).items():
        lines.append(f"left out {name}: {why}")
    lines.append(f"report: {report['out']}" + (f"; plot: {report['plot']}" if report["plot"] else ""))
    return "\n".join(lines)
