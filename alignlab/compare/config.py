"""`alignlab compare`'s config: read it, check it all before anything runs, expand it into cells.

A config has a ``base`` (any `alignlab train` keys, flat or by section, plus ``feedback:`` on a
testbed task), a ``grid`` (train key -> list of values; the cells are their product), optional
``decoding`` (decoding methods, as `alignlab decode` takes them in one string, evaluated on the base
model), ``output_dir`` and ``jobs``. Every mistake that can be seen without running anything is a
one-line ``ConfigError`` naming the file and the place: an unknown top-level, base, grid or
feedback key, an unknown method or task, an empty grid or value list, a decoding method that does
not parse, a cell whose training config ``make_config`` refuses (the cell is named), an empty or
missing path. Relative paths are read from the config file's folder (``paths.py``).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from alignlab.compare.names import distinct_ids, group_label, slug, value_text
from alignlab.compare.paths import data_contents, output_path, resolve_keys
from alignlab.config import make_config, normalize, read_yaml
from alignlab.config.parse import convert
from alignlab.data.write import blocking_file
from alignlab.errors import ConfigError, UserError

TOP_KEYS = ("output_dir", "base", "grid", "decoding", "jobs")
# Keys the harness sets for every cell; a config that sets them would fight it.
HARNESS_KEYS = ("output_dir", "resume", "overwrite", "progress")
# `feedback:` in base: FeedbackSpec's fields, ``prompts`` for num_prompts as on `alignlab feedback`'s command line.
FEEDBACK_NAMES = {"prompts": "num_prompts"}
BASE_LABEL = "base"  # the row of the base model itself, and the prefix of its decoding rows


@dataclass(frozen=True)
class Cell:
    """One run of the comparison. ``kind``: ``train`` (a training run of ``settings['train']``),
    ``base`` (the base model evaluated as it is) or ``decode`` (the base model answering through
    ``settings['decoding']``). ``settings`` is everything the cell runner needs and what decides
    its result: a finished cell is reused only while its settings stay the same."""

    id: str  # its folder name under OUT/cells/, readable and stable: method=dpo,lr=2e-05,seed=0
    kind: str
    group: str  # its row in the report: the cell without its seed
    seed: int
    values: dict[str, Any]  # the grid's values of a train cell (seed included)
    settings: dict[str, Any]
    # a train cell's training config as make_config reads it: two cells alike in it are one run
    checked: Any = field(default=None, compare=False, repr=False)


@dataclass
class Plan:
    """A checked comparison: where it writes, how many cells run at once, its cells in report order."""

    path: str  # the config file
    output_dir: Path
    jobs: int
    task: str | None
    model: str | None  # the base model (base's model); None: the task's shipped SFT model
    feedback: dict[str, Any] | None  # FeedbackSpec's fields, when cells train on synthetic feedback
    cells: list[Cell] = field(default_factory=list)

    @property
    def config_dir(self) -> Path:
        """The config file's folder: its relative paths are read from there."""
        return Path(self.path).expanduser().absolute().parent

    @property
    def data_dir(self) -> Path:
        return self.output_dir / "data"

    def cell_dir(self, cell: Cell) -> Path:
        return self.output_dir / "cells" / cell.id


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_plan(path: str | Path, jobs: int | None = None) -> Plan:
    """Read and check the config at ``path`` (``jobs`` overrides its ``jobs``); every error is one
    line that starts with the file's name (a bad ``jobs`` names --jobs)."""
    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs: cells run at once, a whole number >= 1, got {jobs}")
    try:
        return _plan(read_yaml(path), str(path), jobs)
    except ConfigError as e:
        text = str(e)
        raise ConfigError(text if text.startswith(f"{path}") else f"{path}: {text}") from None
    except UserError as e:
        raise ConfigError(f"{path}: {e}") from None


def _plan(raw: dict[str, Any], path: str, jobs: int | None) -> Plan:
    unknown = [k for k in raw if k not in TOP_KEYS]
    if unknown:
        import difflib

        close = difflib.get_close_matches(str(unknown[0]), TOP_KEYS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{unknown[0]}: unknown key of a comparison{hint} (keys: {', '.join(TOP_KEYS)})")
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"base: a mapping of `alignlab train` keys, got {base!r}")
    base = dict(base)
    feedback_raw = base.pop("feedback", None)
    base = _train_keys(base, "base")
    grid = _grid(raw.get("grid"))
    config_dir = Path(path).expanduser().absolute().parent
    decoding = _decoding(raw.get("decoding"), config_dir)
    base = resolve_keys(base, "base", config_dir)
    if "output_dir" in raw:  # a relative one is read from the config's folder, the default from the current one
        output_dir = output_path(raw["output_dir"], "output_dir", config_dir)
    else:
        output_dir = Path(f"runs/compare-{Path(path).stem}").absolute()
    made = blocking_file(output_dir)
    if made is not None:
        raise ConfigError(f"output_dir: cannot create '{output_dir}': '{made}' is a file")
    jobs = raw.get("jobs") if jobs is None else jobs
    if jobs is None:
        jobs = available_cores()
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs: cells run at once, a whole number >= 1, got {jobs!r}")

    task = base.get("task")
    if "task" in grid:
        raise ConfigError("grid.task: the cells of a comparison share a task (their prompts and gold reward); "
                          "set it in base")
    if task is not None:
        from alignlab.tasks import task_names

        if task not in task_names():
            raise ConfigError(f"base.task: unknown task '{task}' (tasks: {', '.join(task_names())})")
    testbed_model = "model" not in base and "model" not in grid
    if testbed_model and task is None:
        raise ConfigError("base: give a model (and data) to train, or a task: its shipped SFT model and synthetic "
                          "feedback made from it")
    if decoding and task is None:
        raise ConfigError("decoding: decoding methods are measured on a task's held-out prompts by its gold "
                          "reward; give base a task")
    if "model" in grid and decoding:
        raise ConfigError("decoding: with a grid of models there is no one base model to decode with; set model "
                          "in base")
    feedback = _feedback(feedback_raw, task)

    plan = Plan(path, output_dir, jobs, task, base.get("model"), None)
    paths = {k: [resolve_keys({k: v}, "grid", config_dir)[k] for v in vs] for k, vs in grid.items()}
    for combo, resolved in zip(itertools.product(*grid.values()), itertools.product(*paths.values()), strict=True):
        values = dict(zip(grid, combo, strict=True))  # as written: the cell's id and row
        plan.cells.append(_train_cell(plan, base, values, feedback, dict(zip(grid, resolved, strict=True))))
    if any(c.settings.get("feedback") for c in plan.cells):
        plan.feedback = feedback
    if task is not None and "model" not in grid:  # the base model: where every cell starts
        seeds = list(dict.fromkeys(c.seed for c in plan.cells))  # as the train cells read them
        for text in [None, *decoding]:
            for seed in seeds:
                plan.cells.append(_eval_cell(plan, base, text, seed))
        plan.cells = [c for c in plan.cells if c.kind != "train"] + [c for c in plan.cells if c.kind == "train"]
    trains = [c for c in plan.cells if c.kind == "train"]
    for i, cell in enumerate(trains):
        same = next((c for c in trains[i + 1:] if _run_of(c) == _run_of(cell)), None)
        if same is not None:
            raise ConfigError(f"grid: cells {cell.id} and {same.id} are the same run (their settings are equal once "
                              "read, as 1 and 1.0 are, or two spellings of one path); give each value once")
    plan.cells = distinct_ids(plan.cells)
    return plan


def _run_of(cell: Cell) -> tuple[Any, dict[str, Any]]:
    """What decides a train cell's run: its checked training config (``1e-5`` and ``0.00001`` read
    alike) and the settings besides its training keys as written."""
    return cell.checked, {k: v for k, v in cell.settings.items() if k != "train"}


def _check_scorers(where: str, specs: list[str], folder: Path) -> None:
    """A one-line error for the first scorer spec that is plainly wrong (``spec_problem``: an
    unknown kind or task, a reward-model folder that is not there), read from the config's folder
    where the cells run, before any cell runs."""
    from alignlab.rewards import spec_problem

    for spec in specs:
        problem = spec_problem(spec, folder)
        if problem is not None:
            raise ConfigError(f"{where}: {problem}")


def _train_keys(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """Train keys by their flat names (``optim: {lr: ...}`` -> ``lr``); the harness's own keys refused."""
    try:
        flat = normalize(raw)
    except ConfigError as e:
        raise ConfigError(f"{where}.{e}") from None
    for key in flat:
        if key in HARNESS_KEYS:
            raise ConfigError(f"{where}.{key}: set by alignlab compare for each cell (its folder under output_dir, "
                              "resumed when interrupted); leave it out")
    return flat


def _grid(raw: Any) -> dict[str, list[Any]]:
    if raw is None or raw == {}:
        raise ConfigError("grid: empty; give at least one train key with a list of values (e.g. method: [dpo, ipo], "
                          "seed: [0, 1, 2])")
    if not isinstance(raw, dict):
        raise ConfigError(f"grid: a mapping of train keys to lists of values, got {raw!r}")
    grid: dict[str, list[Any]] = {}
    for key, values in raw.items():
        if key == "feedback":
            raise ConfigError("grid.feedback: the synthetic feedback is made once for every cell; set it in base")
        if isinstance(values, dict):
            raise ConfigError(f"grid.{key}: a list of values; give a section's keys flat or dotted, e.g. "
                              f"{key}.{next(iter(values), 'lr')}: [...]")
        if not isinstance(values, list):
            raise ConfigError(f"grid.{key}: a list of values (e.g. [{value_text(values)}]), got {values!r}")
        if not values:
            raise ConfigError(f"grid.{key}: an empty list makes no cells; give at least one value")
        texts = [value_text(v) for v in values]
        twice = next((t for t in texts if texts.count(t) > 1), None)
        if twice is not None:
            raise ConfigError(f"grid.{key}: the value {twice} is given twice")
        grid[key] = values
    flat = _train_keys({k: v[0] for k, v in grid.items()}, "grid")
    if len(flat) != len(grid):
        raise ConfigError("grid: a key is given twice (flat and by its section)")
    return dict(zip(flat, grid.values(), strict=True))


def _decoding(raw: Any, config_dir: Path) -> list[str]:
    """The decoding methods as written, each parsed once: checked, none given twice, and its
    scorer checked (``_check_scorers``) from the config's folder."""
    from alignlab.decoding.spec import parse_method

    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw):
        raise ConfigError(f"decoding: a list of decoding methods as `alignlab decode` takes them, e.g. "
                          f"['best-of-n --n 4 --scorer task:arithmetic'], got {raw!r}")
    parsed = []
    for i, text in enumerate(raw):
        parsed.append(parse_method(text, field=f"decoding[{i}]"))
        if parsed.index(parsed[-1]) != i:  # the same method and flags, written alike or not
            raise ConfigError(f"decoding[{i}]: '{text}' is the same method as decoding[{parsed.index(parsed[-1])}]")
        scorer = getattr(parsed[-1], "scorer", None)
        if scorer:
            _check_scorers(f"decoding[{i}]: --scorer", [scorer], config_dir)
    return list(raw)


def _feedback(raw: Any, task: str | None) -> dict[str, Any] | None:
    """FeedbackSpec's fields from base's ``feedback:`` (checked by FeedbackSpec itself)."""
    from alignlab.testbed.feedback import FeedbackSpec

    if task is None:
        if raw is not None:
            raise ConfigError("base.feedback: synthetic feedback is made on a task; give base a task")
        return None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"base.feedback: a mapping (prompts, k, reward, label_noise, seed, ...), got {raw!r}")
    known = {f.name for f in fields(FeedbackSpec)} - {"task"}
    names = {**{k: k for k in known}, **FEEDBACK_NAMES}
    types = {f.name: f.type for f in fields(FeedbackSpec)}
    values = {}
    for key, value in raw.items():
        if key not in names or key == "num_prompts":
            shown = sorted((set(known) - set(FEEDBACK_NAMES.values())) | set(FEEDBACK_NAMES))
            raise ConfigError(f"base.feedback.{key}: unknown key (keys: {', '.join(shown)})")
        kind = types[names[key]]
        kind = kind if isinstance(kind, str) else kind.__name__
        what = {"int": "a whole number", "float": "a number", "str": "a string"}.get(kind)
        if kind == "str" and not isinstance(value, str):
            raise ConfigError(f"base.feedback.{key}: {what}, got {value!r}")
        if kind in ("int", "float"):  # read as train keys are: 1e-1 is a number
            try:
                value = convert(value, {"int": int, "float": float}[kind], key)
            except ConfigError:
                raise ConfigError(f"base.feedback.{key}: {what}, got {value!r}") from None
        values[names[key]] = value
    try:
        spec = FeedbackSpec(task=task, **values)
    except UserError as e:
        name = getattr(e, "field", None)
        shown = next((k for k, v in FEEDBACK_NAMES.items() if v == name), name)
        text = str(e).removeprefix("feedback: ").removeprefix(f"{name} ")
        raise ConfigError(f"base.feedback.{shown}: {text}" if name else f"base.{e}") from None
    except TypeError as e:
        raise ConfigError(f"base.{e}") from None
    return {f.name: getattr(spec, f.name) for f in fields(FeedbackSpec)}


def _check_train(cell_id: str, train: dict[str, Any], base: dict[str, Any], values: dict[str, Any]):
    """make_config on the cell's training config (placeholders for the paths the harness makes):
    the checked config, or a one-line error that names the cell."""
    keys = {"model": "BASE-MODEL", "data": "FEEDBACK", **train, "output_dir": "CELL"}
    try:
        return make_config(keys)
    except ConfigError as e:
        key = str(e).split(":", 1)[0].split(".")[-1]
        where = " (set in base)" if key in base and key not in values else ""
        raise ConfigError(f"cell {cell_id}: {e}{where}") from None


def _train_cell(plan: Plan, base: dict[str, Any], values: dict[str, Any], feedback: dict[str, Any] | None,
                resolved: dict[str, Any]) -> Cell:
    """A cell of the grid: base's keys, the cell's values (``resolved``: with their paths read from
    the config's folder), and from a testbed model what the demo would set (``demo_keys``); without
    data, the synthetic feedback its method's shape needs (made from the base model), or for an
    online method (or rounds) the task's prompts and reward."""
    from alignlab.config import get_loss

    cell_id = slug(",".join(f"{k}={value_text(v)}" for k, v in values.items()))
    train = {**base, **resolved}
    method = str(train.get("method", "dpo"))
    try:
        spec = get_loss(method)
    except ConfigError as e:
        where = "grid" if "method" in values else "base"
        raise ConfigError(f"{where}.{e}") from None
    settings: dict[str, Any] = {"kind": "train", "task": plan.task}
    if plan.task is not None and "model" not in train:  # the testbed's model: the demo's settings
        train = {**demo_keys(plan.task, method, train), **train}
    cfg = _check_train(cell_id, train, base, values)  # the values, checked and typed
    _check_scorers(f"cell {cell_id}: reward", list(cfg.rollout.reward), plan.config_dir)
    rounds = cfg.iterate.rounds
    if "data" not in train:
        if plan.task is None:
            raise ConfigError("base: give the data to train on (or a task, for synthetic feedback made from its "
                              "SFT model)")
        if spec.shape == "online" or rounds:  # the task's prompts, sampled and scored while training
            train["data"] = f"task:{plan.task}"
            if not cfg.rollout.reward:  # left out, null or []
                train["reward"] = [f"task:{plan.task}:{feedback['reward']}"]
            k = int(train.setdefault("num_generations", spec.num_generations or feedback["k"]))
            if rounds:
                train.setdefault("round_prompts", max(feedback["num_prompts"] // rounds, 1))
            elif not cfg.optim.max_steps:
                from alignlab.testbed.demo import online_budget

                train.update(online_budget(cfg.optim.epochs, feedback["num_prompts"], cfg.optim.batch_size, k))
            cfg = _check_train(cell_id, train, base, values)
        else:
            extra = sorted(spec.needs & {"strength", "group"})
            if extra:
                raise ConfigError(f"cell {cell_id}: the synthetic feedback has no {' or '.join(extra)} per pair, "
                                  f"which method '{method}' needs; give it data")
            settings["feedback"] = spec.shape  # trains on OUT/data/<the shape's file>
            settings["feedback_spec"] = feedback  # what made it: a change is a change of the cell
    settings["train"] = train
    contents = data_contents(train)
    if contents:  # what the data files held: an edited file is a change of the cell
        settings["data_contents"] = contents
    settings["eval_prompts"] = cfg.eval.task_eval_prompts
    return Cell(cell_id, "train", group_label(values, method), cfg.seed, values, settings, cfg)


def _eval_cell(plan: Plan, base: dict[str, Any], decoding: str | None, seed: int) -> Cell:
    """The base model measured on the task as it is (``decoding`` None) or through a decoding method."""
    group = BASE_LABEL if decoding is None else f"{BASE_LABEL} + {decoding}"
    settings = {"kind": "base" if decoding is None else "decode", "task": plan.task, "model": plan.model,
                "decoding": decoding,
                "eval_prompts": int(base.get("task_eval_prompts", 0)), "seed": seed,
                "dtype": base.get("dtype", "fp32"), "eval_batch_size": int(base.get("eval_batch_size") or 128)}
    return Cell(slug(f"{group.replace(' + ', '+')},seed={seed}"), settings["kind"], group, seed, {"seed": seed},
                settings)


def demo_keys(task: str, method: str, given: dict[str, Any]) -> dict[str, Any]:
    """What a cell on a testbed task trains with unless its config says otherwise: the demo's
    keys (``TESTBED_TRAIN_KEYS``), the learning rate measured for the task (``task_lr``), and
    samples as long as the task's answers for a method that draws its own."""
    from alignlab.config import get_loss
    from alignlab.tasks import get_task
    from alignlab.testbed.demo import TESTBED_TRAIN_KEYS, task_lr

    keys: dict[str, Any] = {**TESTBED_TRAIN_KEYS, "task": task}
    lr = task_lr(task, method)
    if lr is None and "lr" not in given:
        raise ConfigError(f"lr: no learning rate has been measured for method '{method}' on task '{task}'; give "
                          "lr in base or grid")
    if lr is not None:
        keys["lr"] = lr
    if "sample_max_new_tokens" in get_loss(method).defaults():
        keys["sample_max_new_tokens"] = get_task(task).max_new_tokens
    return keys


def describe(plan: Plan) -> str:
    """One line: the comparison's size."""
    kinds = {k: sum(c.kind == k for c in plan.cells) for k in ("train", "base", "decode")}
    groups = len({c.group for c in plan.cells})
    threads = max(1, available_cores() // min(plan.jobs, len(plan.cells)))
    return (f"{len(plan.cells)} cells ({kinds['train']} training runs, {kinds['base'] + kinds['decode']} evaluations "
            f"of the base model) in {groups} rows, up to {plan.jobs} at a time with {threads} "
            f"thread{'s' if threads > 1 else ''} each (a resumed cell keeps those it started with)")
