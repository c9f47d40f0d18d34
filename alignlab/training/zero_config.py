"""The DeepSpeed config of a run (``zero.py``): what the run asks for (the ``deepspeed`` field, or
``accelerate launch`` with a DeepSpeed accelerate config), read from a preset, a DeepSpeed JSON or
accelerate's ``DeepSpeedPlugin``, with what the run decides itself (batch sizes, accumulation,
clipping, precision, the optimizer and schedule) filled in and checked. Needs no DeepSpeed."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from alignlab.errors import ConfigError

PRESETS = {"zero2": 2, "zero3": 3}


def requested(cfg) -> str | None:
    """What the run asks DeepSpeed for: the ``deepspeed`` field, else ``"accelerate"`` when
    ``accelerate launch`` ran with a DeepSpeed config; None for neither."""
    launched = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true")
    field = cfg.optim.deepspeed or None
    if field and launched:
        raise ConfigError(f"deepspeed: the run asks for '{field}' and was launched with a DeepSpeed accelerate config "
                          "as well; keep one of the two")
    if (field or launched) and cfg.optim.fsdp:
        raise ConfigError("fsdp: DeepSpeed ZeRO shards the model already; use fsdp or deepspeed, not both")
    if (field or launched) and cfg.spec.value_model:
        raise ConfigError(f"deepspeed: method '{cfg.method}' trains a critic beside the policy, which is not handed "
                          "to DeepSpeed; train it without deepspeed")
    return field or ("accelerate" if launched else None)


def _requested_config(spec: str) -> tuple[dict, str]:
    """(the DeepSpeed config asked for, where it comes from, for messages)."""
    if spec in PRESETS:
        return {"zero_optimization": {"stage": PRESETS[spec]}}, f"deepspeed: {spec}"
    if spec == "accelerate":
        from accelerate.utils import DeepSpeedPlugin

        where = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
        where = "the accelerate config" if where == "none" else where
        try:
            return copy.deepcopy(DeepSpeedPlugin().deepspeed_config), where
        except (ValueError, OSError) as e:
            raise ConfigError(f"{where}: {str(e).splitlines()[0]}") from None
    path = Path(spec).expanduser()
    if not path.suffix == ".json":
        raise ConfigError(f"deepspeed: '{spec}' is neither zero2, zero3 nor a DeepSpeed config file (.json)")
    try:
        config = json.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"deepspeed: cannot read '{spec}': {e.strerror}") from None
    except ValueError as e:
        raise ConfigError(f"deepspeed: '{spec}' is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"deepspeed: '{spec}' holds no JSON object")
    return config, spec


def _autos(node: Any, at: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, v in node.items() for k in _autos(v, f"{at}.{key}" if at else key)]
    return [at] if node == "auto" else []


def ds_config(spec: str, cfg, world_size: int, hidden_size: int | None) -> dict:
    """The DeepSpeed config of the run: the one asked for, with what the run decides filled in
    (batch sizes, clipping) and checked against what it sets itself. Every conflict is a
    ConfigError naming the file and the key."""
    config, where = _requested_config(spec)
    o = cfg.optim
    for section in ("optimizer", "scheduler"):
        if section in config:
            raise ConfigError(f"{where}: remove its '{section}' section: the run brings its own AdamW and learning-rate "
                              "schedule (lr, weight_decay, adam_betas, scheduler, warmup_steps)")
    for section in ("fp16", "bf16", "torch_autocast"):
        enabled = (config.pop(section, None) or {}).get("enabled", False)
        if enabled not in (False, "auto"):
            raise ConfigError(f"{where}: {section}.enabled is {enabled}; the run's precision is its dtype "
                              "(dtype: bf16 is fp32 weights with bf16 compute): set it to auto or remove it")
    zero = config.setdefault("zero_optimization", {})
    stage = zero.setdefault("stage", 2)
    if stage not in (2, 3):
        raise ConfigError(f"{where}: zero_optimization.stage is {stage}; alignlab runs ZeRO stage 2 or 3 (without "
                          "deepspeed, each process holds the whole model under DDP)")
    ours = {"train_micro_batch_size_per_gpu": (o.batch_size, "batch_size"),
            "gradient_accumulation_steps": (o.grad_accum, "grad_accum"),
            "train_batch_size": (o.batch_size * o.grad_accum * world_size, "batch_size × grad_accum × processes"),
            "gradient_clipping": (o.max_grad_norm, "max_grad_norm")}
    for key, (value, name) in ours.items():
        given = config.get(key, "auto")
        if given != "auto" and given != value:
            raise ConfigError(f"{where}: {key} is {given} and the run's {name} is {value}; set it to auto or remove "
                              "it (the run's config decides it)")
        config[key] = value
    if hidden_size:  # the sizes accelerate fills in for "auto", from the model's width
        for key, value in (("reduce_bucket_size", hidden_size ** 2), ("stage3_prefetch_bucket_size", int(0.9 * hidden_size ** 2)),
                           ("stage3_param_persistence_threshold", 10 * hidden_size)):
            if zero.get(key) == "auto":
                zero[key] = value
    left = _autos(config)
    if left:
        raise ConfigError(f"{where}: {left[0]} is auto, which alignlab does not fill in; give it a value")
    config.setdefault("zero_allow_untested_optimizer", True)  # torch's AdamW, the run's own
    config.setdefault("zero_force_ds_cpu_optimizer", False)  # offloaded, it steps on the CPU as it is
    config["steps_per_print"] = 1 << 62  # the run logs its own metrics
    return config
