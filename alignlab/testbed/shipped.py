"""The testbed's models as shipped with the package, so that every user measures with the same ones.

A tiny model trained from scratch for hundreds of steps turns the last-bit differences between
machines (instruction set, CPU vendor, thread count) into a different model: the same recipe built
on three machines gave SFT models whose held-out sampled gold reward ranged from 0.20 to 0.54.
The testbed is a measuring instrument, so its models are built once, by ``alignlab testbed build
--ship``, and shipped in ``alignlab/testbed/models/<task>-<stage>/`` as 16-bit safetensors (half
the size of 32-bit ones; they load as 32-bit weights, and every result is measured on them as
loaded). Beside each model, ``testbed.json`` records its recipe, the machine it was built on, the
sha256 of every file and the model's own held-out gold reward.

``task_model(task, stage)`` returns a shipped model after checking its files against their
checksums; only a task without a shipped model (or whose recipe has changed since) is built, into
the cache, keyed by the machine. ``rebuild(task, stage)`` builds the recipe afresh on this machine
and compares the result with the shipped model: the same weights, or how far its gold reward is.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from alignlab.cache import describe_machine, machine_signature
from alignlab.errors import UserError
from alignlab.testbed.build import (
    STAGES,
    ModelRecipe,
    build_testbed_model,
    intra_op_threads,
    log_to_stderr,
    stage_recipe,
)
from alignlab.training.checkpoint import sha256_file

SHIPPED = Path(__file__).resolve().parent / "models"
MANIFEST = "testbed.json"
GOLD_KEYS = ("gold/sampled", "gold/greedy", "gold/length")
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
MANIFEST_KEYS = frozenset({"task", "stage", "recipe", "recipe_version", "task_options", "built_on", "build_seconds",
                           "dtype", "held_out", "files"})
EVAL_SEED = 0  # the seed of the manifest's held-out measurement, as in the demo's default
EVAL_THREADS = 1  # and its number of intra-op threads (recorded beside the numbers)


def shipped_dir(task: str, stage: str = "sft", root: Path | None = None) -> Path:
    """Where the shipped model of ``task`` at ``stage`` lives (whether or not it exists)."""
    return (root or SHIPPED) / f"{task}-{stage}"


def read_manifest(path: Path) -> dict:
    """The shipped model's ``testbed.json``, checked: it lists every file of the folder (and at
    least the weights, config and tokenizer), and every file matches its sha256."""
    try:
        stats = [(f.name, f.stat()) for f in sorted(path.iterdir()) if f.is_file()]
    except OSError as e:
        raise UserError(f"testbed model '{path}' cannot be read: {e.strerror}; reinstall alignlab") from None
    return _verified(str(path.resolve()), tuple((name, st.st_size, st.st_mtime_ns) for name, st in stats))


@functools.cache
def _verified(path: str, stamp: tuple) -> dict:
    """Checked once per process and per state of the folder's files (``stamp``)."""
    folder = Path(path)

    def bad(what: str) -> UserError:
        return UserError(f"testbed model '{folder}': {what}; reinstall alignlab, or rebuild it with "
                         "`alignlab testbed build`")

    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise bad(f"{MANIFEST} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"{MANIFEST} cannot be read ({e})") from None
    if not isinstance(manifest, dict) or not MANIFEST_KEYS <= manifest.keys() or not isinstance(manifest["files"], dict):
        raise bad(f"{MANIFEST} is not a testbed manifest (it needs {', '.join(sorted(MANIFEST_KEYS))})")
    present = {name for name, _, _ in stamp} - {MANIFEST}
    listed = set(manifest["files"])
    for name in sorted((present - listed) | (set(REQUIRED_FILES) - listed)):
        raise bad(f"file '{name}' is not listed in {MANIFEST}")
    for name in sorted(listed):
        if name not in present:
            raise bad(f"file '{name}' is missing")
        try:
            digest = sha256_file(folder / name)
        except OSError as e:
            raise bad(f"file '{name}' cannot be read ({e.strerror})") from None
        if digest != manifest["files"][name]:
            raise bad(f"file '{name}' does not match its sha256 in {MANIFEST} (damaged or edited)")
    return manifest


def is_current(manifest: dict, recipe) -> bool:
    """Whether a shipped model was built from ``recipe`` by today's build procedure, for today's task."""
    return {k: manifest.get(k) for k in recipe.identity()} == recipe.identity()


def task_model(task: str, stage: str = "sft", cache_dir=None, log: Callable[[str], None] | None = None,
               progress: bool = False, root: Path | None = None) -> Path:
    """The directory of ``task``'s testbed model at ``stage`` (``sft`` or ``pretrained``): the
    shipped one, checked against its checksums, when it was built from today's recipe, build
    procedure and task options; otherwise the recipe's build for this machine, from the cache or
    built now (said in the log)."""
    log = log or log_to_stderr
    recipe = stage_recipe(task, stage)
    path = shipped_dir(task, stage, root)
    if path.exists():
        if is_current(read_manifest(path), recipe):
            return path
        log(f"the shipped {task} {stage} model was built from another recipe, build procedure or task options; "
            "using this machine's build of today's recipe instead")
    else:
        log(f"alignlab ships no {task} {stage} model; using this machine's build of its recipe")
    return build_testbed_model(recipe, cache_dir, log=log, progress=progress)


def held_out_gold(model_dir: Path, task: str) -> dict[str, float]:
    """Gold reward (sampled, greedy) and response length on the task's held-out prompts, seed
    ``EVAL_SEED``, with ``EVAL_THREADS`` intra-op threads."""
    from alignlab.eval.gold import GoldEvaluator
    from alignlab.models import load_model, load_tokenizer

    with intra_op_threads(EVAL_THREADS):
        model = load_model(str(model_dir))
        evaluator = GoldEvaluator(task, load_tokenizer(str(model_dir)), seed=EVAL_SEED)
        metrics = evaluator(model, model)
    return {k: round(metrics[k], 6) for k in GOLD_KEYS}


def _write_half(built: Path, out: Path) -> None:
    """The built model's weights in float16 (refusing weights that float16 cannot hold), with its
    tokenizer."""
    import torch

    from alignlab.models import load_model, load_tokenizer, save_pretrained

    model = load_model(str(built))
    for name, p in model.state_dict().items():
        if not torch.isfinite(p.half()).all():
            raise UserError(f"testbed model '{built}': weight '{name}' does not fit in float16 (largest |value| "
                            f"{p.abs().max().item():.3g}); it cannot be shipped as 16-bit weights")
    save_pretrained(model.half(), out, safe_serialization=True)
    load_tokenizer(str(built)).save_pretrained(out)


def check_shippable(root: Path | None = None) -> Path:
    """The folder ``ship`` writes into, if it can: the package's own ``models/`` only in a source
    checkout (an installed copy would be the wrong place to change), and only where writable."""
    folder = root or SHIPPED
    if root is None and not (SHIPPED.parents[2] / "pyproject.toml").is_file():
        raise UserError(f"shipping writes the models into a source checkout of alignlab (installed with pip install "
                        f"-e); this alignlab is installed at '{SHIPPED.parents[1]}'")
    probe = folder if folder.exists() else folder.parent
    if not os.access(probe, os.W_OK):
        raise UserError(f"cannot ship testbed models into '{folder}': it is not writable")
    return folder


def ship(task: str, stage: str, built: Path, root: Path | None = None) -> dict:
    """Write the model built in ``built`` (a build of this machine, from the cache) as the shipped
    model of ``task`` at ``stage``: 16-bit weights, tokenizer, and ``testbed.json`` (recipe, build
    procedure version, task options, build machine, sha256 of each file, held-out gold measured on
    the 16-bit weights). Replaces a previous shipped model."""
    dest = shipped_dir(task, stage, check_shippable(root))
    build_info = json.loads((built.parent / "recipe.json").read_text())
    recipe = ModelRecipe(**build_info["recipe"])
    if recipe.key() != build_info["key"]:
        raise UserError(f"'{built}' was built by another build procedure, task options, library versions or machine "
                        "than this one has; ship a model built here")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".ship-") as tmp:
        staged = Path(tmp) / dest.name
        _write_half(built, staged)
        for f in staged.iterdir():
            f.chmod(0o644)  # save_pretrained writes the weights readable by their owner only
        manifest = {
            "task": task, "stage": stage, **recipe.identity(), "key": build_info["key"],
            "built_on": build_info["machine"], "build_seconds": build_info["build_seconds"], "dtype": "float16",
            "held_out": {"seed": EVAL_SEED, "measured_on": machine_signature(EVAL_THREADS), **held_out_gold(staged, task)},
            "files": {f.name: sha256_file(f) for f in sorted(staged.iterdir()) if f.is_file()},
        }
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        (staged / MANIFEST).chmod(0o644)
        if dest.exists():  # moved aside, not deleted first: the folder is never without a model
            dest.rename(Path(tmp) / "previous")
        staged.rename(dest)
    return manifest


def _same_weights(a: Path, b: Path) -> tuple[bool, float]:
    """(identical, largest absolute difference) of two models' weights, as loaded in 32-bit."""
    from safetensors.torch import load_file

    left, right = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    if left.keys() != right.keys():
        return False, float("inf")
    diff = max(((left[k].float() - right[k].float()).abs().max().item() for k in left), default=0.0)
    return diff == 0.0, diff


def rebuild(task: str, stage: str, cache_dir=None, log: Callable[[str], None] | None = None,
            progress: bool = True, root: Path | None = None) -> dict:
    """Build ``task``'s ``stage`` recipe on this machine (or take this machine's cached build) and
    compare it, rounded to 16 bits as shipped, with the shipped model: whether the weights are the
    same, the largest weight difference, and the held-out gold reward of both."""
    log = log or log_to_stderr
    recipe = stage_recipe(task, stage)
    built = build_testbed_model(recipe, cache_dir, log=log, progress=progress)
    shipped = shipped_dir(task, stage, root)
    report: dict = {"task": task, "stage": stage, "built": str(built), "machine": machine_signature(recipe.threads)}
    with tempfile.TemporaryDirectory(prefix="alignlab-rebuild-") as tmp:
        half = Path(tmp) / "model"
        _write_half(built, half)
        log(f"measuring the rebuilt {task} {stage} model on the held-out prompts")
        report["rebuilt"] = held_out_gold(half, task)
        if shipped.exists():
            manifest = read_manifest(shipped)
            report["shipped"] = {k: manifest["held_out"][k] for k in GOLD_KEYS}
            report["shipped_built_on"] = manifest["built_on"]
            report["same_recipe"] = is_current(manifest, recipe)
            report["identical"], report["max_weight_difference"] = _same_weights(half, shipped)
    return report


def rebuild_table(report: dict) -> str:
    """The comparison ``alignlab testbed build`` prints for one model."""
    head = f"{report['task']} {report['stage']}: rebuilt on {describe_machine(report['machine'])}"
    if "shipped" not in report:
        rows = [f"  {k:<14}{report['rebuilt'][k]:>10.3f}" for k in GOLD_KEYS]
        return "\n".join([head + " (no shipped model to compare with)", f"  {'':<14}{'rebuilt':>10}", *rows])
    lines = [head, f"  shipped model built on {describe_machine(report['shipped_built_on'])}"
             + ("" if report["same_recipe"] else " from ANOTHER recipe, build procedure or task options"),
             f"  {'':<14}{'shipped':>10}{'rebuilt':>10}{'difference':>12}"]
    for k in GOLD_KEYS:
        a, b = report["shipped"][k], report["rebuilt"][k]
        lines.append(f"  {k:<14}{a:>10.3f}{b:>10.3f}{b - a:>+12.3f}")
    lines.append("  weights: identical to the shipped model" if report["identical"] else
                 f"  weights: differ from the shipped model (largest difference {report['max_weight_difference']:.3g})")
    return "\n".join(lines)


def shipped_models(tasks: list[str] | None = None, stages: list[str] | None = None,
                   root: Path | None = None) -> list[dict]:
    """The shipped models' manifests (checked), in task and stage order, each with its ``path`` and
    whether it is ``current`` (built from today's recipe, so ``task_model`` uses it)."""
    from alignlab.tasks import task_names

    out = []
    for task in tasks or task_names():
        for stage in stages or STAGES:
            path = shipped_dir(task, stage, root)
            if path.exists():
                manifest = read_manifest(path)
                out.append({"path": str(path), "current": is_current(manifest, stage_recipe(task, stage)), **manifest})
    return out


def model_provenance(model_dir: Path) -> dict:
    """Where a testbed model came from, for reports: shipped (with its build machine, build time and
    files' checksums) or built into the cache (with its recipe.json); empty for another model."""
    model_dir = Path(model_dir)
    if (model_dir / MANIFEST).exists():
        m = read_manifest(model_dir)
        return {"shipped": True, "key": m["key"], "built_on": m["built_on"], "build_seconds": m["build_seconds"],
                "sha256": m["files"].get("model.safetensors")}
    info = model_dir.parent / "recipe.json"
    if info.exists():
        built = json.loads(info.read_text())
        return {"shipped": False, "key": built.get("key"), "built_on": built.get("machine"),
                "build_seconds": built.get("build_seconds")}
    return {}
