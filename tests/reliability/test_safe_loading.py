"""Loading never runs code the user did not ask for, and training writes nowhere but its output
directory (and the cache the user controls)."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

import alignlab
from alignlab import train
from alignlab.config import TrainConfig
from tests.training.helpers import base_config

PACKAGE = Path(alignlab.__file__).resolve().parent


def _calls(name: str):
    """(file, call node) for every call of ``name`` ('torch.load', 'yaml.load', ...) in the package."""
    module, attr = name.rsplit(".", 1)
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == module):
                yield path.relative_to(PACKAGE.parent), node


def _imports() -> set[str]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module.split(".")[0])
    return found


def test_every_torch_load_is_weights_only():
    for where, call in _calls("torch.load"):
        flags = {k.arg: k.value for k in call.keywords}
        assert "weights_only" in flags and getattr(flags["weights_only"], "value", None) is True, \
            f"{where}:{call.lineno}: torch.load without weights_only=True"


def test_no_pickle_and_no_unsafe_yaml():
    assert not {"pickle", "dill", "cloudpickle", "marshal"} & _imports()
    assert list(_calls("yaml.load")) == []
    assert list(_calls("yaml.unsafe_load")) == []
    assert list(_calls("yaml.full_load")) == []


def test_trust_remote_code_is_never_hard_coded_on():
    assert TrainConfig.__dataclass_fields__["trust_remote_code"].default is False
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert not (isinstance(node.value, ast.Constant) and node.value.value is True), \
                    f"{path}:{node.value.lineno}: trust_remote_code=True"


def test_trust_remote_code_reaches_the_loaders_only_when_asked(tmp_path, tiny_model_dir, pairs_file, monkeypatch):
    import transformers

    seen = []
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        real = cls.from_pretrained.__func__

        def spy(klass, *args, _real=real, **kwargs):
            seen.append(kwargs.get("trust_remote_code"))
            return _real(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    train(base_config(tiny_model_dir, pairs_file, tmp_path / "a", max_steps=1, batch_size=4))
    assert seen and all(v is False for v in seen)
    seen.clear()
    train(base_config(tiny_model_dir, pairs_file, tmp_path / "b", max_steps=1, batch_size=4, trust_remote_code=True))
    assert seen and all(v is True for v in seen)


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("cache", [False, True], ids=["cache-off", "cache-on"])
def test_training_writes_only_into_its_output_directory(tmp_path, tiny_model_dir, pairs_file, monkeypatch, cache):
    """With HOME, the working directory and the temporary directory all inside one folder, a run
    changes nothing there but its output directory and, when caching, alignlab's cache folder
    (~/.cache/alignlab here; ``cache_dir`` or $ALIGNLAB_CACHE elsewhere). The model and the data
    are left as they were."""
    home, cwd, tmp = tmp_path / "home", tmp_path / "cwd", tmp_path / "tmp"
    for d in (home, cwd, tmp):
        d.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.delenv("ALIGNLAB_CACHE", raising=False)
    monkeypatch.chdir(cwd)
    model_before, data_before = _files(tiny_model_dir), pairs_file.read_bytes()
    before = _files(tmp_path)
    out = tmp_path / "run"
    train(base_config(tiny_model_dir, pairs_file, out, max_steps=2, batch_size=4, cache=cache))
    after = _files(tmp_path)
    changed = {k for k in after if before.get(k) != after[k]} | (before.keys() - after.keys())
    outside = {k for k in changed if not k.startswith("run" + os.sep)}
    allowed = {k for k in outside if k.startswith(os.path.join("home", ".cache", "alignlab") + os.sep)} if cache else set()
    assert outside == allowed
    assert bool(allowed) == cache  # the cache is used when on, and is the only thing outside
    assert _files(tiny_model_dir) == model_before
    assert pairs_file.read_bytes() == data_before
