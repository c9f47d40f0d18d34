"""Checkpoints: safetensors for tensors, JSON for the rest, written atomically.

Layout of ``<output_dir>/checkpoints/step-00000042/``:
    trainable.safetensors   the trainable parameters (all of them, or the LoRA adapter)
    optimizer.safetensors   AdamW moments and step counts, keyed by parameter index
    rng.safetensors         torch's CPU (and CUDA) random state
    state.json              step, optimizer param groups, scheduler, run config
    reference.safetensors   the reference's weights, when they move (``ref_sync_steps``)
    manifest.json           sha256 of every file above; written last

The directory is first written under a temporary name and renamed when complete, so a crash while
writing never leaves a directory that looks complete. On load every checksum is verified; a
checkpoint that fails is reported and the next newest is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from alignlab.errors import ConfigError, UserError

PREFIX = "step-"
REFERENCE_FILE = "reference.safetensors"


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes, read a MiB at a time."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = optimizer.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{idx}.{key}"] = t.detach().cpu().contiguous()
    return tensors, sd["param_groups"]


def rng_tensors() -> dict[str, torch.Tensor]:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda{i}"] = s
    return out


def step_name(step: int) -> str:
    """The directory name of checkpoint ``step``."""
    return f"{PREFIX}{step:08d}"


def seal(tmp: Path, final: Path, step: int) -> None:
    """Finish the checkpoint written into ``tmp``: fsync every file, write ``manifest.json`` (the
    sha256 of every file, by its path under ``tmp``) last, fsync the directories, then rename
    ``tmp`` to ``final`` (replacing an older one of that step). Every writer of checkpoints
    (this module, ``sharded.py``, ``zero.py``) ends with it, so all give the same guarantees."""
    files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    for name in files:
        with (tmp / name).open("rb") as f:
            os.fsync(f.fileno())
    manifest = {"step": step, "sha256": {name: sha256_file(tmp / name) for name in files}}
    with (tmp / "manifest.json").open("w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    for folder in sorted({(tmp / name).parent for name in files} | {tmp}, key=lambda d: -len(d.parts)):
        _fsync_dir(folder)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def shared_tmp(root: Path, step: int, dist) -> Path:
    """A new folder under ``root`` for checkpoint ``step`` that every process writes into (a sharded
    or DeepSpeed checkpoint), made by the first process. Every process must see it (its name is
    new, so no older one can stand in for it): otherwise a process's part would land on a disk of
    its own and the checkpoint would lack it, so that is a one-line error."""
    tmp = Path(dist.from_main(lambda: tempfile.mkdtemp(prefix=f".tmp-{step_name(step)}-", dir=root)))
    seen_by_all(tmp, dist, "made to write a checkpoint in", drop=True)
    return tmp


def seen_by_all(path: Path, dist, what: str, drop: bool = False) -> None:
    """Every process must see ``path``, which the first process ``what`` (words for the message);
    a process that does not is on a disk of its own, so that is a one-line error (``drop``: the
    first process removes ``path`` first)."""
    blind = [r for r, seen in enumerate(dist.gather(path.is_dir())) if not seen]
    if blind:
        if drop and dist.is_main:
            shutil.rmtree(path, ignore_errors=True)
        raise ConfigError(f"output_dir: process {blind[0]} does not see {path}, which the first process {what}; "
                          "output_dir must be on a file system that every machine of the run sees (a shared or "
                          "network file system)")


def same_newest(found: Path | None, root: Path, dist) -> None:
    """Every process must resume from the checkpoint the first one found: a process that finds
    another (or none) sees another file system under output_dir."""
    names = dist.gather(None if found is None else found.name)
    if len(set(names)) > 1:
        seen = ", ".join(f"process {r}: {n or 'none'}" for r, n in enumerate(names))
        raise ConfigError(f"resume: the processes find different newest checkpoints in {root} ({seen}); output_dir "
                          "must be on a file system that every machine of the run sees (a shared or network file "
                          "system)")


def save_checkpoint(root: Path, step: int, model, optimizer, scheduler, extra: dict[str, Any],
                    reference: dict[str, torch.Tensor] | None = None) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically and return its directory; ``reference``:
    a synced reference's weights (``RefSync``), written when given."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{step_name(step)}-", dir=root))
    try:
        opt_tensors, groups = optimizer_tensors(optimizer)
        save_file(trainable_state(model), tmp / "trainable.safetensors")
        save_file(opt_tensors, tmp / "optimizer.safetensors")
        save_file(rng_tensors(), tmp / "rng.safetensors")
        if reference:
            save_file(reference, tmp / REFERENCE_FILE)
        state = {"step": step, "param_groups": groups, "scheduler": scheduler.state_dict(), **extra}
        (tmp / "state.json").write_text(json.dumps(state, indent=1, default=str))
        seal(tmp, final, step)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def verify(ckpt: Path) -> str | None:
    """None if ``ckpt`` is complete and intact, else the reason it is not."""
    manifest = ckpt / "manifest.json"
    if not manifest.is_file():
        return "no manifest (the write did not finish)"
    try:
        sums = json.loads(manifest.read_text())["sha256"]
    except (ValueError, KeyError):
        return "manifest is unreadable"
    for name, digest in sums.items():
        f = ckpt / name
        if not f.is_file():
            return f"{name} is missing"
        if sha256_file(f) != digest:
            return f"{name} does not match its checksum"
    try:  # matching its checksum, yet not a state a run writes (edited by hand, manifest and all)
        state = read_state(ckpt)
    except (OSError, ValueError):
        return "state.json is unreadable"
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return "state.json holds no step"
    if (ckpt / "shards").is_dir():  # a sharded checkpoint (sharded.py): one shard file per process that wrote it
        try:
            then = int(state.get("world_size", 1))
        except (ValueError, TypeError):
            return "state.json is unreadable"
        have = len(list((ckpt / "shards").glob("*.safetensors")))
        if have != then:
            return f"it holds the shards of {have} of the {then} processes that wrote it"
    return None


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories under ``root``, newest first (temporaries excluded)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]), reverse=True)


def newest_valid(root: Path, report=print) -> Path | None:
    """The newest checkpoint under ``root`` that passes its checksums; every unfinished or
    damaged one met on the way is reported, never loaded."""
    if root.is_dir():
        for tmp in sorted(root.glob(f".tmp-{PREFIX}*")):
            report(f"ignoring unfinished checkpoint {tmp} (its write did not complete)")
    for ckpt in list_checkpoints(root):
        why = verify(ckpt)
        if why is None:
            return ckpt
        report(f"ignoring checkpoint {ckpt}: {why}")
    return None


def prune(root: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest complete checkpoints (keep=0 keeps all); drop stale
    temporaries. A folder named as a checkpoint without a manifest (never written by a run, which
    renames a checkpoint into place after its manifest) is neither counted nor deleted."""
    for tmp in [*root.glob(f".tmp-{PREFIX}*"), *root.glob(f".old-{PREFIX}*")]:
        shutil.rmtree(tmp, ignore_errors=True)
    if keep > 0:
        for old in [c for c in list_checkpoints(root) if (c / "manifest.json").is_file()][keep:]:
            # renamed first (atomic), so a kill while deleting never leaves a half-deleted step-N
            gone = root / f".old-{old.name}"
            os.replace(old, gone)
            shutil.rmtree(gone, ignore_errors=True)


def read_state(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / "state.json").read_text())


def load_checkpoint(ckpt: Path, model, optimizer, scheduler) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG from ``ckpt``; return its state.json."""
    state = read_state(ckpt)
    weights = load_file(ckpt / "trainable.safetensors")
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    unexpected = [n for n in weights if n not in params]
    if missing or unexpected:
        raise UserError(f"checkpoint {ckpt} does not fit the model being trained (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}); was it written with other model or LoRA settings?")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    tensors = load_file(ckpt / "optimizer.safetensors")
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        opt_state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    set_rng(load_file(ckpt / "rng.safetensors"))
    return state


def set_rng(rng: dict[str, torch.Tensor]) -> None:
    """Put back the random state ``rng_tensors`` saved."""
    torch.set_rng_state(rng["cpu"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda"))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
