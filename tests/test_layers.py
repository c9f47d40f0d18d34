"""The package's imports point down (DESIGN.md): the pure layers import nothing above them, and
nothing below the training loop reaches up into it. Walks every module's imports, including those
inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import alignlab

ROOT = Path(alignlab.__file__).parent
# Modules that import only torch and may serve any layer.
LEAVES = {"alignlab.errors", "alignlab.training.distributed"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every alignlab module -> the alignlab modules it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
        found[_module_name(path)] = {n for n in names if n == "alignlab" or n.startswith("alignlab.")}
    return found


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _violations(allowed: dict[str, tuple[str, ...]]) -> list[str]:
    """``module imports target`` for each import of a module under a key of ``allowed`` that is
    neither under one of its allowed packages nor a leaf."""
    bad = []
    for module, targets in imports().items():
        for package, ok in allowed.items():
            if _under(module, package):
                bad += [f"{module} imports {t}" for t in sorted(targets)
                        if t != "alignlab" and not any(_under(t, o) for o in ok + tuple(LEAVES))]
    return bad


def test_losses_and_data_import_nothing_above_them():
    assert _violations({"alignlab.losses": ("alignlab.losses",),
                        "alignlab.data": ("alignlab.data",)}) == []


def test_nothing_below_the_loop_imports_it():
    """Generation, rewards, tasks, evaluation, log-probs and models serve training; they never
    import it (or the command line)."""
    above = ("alignlab.training", "alignlab.testbed", "alignlab.cli")
    bad = [f"{m} imports {t}" for m, targets in imports().items()
           for t in sorted(targets)
           if any(_under(m, p) for p in ("alignlab.generation", "alignlab.rewards", "alignlab.tasks",
                                         "alignlab.eval", "alignlab.logprobs", "alignlab.models",
                                         "alignlab.losses", "alignlab.data"))
           and not any(_under(t, leaf) for leaf in LEAVES) and any(_under(t, a) for a in above)]
    assert bad == []


def test_the_walk_sees_imports_inside_functions():
    """The check can fail: a function-level import is found."""
    assert "alignlab.training.run" in imports()["alignlab.cli"] or any(
        _under(t, "alignlab.training") for t in imports()["alignlab.cli"])
