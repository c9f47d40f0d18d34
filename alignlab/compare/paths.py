"""Paths in a comparison's config are read from the config file's folder, as a config file's
paths are expected to be, wherever the command runs.

- ``output_dir``, ``cache_dir`` and ``logging_dir`` name folders to write: a relative one is
  always taken from the config's folder.
- ``model``, ``reference_model``, ``data``, ``mix_data`` and ``eval_data`` name a local path or a
  hub name (``gpt2``, ``org/name``), or for data a task's prompts (``task:NAME``). A relative
  value that exists in the config's folder is that path. One that does not is left as written
  (a hub name) unless it is plainly a path (it starts with ``.``, ends in a file extension, or its
  first folder exists there), which is then a one-line error; so is a value that exists in the
  current folder but not in the config's, which was read from the current folder before.
- Absolute paths stay; ``~`` is expanded. An empty value is an error: an empty path would
  silently fall back to a default.
- The cells run in the config's folder, so a path inside another value (a scorer's ``rm:DIR``,
  a decoding method's options, a reward function's module) is read from there too.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from alignlab.config import SOURCE_KEYS
from alignlab.errors import ConfigError

OUTPUT_KEYS = ("cache_dir", "logging_dir")  # and the comparison's own output_dir
# Keys whose null is their default (left as it is); a null model or data would fall back silently.
NULLABLE = ("cache_dir", "logging_dir", "reference_model", "mix_data", "eval_data")
# A file extension starts with a letter, so that a version in a hub name ("OpenHermes-2.5") is none.
_EXTENSION = re.compile(r"\.[A-Za-z]\w*$")


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def output_path(value: Any, where: str, config_dir: Path) -> Path:
    """A folder to write, named in the config at ``where``: absolute, relative ones from ``config_dir``."""
    if _blank(value):
        raise ConfigError(f"{where}: empty; give a folder (a relative one is read from the config's folder), or "
                          "leave the key out for its default")
    if not isinstance(value, str):
        raise ConfigError(f"{where}: a folder name, got {value!r}")
    return Path(os.path.abspath(config_dir / Path(value).expanduser()))


def source_path(value: Any, where: str, config_dir: Path) -> Any:
    """A local path or hub name from the config at ``where``, as the module docstring says."""
    if _blank(value):
        raise ConfigError(f"{where}: empty; give a local path (a relative one is read from the config's folder) or a "
                          "hub name, or leave the key out")
    if not isinstance(value, str):
        return value  # the training config's own check names the type
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    here = config_dir / path
    if here.exists():
        return os.path.abspath(here)
    if value.startswith("task:"):
        return value
    elsewhere = Path.cwd() / path
    if elsewhere.exists() and elsewhere.resolve() != here.resolve():
        raise ConfigError(f"{where}: '{value}' is not in the config's folder {config_dir} (relative paths in a "
                          f"comparison's config are read from there) but in the current folder; write it as "
                          f"'{os.path.relpath(elsewhere, config_dir)}' or as an absolute path")
    if value.startswith(".") or _EXTENSION.search(value) or (config_dir / path.parts[0]).is_dir():
        raise ConfigError(f"{where}: '{value}' not found in the config's folder {config_dir} (relative paths in a "
                          "comparison's config are read from there)")
    return value


def resolve_keys(keys: dict[str, Any], where: str, config_dir: Path) -> dict[str, Any]:
    """``keys`` (flat training keys) with their paths resolved; ``where`` names them in errors."""
    out = dict(keys)
    for key in OUTPUT_KEYS:
        if key in out and not (out[key] is None and key in NULLABLE):
            out[key] = str(output_path(out[key], f"{where}.{key}", config_dir))
    for key in SOURCE_KEYS:
        if key in out and not (out[key] is None and key in NULLABLE):
            out[key] = source_path(out[key], f"{where}.{key}", config_dir)
    return out


# local data a finished cell answers for, and the key of its split
DATA_KEYS = {"data": "data_split", "mix_data": None, "eval_data": "eval_data_split"}
_DIGESTS: dict[tuple[str, int, int], str] = {}  # (file, size, mtime) -> digest: each file read once per command


def contents_digest(path: str, split: str | None = None) -> str | None:
    """The sha256 of the bytes of the local files a run reads from ``path`` (``source_files``: the
    file, or the files of ``split`` in a folder, with their paths under it), or None for what is
    not local (a hub dataset, ``task:NAME``) or no longer there."""
    from alignlab.data.sources import source_files

    files = source_files(path, split)
    if files is None:
        return None
    root = Path(path).expanduser()
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root) if f != root else "").encode() + b"\0")
        h.update(_file_digest(f).encode())
    return h.hexdigest()[:16]


def _file_digest(f: Path) -> str:
    from alignlab.training.checkpoint import sha256_file

    stat = f.stat()
    key = (str(f), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(f)
    return _DIGESTS[key]


def data_contents(train: dict[str, Any]) -> dict[str, str]:
    """The digests of a cell's local data (``contents_digest``) by key: a cell that finished on
    other contents of the same files no longer answers for the config."""
    out = {}
    for key, split_key in DATA_KEYS.items():
        value = train.get(key)
        split = train.get(split_key) if split_key else None
        digest = contents_digest(value, split if isinstance(split, str) else None) if isinstance(value, str) \
            else None
        if digest is not None:
            out[key] = digest
    return out
