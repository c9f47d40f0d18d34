"""What lets `alignlab decode` resume: the record of a run's settings and the tally of its chunks.

`alignlab decode` writes its answers a chunk of ``--batch-size`` prompts at a time, as `alignlab
sample` does (``sample_cli.py``: rows appended and flushed; a run killed at any point loses at most
the chunk it was on). Beside the output ``O.jsonl``:

    O.jsonl.meta.json     `alignlab sample`'s record of the settings (model, prompts and their hash,
                          sampling options, backend, batch size, scorer, dtype) and ``decode``: the
                          method's own settings (the method, n, steps, beta, models, prefix, ...)
    O.jsonl.chunks        a JSON line per chunk written, after its rows: what the summary adds up
                          that the rows do not hold (forward and rollout tokens, qalign's accepted
                          and proposed steps, nudging's token counts, best-of-n's candidate rewards);
                          not named *.jsonl, so that a glob for outputs does not find it

The same command run again continues after the last chunk both files hold (a row without its
chunk's line, or a partly written line, is cut off and its chunk decoded again); other settings
are refused in one line naming the option; ``--overwrite`` starts over. A chunk's answers depend
on its prompts and their indices only (the generator is told the index of the chunk's first
prompt), so a resumed file equals an uninterrupted one wherever the method's sampler draws from
streams of (seed, prompt index) alone, as the native backend does.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from alignlab.errors import UserError, option
from alignlab.sample_cli import _setting

CHUNKS_SUFFIX = ".chunks"
# flags that name a file or model: kept as absolute paths where they are local, as the model is
_PATH_KEYS = ("aligned", "reference", "prefix")


def chunks_path(out: Path) -> Path:
    return Path(f"{out}{CHUNKS_SUFFIX}")


def method_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The decoding method's own settings from the command's ``args`` (every flag of
    ``add_method_flags`` but the scorer, which the sample record holds), as the record keeps them."""
    from alignlab.decoding.spec import add_method_flags
    from alignlab.models import resolve_source

    probe = argparse.ArgumentParser(add_help=False)
    add_method_flags(probe)
    keys = [k for k in vars(probe.parse_args(["--method", "x"])) if k != "scorer"]
    out = {}
    for key in keys:
        value = getattr(args, key, None)
        if key in _PATH_KEYS and isinstance(value, str) and Path(value).expanduser().exists():
            value = str(Path(value).expanduser().resolve()) if key == "prefix" else resolve_source(value)
        out[key] = value
    return json.loads(json.dumps(out))


def check_same_decode(old: dict[str, Any], new: dict[str, Any], output: Path) -> None:
    """Refuse to continue ``output`` when the record ``old`` was not written by `alignlab decode`
    or its method settings differ from ``new``'s (naming the first that differs). The sample
    settings are `sample_cli.check_same_run`'s to compare."""
    restart = f"pass {option('overwrite')} to start over, or choose another --output"
    if not isinstance(old.get("decode"), dict):
        raise UserError(f"{output} was written by alignlab sample, not decode; {restart}")
    if old.get("format") != new.get("format"):
        return  # check_same_run names it
    for key, value in new["decode"].items():
        before = old["decode"].get(key)
        if before != value:
            raise UserError(f"{output} was started with {_setting(key, before)}, this run has {_setting(key, value)}; "
                            f"rerun with the earlier options to resume it, or {restart}")


def read_chunks(path: Path) -> list[dict[str, Any]]:
    """The chunk lines of ``path`` that were written whole (a partly written last one is left out)."""
    if not path.is_file():
        return []
    out = []
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                out.append(json.loads(line))
            except ValueError:
                raise UserError(f"{path}, line {len(out) + 1}: not a chunk's line (was the file changed after it was "
                                f"written?); pass {option('overwrite')} to start over") from None
    return out


def resumable_rows(output: Path, rows: int, batch_size: int, prompts: int) -> tuple[int, list[dict[str, Any]]]:
    """How many of the ``rows`` complete rows of ``output`` a resumed run keeps, and their chunks'
    lines: the chunks whose line and rows are both written, from the first (each of ``batch_size``
    prompts, the last of ``prompts`` perhaps fewer); the rest of both files is cut off (decoded again)."""
    path = chunks_path(output)
    chunks, kept = [], 0
    for c in read_chunks(path):
        size = min(batch_size, prompts - kept)
        if c.get("start") != kept or c.get("rows") != size or kept + size > rows:
            break
        chunks.append(c)
        kept += size
    keep_lines(path, len(chunks))
    keep_lines(output, kept)
    return kept, chunks


def append_lines(path: Path, text: str) -> None:
    """Append ``text`` (whole lines) to ``path`` and make it durable before going on."""
    with path.open("a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def keep_lines(path: Path, count: int) -> None:
    """Cut ``path`` after its first ``count`` lines (a missing file stays missing)."""
    if not path.is_file():
        return
    end = 0
    with path.open("rb") as f:
        for _ in range(count):
            end += len(f.readline())
    if end < path.stat().st_size:
        with path.open("r+b") as f:
            f.truncate(end)
