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
    import alignlab.train.loop  # noqa: F401

    assert callable(alignlab.train)
