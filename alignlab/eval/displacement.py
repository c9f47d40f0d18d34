"""Likelihood displacement: how the log-probs of the chosen and rejected responses move in training.

Razin et al., 2024, "Unintentional Unalignment: Likelihood Displacement in Direct Preference
Optimization" (ALGORITHMS.md §8.2). From a starting model θ0 to a trained one θ, per pair:

    Δℓ(y_w) = ℓθ(y_w) − ℓθ0(y_w)      (the "preferred log-prob change")
    Δℓ(y_l) = ℓθ(y_l) − ℓθ0(y_l)

with ℓ summed over the response tokens. Displacement is Δℓ(y_w) < 0: training widened the margin
Δℓ(y_w) − Δℓ(y_l) while pushing the preferred response down too. ``displacement`` reports the means
and the share of pairs whose chosen (and rejected) log-prob fell; ``run_models`` lists the models of
a training run in order (its starting model, each checkpoint kept, the final model) so that the
change can be followed over training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from alignlab.errors import UserError
from alignlab.eval.pairs import PairLogps


def displacement(start: PairLogps, end: PairLogps) -> dict:
    """Means over the pairs of Δℓ(y_w), Δℓ(y_l) and the margin change Δℓ(y_w) − Δℓ(y_l), the share
    of pairs whose chosen (rejected) log-prob fell, and the mean log-probs under ``end``."""
    n = len(start.chosen)
    if n == 0 or len(end.chosen) != n:
        raise ValueError(f"need the same pairs under both models, got {n} and {len(end.chosen)}")
    d_chosen = end.chosen - start.chosen
    d_rejected = end.rejected - start.rejected
    return {
        "pairs": n,
        "chosen_logp": float(end.chosen.mean()),
        "rejected_logp": float(end.rejected.mean()),
        "chosen_change": float(d_chosen.mean()),
        "rejected_change": float(d_rejected.mean()),
        "margin_change": float((d_chosen - d_rejected).mean()),
        "chosen_fell": float((d_chosen < 0).double().mean()),
        "rejected_fell": float((d_rejected < 0).double().mean()),
    }


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
    return config


def run_models(run: str | Path, dtype: str = "fp32") -> Iterator[tuple[str, Callable[[], torch.nn.Module]]]:
    """(label, load) for each model of a training run in training order: ``start`` (the run's
    starting model, ``model`` in run.yaml), ``step-N`` for each checkpoint under checkpoints/ that
    passes its checksums (a damaged one is reported on stderr and left out), and ``final`` (the
    saved model/) when there is one. A checkpoint holds only the trainable parameters: they are
    loaded into the starting model (with the run's LoRA adapter, for a LoRA run)."""
    import sys

    from safetensors.torch import load_file

    from alignlab.models import LoraSettings, add_lora, load_model
    from alignlab.training.checkpoint import list_checkpoints, verify

    root = Path(run)
    config = run_config(root)
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
            weights = load_file(ckpt / "trainable.safetensors")
            params = dict(model.named_parameters())
            unexpected = [name for name in weights if name not in params]
            if unexpected:
                raise UserError(f"checkpoint {ckpt} does not fit the run's starting model '{base}' (unexpected "
                                f"{unexpected[:3]})")
            with torch.no_grad():
                for name, value in weights.items():
                    params[name].copy_(value)
            return model
        return load

    yield "start", start
    for ckpt in reversed(list_checkpoints(root / "checkpoints")):  # oldest first
        why = verify(ckpt)
        if why is not None:
            print(f"leaving out checkpoint {ckpt}: {why}", file=sys.stderr)
            continue
        yield ckpt.name, at(ckpt)
    if (root / "model").is_dir():
        yield "final", lambda: load_model(str(root / "model"), dtype=dtype, trust_remote_code=trust)
