"""Typed configuration: the dataclass is the YAML schema, the CLI and the Python API.

A YAML file holds flat keys: the fields of ``TrainConfig`` plus the hyperparameters of the chosen
method (e.g. ``beta`` for DPO). Command-line flags override it (``--lr 1e-4``, ``--columns.prompt
question``). Every value is converted to its field's type and checked; a bad one is a
``ConfigError`` naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alignlab.errors import ConfigError
from alignlab.losses import REGISTRY, ParamError, UnknownLossError
from alignlab.losses import get_loss as _get_loss
from alignlab.losses.params import param


@dataclass
class TrainConfig:
    """Everything a training run needs. Method hyperparameters live in ``method_params``."""

    method: str = param("dpo", "training method (see `alignlab methods`): sft, dpo, ...")
    model: str = param("", "policy to start from: a local directory or a hub name")
    data: str = param("", "training data: .jsonl/.json/.parquet/.csv file, dataset directory or hub name")
    eval_data: str | None = param(None, "held-out data in the same formats (instead of eval_fraction)")
    eval_fraction: float = param(0.0, "fraction of the training data held out for evaluation, whole prompts (0 = none)")
    data_split: str | None = param(None, "split of `data` to read from a dataset directory or hub dataset (default 'train')")
    eval_data_split: str | None = param(None, "split of `eval_data` to read, e.g. 'test' (default 'train')")
    columns: dict[str, str] = param(None, "map alignlab field names to your column names, e.g. prompt=question; "
                                          "also completions=answers[].answer (a list of objects) and "
                                          "score='0.5*helpfulness + 0.5*correctness' (a weighted sum)")
    skip_invalid: bool = param(False, "skip bad rows (counted and printed) instead of stopping at the first")
    output_dir: str = param("runs/alignlab", "where checkpoints, metrics.jsonl and the final model go")
    overwrite: bool = param(False, "start afresh in an output directory that holds a run (deletes its checkpoints); "
                                   "ignored with resume")
    max_steps: int = param(0, "optimizer steps to run; 0 means run `epochs` epochs")
    epochs: float = param(1.0, "passes over the training data (used when max_steps is 0)")
    batch_size: int = param(8, "examples (pairs for preference methods) per micro-batch per process")
    grad_accum: int = param(1, "micro-batches accumulated per optimizer step")
    lr: float = param(1e-6, "peak learning rate (AdamW)")
    weight_decay: float = param(0.0, "AdamW weight decay")
    adam_betas: list[float] = param(None, "AdamW betas (default 0.9,0.999)")
    adam_eps: float = param(1e-8, "AdamW epsilon")
    disable_dropout: bool = param(True, "turn the model's dropout off, so policy and reference log-probs are deterministic")
    scheduler: str = param("linear", "learning-rate schedule after warmup: linear, cosine or constant")
    warmup_steps: int = param(0, "linear warmup steps (overrides warmup_ratio when > 0)")
    warmup_ratio: float = param(0.0, "warmup as a fraction of all steps")
    max_grad_norm: float = param(1.0, "clip the global gradient norm to this (0 disables clipping)")
    skip_nonfinite: bool = param(False, "skip a step whose loss or gradient is not finite (logged, counted as "
                                        "skipped_steps) instead of stopping the run")
    max_length: int = param(1024, "maximum tokens of prompt + response; longer responses are cut at the end")
    max_prompt_length: int | None = param(None, "keep only the last this-many prompt tokens (None: no limit)")
    eval_every: int = param(0, "evaluate every N optimizer steps (0: only at the end)")
    group_by_length: bool = param(False, "put examples of similar length in the same step, so batches pad little "
                                         "(the order of the steps stays random)")
    packing: bool = param(True, "pack batches instead of padding them: each prompt once with all its responses "
                                "after it, short examples sharing a row, all kept apart by a block attention mask "
                                "(the same numbers as one padded row per response)")
    gradient_checkpointing: bool = param(False, "recompute activations in the backward pass instead of keeping "
                                                "them: less memory, about a third more compute")
    eval_at_start: bool = param(False, "also evaluate before the first step (a baseline row, step 0, in metrics.jsonl)")
    eval_batch_size: int | None = param(None, "micro-batch size for evaluation (default: batch_size)")
    save_every: int = param(0, "write a checkpoint every N optimizer steps (0: only at the end)")
    keep_checkpoints: int = param(2, "how many of the newest checkpoints to keep (0 keeps all)")
    log_every: int = param(1, "write metrics every N optimizer steps")
    seed: int = param(0, "seed of the run's one random generator (data order, initialisation)")
    resume: bool = param(False, "continue from the newest complete checkpoint in output_dir")
    dtype: str = param("fp32", "fp32; bf16 (mixed precision: fp32 master weights and optimizer, bf16 compute, "
                              "model saved in bf16); or fp64 (for numerical checks)")
    trust_remote_code: bool = param(False, "allow model code from the model directory or hub to run")
    lora: bool = param(False, "train a LoRA adapter; the reference is the base with the adapter disabled")
    lora_r: int = param(16, "LoRA rank")
    lora_alpha: int = param(32, "LoRA alpha")
    lora_dropout: float = param(0.0, "LoRA dropout")
    lora_target_modules: list[str] = param(None, "modules to adapt (default q_proj,k_proj,v_proj,o_proj)")
    merge_lora: bool = param(False, "also save merged full weights under <output_dir>/model/merged")
    progress: bool = param(True, "show a progress bar")
    task: str | None = param(None, "testbed task (arithmetic, sentiment, constraints): at every evaluation the model "
                                   "answers its held-out prompts, logged as gold reward, win rate and KL against "
                                   "the starting model, and length")
    task_eval_prompts: int = param(0, "how many of the task's held-out prompts to answer (0: all)")
    mix_data: str | None = param(None, "a second set of pairs for methods that mix two sets (bvpo: the "
                                       "empty-trace pairs; `data` holds the trace pairs)")
    cache_dir: str | None = param(None, "where reference log-probs and reference samples are cached "
                                        "(default $ALIGNLAB_CACHE or ~/.cache/alignlab)")
    cache: bool = param(True, "reuse cached reference log-probs and samples (false: compute them afresh, "
                              "and write nothing)")
    method_params: Any = field(default=None, metadata={"help": "hyperparameters of the method", "internal": True})

    def __post_init__(self) -> None:
        self.columns = dict(self.columns or {})
        self.adam_betas = list(self.adam_betas or [0.9, 0.999])
        self.lora_target_modules = list(self.lora_target_modules or ["q_proj", "k_proj", "v_proj", "o_proj"])
        spec = get_loss(self.method)
        if self.method_params is None:
            self.method_params = spec.params()
        elif isinstance(self.method_params, dict):
            self.method_params = build(spec.params, self.method_params, f"method '{self.method}'")
        _check(self.model != "", "model", "is required (a local directory or a hub name)")
        _check(self.data != "", "data", "is required (a file, dataset directory or hub name)")
        _check(0.0 <= self.eval_fraction < 1.0, "eval_fraction", f"must be in [0, 1), got {self.eval_fraction}")
        _check(self.max_steps >= 0, "max_steps", f"must be >= 0, got {self.max_steps}")
        _check(self.epochs > 0, "epochs", f"must be > 0, got {self.epochs}")
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.grad_accum >= 1, "grad_accum", f"must be >= 1, got {self.grad_accum}")
        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(self.adam_eps > 0, "adam_eps", f"must be > 0, got {self.adam_eps}")
        _check(len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas), "adam_betas",
               f"must be two numbers in [0, 1), got {self.adam_betas}")
        _check(self.scheduler in ("linear", "cosine", "constant"), "scheduler",
               f"must be linear, cosine or constant, got '{self.scheduler}'")
        _check(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _check(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        _check(self.max_grad_norm >= 0, "max_grad_norm", f"must be >= 0, got {self.max_grad_norm}")
        _check(self.max_length >= 2, "max_length", f"must be >= 2, got {self.max_length}")
        _check(self.max_prompt_length is None or 1 <= self.max_prompt_length < self.max_length,
               "max_prompt_length", f"must be between 1 and max_length-1, got {self.max_prompt_length}")
        for name in ("eval_every", "save_every", "keep_checkpoints"):
            _check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        _check(self.task_eval_prompts >= 0, "task_eval_prompts", f"must be >= 0, got {self.task_eval_prompts}")
        if self.task is not None:
            from alignlab.tasks import task_names

            _check(self.task in task_names(), "task", f"must be one of {', '.join(task_names())}, got '{self.task}'")
        _check(self.mix_data is None or "group" in self.spec.needs, "mix_data",
               f"method '{self.method}' trains on one set of data; mix_data is for methods that mix two (bvpo)")
        _check(self.mix_data is not None or "group" not in self.spec.needs, "mix_data",
               f"method '{self.method}' needs a second set of pairs in mix_data")
        if self.spec.model == "reward":
            _check(not self.lora, "lora", "reward models train the whole backbone and head; LoRA is for policies")
            _check(self.task is None, "task", "a reward model does not answer prompts; measure it with alignlab eval rm")
        _check(self.log_every >= 1, "log_every", f"must be >= 1, got {self.log_every}")
        _check(self.eval_batch_size is None or self.eval_batch_size >= 1, "eval_batch_size", "must be >= 1")
        _check(self.dtype in ("fp32", "bf16", "fp64"), "dtype", f"must be fp32, bf16 or fp64, got '{self.dtype}'")
        _check(self.lora_r >= 1, "lora_r", f"must be >= 1, got {self.lora_r}")
        _check(0 <= self.lora_dropout < 1, "lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        _check(not (self.eval_data and self.eval_fraction > 0), "eval_fraction",
               "give either eval_data or eval_fraction, not both")
        for name in ("lr", "epochs", "weight_decay", "adam_eps", "warmup_ratio", "max_grad_norm", "eval_fraction"):
            _check(math.isfinite(getattr(self, name)), name, f"must be a finite number, got {getattr(self, name)}")

    @property
    def spec(self):
        return get_loss(self.method)

    def to_dict(self) -> dict[str, Any]:
        """Flat dict (method hyperparameters inline), the same shape as the YAML file."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "method_params"}
        out.update(dataclasses.asdict(self.method_params))
        return out


def get_loss(name: str):
    """The registry's spec for ``name``; an unknown name is a ConfigError."""
    try:
        return _get_loss(name)
    except UnknownLossError as e:
        raise ConfigError(str(e)) from None


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {message}")


# -- conversion of raw values (YAML or command line) to field types ------------------------------

def _strip_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def convert(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or a flag string) to type ``tp``; ConfigError names ``key``."""
    tp, optional = _strip_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{key}: a value is required")
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise ConfigError(f"{key}: must be a finite number, got {value!r}")
            return number
        if tp is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if origin is list:
            (item,) = typing.get_args(tp)
            if isinstance(value, str):
                value = json.loads(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
            if not isinstance(value, list):
                raise ValueError
            return [convert(v, item, key) for v in value]
        if origin is dict:
            if isinstance(value, str):
                value = json.loads(value) if value.strip().startswith("{") else dict(
                    kv.split("=", 1) for kv in value.split(",") if kv
                )
            if not isinstance(value, dict):
                raise ValueError
            return {str(k): str(v) for k, v in value.items()}
        if tp is Any:
            return value
    except (ValueError, TypeError, json.JSONDecodeError):
        pass
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is list:
        return "a list (comma-separated on the command line)"
    if typing.get_origin(tp) is dict:
        return "a mapping (key=value,key=value on the command line)"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if not f.metadata.get("internal")}


# Names other trainers (Hugging Face TrainingArguments, TRL) give to some of our keys.
OTHER_NAMES = {
    "learning_rate": "lr", "per_device_train_batch_size": "batch_size", "train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum", "num_train_epochs": "epochs", "model_name_or_path": "model",
    "dataset": "data", "dataset_name": "data", "train_file": "data", "max_seq_length": "max_length",
    "warmup_steps_ratio": "warmup_ratio", "lr_scheduler_type": "scheduler", "save_steps": "save_every",
    "eval_steps": "eval_every", "logging_steps": "log_every", "save_total_limit": "keep_checkpoints",
    "gradient_checkpointing_enable": "gradient_checkpointing", "loss_type": "method",
}


def unknown_key_error(key: str, known: list[str], where: str) -> ConfigError:
    close = [OTHER_NAMES[key]] if OTHER_NAMES.get(key) in known else difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"{key}: unknown key for {where}{hint}")


def build(cls: type, raw: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass ``cls`` from raw values, converting and checking each key."""
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in types_:
            raise unknown_key_error(key, list(types_), where)
        kwargs[key] = convert(value, types_[key], key)
    try:
        return cls(**kwargs)
    except ParamError as e:  # a hyperparameter's own range check
        raise ConfigError(str(e)) from None
    except TypeError as e:  # a required field without default
        raise ConfigError(f"{where}: {e}") from None


def _merge_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """``columns.prompt=question`` sets raw['columns']['prompt']."""
    if "." in key:
        head, tail = key.split(".", 1)
        sub = raw.setdefault(head, {})
        if not isinstance(sub, dict):
            raise ConfigError(f"{head}: cannot set '{tail}' inside a non-mapping value")
        sub[tail] = value
    else:
        raw[key] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file '{path}'{where} is not valid YAML: {what}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys to values")
    return data


def make_config(raw: dict[str, Any]) -> TrainConfig:
    """Split flat keys into TrainConfig fields and the method's hyperparameters, then build."""
    raw = dict(raw)
    for key in [k for k in raw if "." in k]:
        _merge_dotted(raw, key, raw.pop(key))
    method = str(raw.get("method", "dpo"))
    spec = get_loss(method)
    train_keys = set(_field_types(TrainConfig))
    method_keys = set(_field_types(spec.params))
    method_raw = {}
    for key in list(raw):
        if key in train_keys:
            continue
        if key in method_keys:
            method_raw[key] = raw.pop(key)
            continue
        other = [n for n, s in REGISTRY.items() if key in _field_types(s.params)]
        if other:
            raise ConfigError(f"{key}: not a parameter of method '{method}' (it belongs to {', '.join(other)})")
        raise unknown_key_error(key, sorted(train_keys | method_keys), f"method '{method}'")
    cfg = build(TrainConfig, raw, "the training config")
    cfg.method_params = build(spec.params, method_raw, f"method '{method}'")
    return cfg


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """YAML file (optional) plus overrides (flag values, dotted keys allowed)."""
    raw = read_yaml(path) if path else {}
    from_file = set(raw)
    for key, value in (overrides or {}).items():
        _merge_dotted(raw, key, value)
    try:
        return make_config(raw)
    except ConfigError as e:
        key = str(e).split(":", 1)[0]
        if path and key in from_file and key not in (overrides or {}):
            raise ConfigError(f"{path}: {e}") from None  # the key came from the file: say which file
        raise


def field_help(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type name, default, help) for each public field of a config dataclass."""
    rows = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        tp, _ = _strip_optional(typing.get_type_hints(cls)[f.name])
        name = getattr(tp, "__name__", str(tp))
        rows.append((f.name, name, f.default, f.metadata.get("help", "")))
    return rows


# Keys that may differ between a run and its resumption: they do not change the weights.
RESUMABLE_KEYS = frozenset({
    "resume", "progress", "overwrite", "save_every", "keep_checkpoints", "log_every", "eval_every",
    "eval_batch_size", "eval_data", "eval_data_split", "merge_lora", "trust_remote_code", "task",
    "task_eval_prompts", "cache_dir", "cache", "eval_at_start", "gradient_checkpointing", "skip_nonfinite",
})


def config_differences(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys whose values differ between two flat configs and that matter for resuming. A key
    that one of them lacks (written by another version) is not compared."""
    return sorted(k for k in set(previous) & set(current)
                  if k not in RESUMABLE_KEYS and previous[k] != current[k])


def known_keys() -> set[str]:
    """Names of the fields of TrainConfig and of every method's hyperparameters."""
    return {name for cls in [TrainConfig] + [s.params for s in REGISTRY.values()] for name in _field_types(cls)}


def bool_keys() -> set[str]:
    """Names of the boolean fields of TrainConfig and of every method's hyperparameters."""
    classes = [TrainConfig] + [spec.params for spec in REGISTRY.values()]
    return {name for cls in classes for name, tp in _field_types(cls).items() if _strip_optional(tp)[0] is bool}


def fields_markdown() -> str:
    """The README's table of TrainConfig fields (tests check that the README holds it verbatim)."""
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for name, tp, default, help_ in field_help(TrainConfig):
        rows.append(f"| `{name}` | {tp} | `{default!r}` | {help_.replace('|', '/')} |")
    return "\n".join(rows)
