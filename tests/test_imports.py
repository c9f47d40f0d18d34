"""Every module of the package imports (catches a module no test reaches), and the boundaries
that the source must keep: only the testbed and the command line import the testbed, and only the
generator factory builds a generation backend."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import alignlab


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(alignlab.__path__, prefix="alignlab.")]
    assert len(names) >= 20
    for name in names:
        importlib.import_module(name)


def test_train_is_callable_after_importing_submodules():
    import alignlab.training.loop  # noqa: F401

    assert callable(alignlab.train)


def test_no_public_function_looks_like_a_test():
    """A function named test* that a test module imports is collected by pytest as a test (and
    fails for want of fixtures), so no module-level function of the package has such a name."""
    import inspect

    for module_info in pkgutil.walk_packages(alignlab.__path__, prefix="alignlab."):
        module = importlib.import_module(module_info.name)
        for name, obj in vars(module).items():
            if inspect.isfunction(obj) and obj.__module__ == module.__name__:
                assert not name.startswith("test"), f"{module.__name__}.{name}"


# ---------------------------------------------------------------- boundaries read from the source

PACKAGE = Path(alignlab.__file__).parent
# The command line is the top of the package: it registers the testbed's commands (demo, feedback,
# testbed), so it may import alignlab.testbed from outside it. The comparison harness sits on top
# beside it: on a task, its cells start from the testbed's SFT model and its synthetic feedback.
MAY_IMPORT_TESTBED = {"cli.py", "eval_cli.py", "compare/config.py", "compare/run.py", "compare/cell.py"}
FACTORY = "generation/factory.py"
NOT_BACKENDS = {"generation/__init__.py", "generation/base.py", FACTORY}


def sources(root: Path) -> dict[str, ast.Module]:
    """Every module under ``root`` by its path relative to it, parsed."""
    return {p.relative_to(root).as_posix(): ast.parse(p.read_text(), str(p)) for p in sorted(root.rglob("*.py"))}


def imported_names(path: str, tree: ast.Module, package: str = "alignlab") -> set[str]:
    """The dotted names a module imports anywhere in it (inside functions too); ``from a import b``
    gives both ``a`` and ``a.b``, and relative imports are resolved against the module's package."""
    here = [package, *path.removesuffix(".py").split("/")]
    if here[-1] == "__init__":
        here.pop()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = here[:len(here) - node.level + (path.endswith("__init__.py"))]
                base = ".".join(parent + ([node.module] if node.module else []))
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return names


def importers_of_testbed(root: Path) -> list[str]:
    """Modules outside testbed/ (and not allowed to) that import alignlab.testbed."""
    return [path for path, tree in sources(root).items()
            if not path.startswith("testbed/") and path not in MAY_IMPORT_TESTBED
            and any(n == "alignlab.testbed" or n.startswith("alignlab.testbed.") for n in imported_names(path, tree))]


def backend_classes(root: Path) -> set[str]:
    """Generators defined in the generation backends (every module of generation/ but the protocol,
    the factory and the package's __init__): the classes there with a ``generate`` or
    ``generate_ids`` method (a backend's own helpers, such as a logits processor, are not
    generators; the shared ``RendersPrompts`` part builds nothing)."""
    return {node.name for path, tree in sources(root).items()
            if path.startswith("generation/") and path not in NOT_BACKENDS
            for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
            and any(isinstance(f, ast.FunctionDef) and f.name in ("generate", "generate_ids") for f in node.body)}


def backend_constructions(root: Path, classes: set[str]) -> list[str]:
    """``path:line name`` of every call of a backend class outside the factory."""
    found = []
    for path, tree in sources(root).items():
        if path == FACTORY:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name in classes:
                    found.append(f"{path}:{node.lineno} {name}")
    return found


def test_nothing_outside_the_testbed_imports_it_but_the_command_line():
    assert importers_of_testbed(PACKAGE) == []
    assert "alignlab.testbed.shipped_cli" in imported_names("cli.py", sources(PACKAGE)["cli.py"])


def test_generation_backends_are_built_only_by_the_factory():
    classes = backend_classes(PACKAGE)
    assert {"HFGenerator", "NativeGenerator", "VLLMGenerator"} <= classes
    assert backend_constructions(PACKAGE, classes) == []


def test_the_sampling_and_scoring_layers_do_not_import_training():
    """generation/, rewards/, tasks/ and eval/ sit below train/: imports point down."""
    below = ("generation/", "rewards/", "tasks/", "eval/")
    up = [path for path, tree in sources(PACKAGE).items() if path.startswith(below)
          and any(n == "alignlab.training" or n.startswith("alignlab.training.") for n in imported_names(path, tree))]
    assert up == []


def test_the_boundary_checks_catch_violations(tmp_path):
    """A made-up package with one of each violation (and each allowed case): the checks name
    exactly the violations."""
    files = {
        "cli.py": "from alignlab.testbed.demo import run_demo\n",
        "testbed/demo.py": "from alignlab.testbed.build import x\nfrom . import shipped\n",
        "eval/gold.py": "from alignlab.testbed.tasks import get_task\n",
        "rewards/judge.py": "def f():\n    from alignlab import testbed\n",
        "data/load.py": "import alignlab.testbed.shipped as s\n",
        "tasks/__init__.py": "from ..testbed import build\n",
        "training/run.py": "from alignlab.testbedish import y\nfrom alignlab.generation.hf import HFGenerator\n"
                        "g = HFGenerator(model, tok)\n",
        "generation/hf.py": "class HFGenerator:\n    def generate(self):\n        return Helper()\n\n\n"
                            "class Helper:\n    pass\n",
        "generation/base.py": "class Generator:\n    pass\n",
        "generation/factory.py": "from alignlab.generation.hf import HFGenerator\nHFGenerator(m, t)\n",
        "rewards/model.py": "from alignlab.generation import hf\n\n\ndef g(m, t):\n    return hf.HFGenerator(m, t)\n",
    }
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    assert importers_of_testbed(tmp_path) == ["data/load.py", "eval/gold.py", "rewards/judge.py", "tasks/__init__.py"]
    assert backend_classes(tmp_path) == {"HFGenerator"}
    assert backend_constructions(tmp_path, {"HFGenerator"}) == ["rewards/model.py:5 HFGenerator",
                                                                "training/run.py:3 HFGenerator"]
