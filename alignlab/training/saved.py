"""A training run's saved models, in training order: its starting model, each checkpoint kept
(only the trainable parameters, loaded into the starting model) and the final model; for
following a quantity over training (``alignlab eval displacement --run``). A sharded (FSDP)
checkpoint's parameters are put together from every process's shards first."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from alignlab.config import SOURCE_KEYS
from alignlab.errors import UserError


def run_config(run: str | Path) -> dict:
    """The config a training run saved (its ``run.yaml``); one error line when there is none."""
    import yaml

    path = Path(run) / "run.yaml"
    if not path.is_file():
        raise UserError(f"--run {run}: no run.yaml there (is it a training run's output_dir?)")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not readable YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(config, dict) or not config.get("model"):
        raise UserError(f"{path}: names no starting model ('model')")
    return _from_launch_folder(config, Path(run))


def _from_launch_folder(config: dict, run: Path) -> dict:
    """``config`` with its relative local paths (the model, the data) read from the folder the run
    was started in, wherever the caller stands now. run.yaml keeps them as typed; the folder is
    the run's own minus its relative ``output_dir`` (``runs/x`` found at ``/work/runs/x`` was
    started in ``/work``). A value that is not a path there (a hub name, ``task:NAME``) or a run
    whose folder cannot tell (an absolute output_dir, a moved run) keeps its value."""
    out_dir = config.get("output_dir")
    if not isinstance(out_dir, str) or not out_dir or Path(out_dir).is_absolute():
        return config
    parts = Path(out_dir).parts
    here = run.expanduser().resolve().parts
    if len(here) <= len(parts) or here[-len(parts):] != parts:
        return config
    launch = Path(*here[:-len(parts)])

    def resolved(value):
        if not isinstance(value, str) or not value or value.startswith("task:") or Path(value).is_absolute():
            return value
        where = launch / Path(value).expanduser()
        return str(where) if where.exists() else value

    out = dict(config)
    for key, value in config.items():
        if key in SOURCE_KEYS:
            out[key] = resolved(value)
        elif isinstance(value, dict):  # a section (dataset: mix_data, eval_data)
            out[key] = {k: resolved(v) if k in SOURCE_KEYS else v for k, v in value.items()}
    return out


def run_models(run: str | Path, dtype: str = "fp32", left_out: dict[str, str] | None = None
               ) -> Iterator[tuple[str, Callable[[], torch.nn.Module]]]:
    """(label, load) for each model of a training run in training order: ``start`` (the run's
    starting model, ``model`` in run.yaml), ``step-N`` for each checkpoint under checkpoints/ that
    passes its checksums (a damaged one is reported on stderr and left out), and ``final`` (the
    saved model/) when there is one. A checkpoint holds only the trainable parameters (one file,
    or a sharded run's shards): they are loaded into the starting model (with the run's LoRA
    adapter, for a LoRA run, then merged into it). A PPO critic's parameters (``value_model.*``)
    are not the policy's and are left out. A reward-model run has no policy to follow: one error
    line. ``left_out``, when given, receives each checkpoint left out and why, by name."""
    import sys

    from safetensors.torch import load_file

    from alignlab.losses.registry import UnknownLossError, get_loss
    from alignlab.models import LoraSettings, add_lora, load_model, merged_lora
    from alignlab.training.checkpoint import list_checkpoints, verify
    from alignlab.training.critic import ATTR as CRITIC
    from alignlab.training.sharded import read_weights

    root = Path(run)
    config = run_config(root)
    try:
        spec = get_loss(str(config.get("method")))
    except UnknownLossError:
        spec = None  # run.yaml's own method is checked by the training that wrote it
    if spec is not None and spec.model == "reward":
        raise UserError(f"--run {run}: a reward-model run (method {spec.name}); its checkpoints score answers and "
                        "write none, so there is no policy to follow over training (give a policy's run; its reward "
                        "model can be a scorer, rm:DIR)")
    base = str(config["model"])
    adapter = config.get("adapter") or {}
    trust = bool(config.get("trust_remote_code", False))

    def start() -> torch.nn.Module:
        return load_model(base, dtype=dtype, trust_remote_code=trust)

    def at(ckpt: Path) -> Callable[[], torch.nn.Module]:
        def load() -> torch.nn.Module:
            model = start()
            if adapter.get("lora"):
                model = add_lora(model, LoraSettings(adapter["lora_r"], adapter["lora_alpha"], 0.0,
                                                     adapter["lora_target_modules"]))
            if (ckpt / "trainable.safetensors").is_file():
                weights = load_file(ckpt / "trainable.safetensors")
            else:
                weights = read_weights(ckpt)
            weights = {k: v for k, v in weights.items() if not k.startswith(f"{CRITIC}.")}
            params = dict(model.named_parameters())
            unexpected = [name for name in weights if name not in params]
            if unexpected:
                raise UserError(f"checkpoint {ckpt} does not fit the run's starting model '{base}' (unexpected "
                                f"{unexpected[:3]})")
            with torch.no_grad():
                for name, value in weights.items():
                    params[name].copy_(value)
            # the adapter merged in: a plain model, as the final model/ loads, which every
            # generation backend runs (the same sampler, hence the same seeds, for all of a run's models)
            return merged_lora(model) if adapter.get("lora") else model
        return load

    yield "start", start
    for ckpt in reversed(list_checkpoints(root / "checkpoints")):  # oldest first
        why = verify(ckpt)
        if why is not None:
            print(f"leaving out checkpoint {ckpt}: {why}", file=sys.stderr)
            if left_out is not None:
                left_out[ckpt.name] = why
            continue
        yield ckpt.name, at(ckpt)
    if (root / "model").is_dir():
        yield "final", lambda: load_model(str(root / "model"), dtype=dtype, trust_remote_code=trust)
