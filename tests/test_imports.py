"""Every module of the package imports (catches a module no test reaches)."""

from __future__ import annotations

import importlib
import pkgutil

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
