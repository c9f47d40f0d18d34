"""Reading a training config: YAML files, flag values and Python dicts into a ``TrainConfig``.

A key arrives flat (``lr``), by its section (``optim: {lr: ...}`` or ``optim.lr``), or as one key
of a mapping field (``columns.prompt``); method hyperparameters (``beta``) sit at the top level.
``normalize`` brings every key to its flat name (names are unique across sections), so that a
flag overrides a file's key however either was spelled. Each value is then converted to its
field's type and checked; a bad one is a ``ConfigError`` that names the key (``lr: must be > 0``),
prefixed with the file's name when the key came from a YAML file. An unknown key gets a
did-you-mean, which also knows the names other trainers use (``learning_rate`` -> ``lr``).

This is written here, not left to a parser library, because the libraries checked cannot keep
these keys and messages: jsonargparse takes a field of a section only by its dotted name and
reports a bad value on two lines under that name, without the file it came from;
transformers' HfArgumentParser has no sections or dotted keys and leaves YAML values
unconverted. (``alignlab.cli`` says more.)
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from alignlab.config.schema import SOURCE_KEYS, TrainConfig, _instantiate, get_loss, sections
from alignlab.errors import ConfigError, UserError
from alignlab.losses import REGISTRY

# -- conversion of raw values (YAML or command line) to field types ------------------------------



# what a round recipe sets when the config does not (``IterateConfig.recipe``, ``alignlab/rounds.py``)
RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "raft": {"method": "sft"},
    "iterative-dpo": {"method": "dpo"},
    "self-rewarding": {"method": "dpo", "reward": ["judge:{policy}"], "round_reference": "previous"},
    "osp": {"method": "soft-preference"},
    "spa": {"method": "soft-preference", "reward": ["implicit:policy={policy},reference={reference}"],
            "num_generations": 2},
}

# list fields of scorer specs, whose items hold commas of their own (``length:coef=0.01,target=5``)
SPEC_LIST_KEYS = frozenset({"reward"})
_OPTION = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def split_scorer_specs(text: str) -> list[str]:
    """Scorer specs written as one text, split at the commas between specs and not at those
    inside one: an item that reads ``name=value`` is an option of the spec before it
    (``openai:URL,model=NAME``), unless it is a folder (a reward model). Spaces around a comma are
    dropped."""
    specs: list[str] = []
    for item in (part.strip() for part in text.split(",")):  # "a, b" as "a,b"
        if specs and _OPTION.match(item) and not Path(item).expanduser().is_dir():
            specs[-1] += "," + item
        else:  # an empty item is kept for the config's check to name
            specs.append(item)
    return specs


def strip_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def convert(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or a flag string) to type ``tp``; ConfigError names ``key``."""
    tp, optional = strip_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{key}: a value is required")
    origin = typing.get_origin(tp)
    if origin is typing.Literal:  # one of a fixed set of strings
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise ConfigError(f"{key}: must be one of {', '.join(map(str, choices))}, got {value!r}")
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
            if isinstance(value, str) and value.strip().startswith("["):
                value = json.loads(value)
            elif isinstance(value, str):
                value = split_scorer_specs(value) if key in SPEC_LIST_KEYS else [v for v in value.split(",") if v]
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
    """The value fields of a dataclass and their types (not internal fields, not sections)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)
            if not f.metadata.get("internal") and not f.metadata.get("section")}


def _layout() -> dict[str, str | None]:
    """Every field of a training config by its flat name: the section that holds it (None: top level)."""
    out: dict[str, str | None] = {name: None for name in _field_types(TrainConfig)}
    for s in sections():
        out.update({name: s.name for name in _field_types(s.cls)})
    return out


def _value_types() -> dict[str, Any]:
    """The type of every field of a training config, by flat name."""
    out = _field_types(TrainConfig)
    for s in sections():
        out.update(_field_types(s.cls))
    return out


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
    """``key: unknown key for WHERE; did you mean ...?`` (the last name part of a dotted key is matched)."""
    name = key.rsplit(".", 1)[-1]
    close = [OTHER_NAMES[name]] if OTHER_NAMES.get(name) in known else difflib.get_close_matches(name, known, n=1)
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
    return _instantiate(cls, kwargs, where)


# -- keys: by section or flat ----------------------------------------------------------------------


def normalize(raw: dict[str, Any]) -> dict[str, Any]:
    """The same keys by their flat names: ``{'optim': {'lr': 1}}`` and ``{'optim.lr': 1}`` become
    ``{'lr': 1}``. Other keys pass as they are: a flat field, a method hyperparameter, one key of
    a mapping (``columns.prompt``), or an unknown key (``make_config`` reports it). A value that
    is given twice, flat and by its section, is an error."""
    names = {s.name: s for s in sections()}
    layout = _layout()
    out: dict[str, Any] = {}
    given_as: dict[str, str] = {}

    def put(key: str, value: Any, spelled: str) -> None:
        if key in out:
            raise ConfigError(f"{key}: given twice, as '{given_as[key]}' and as '{spelled}'")
        out[key], given_as[key] = value, spelled

    for key, value in raw.items():
        key = str(key)
        head, dot, rest = key.partition(".")
        if head not in names:
            put(key, value, key)
            continue
        if dot:
            items = [(rest, value)]
        elif isinstance(value, dict) or value is None:
            items = [(str(k), v) for k, v in (value or {}).items()]
        else:
            first = next(iter(_field_types(names[head].cls)))
            hint = f"; did you mean '{OTHER_NAMES[head]}'?" if head in OTHER_NAMES else ""
            raise ConfigError(f"{head}: is a section and takes a mapping of its keys ({head}: {{{first}: ...}}, "
                              f"or {head}.{first}), got {value!r}{hint}")
        for sub, v in items:
            name = sub.partition(".")[0]
            if layout.get(name, "") != head:
                raise _not_in_section(head, name, layout)
            put(sub, v, f"{head}.{sub}")
    return out


def _not_in_section(section: str, name: str, layout: dict[str, str | None]) -> ConfigError:
    if name in layout:
        home = layout[name]
        where = f"in section '{home}'" if home else "a top-level key"
        return ConfigError(f"{section}.{name}: not a key of section '{section}'; {name} is {where}")
    if any(name in _field_types(spec.params) for spec in REGISTRY.values()):
        return ConfigError(f"{section}.{name}: not a key of section '{section}'; method hyperparameters are "
                           "top-level keys")
    known = [n for n, home in layout.items() if home == section]
    return unknown_key_error(f"{section}.{name}", known, f"section '{section}'")


def _merge_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """``columns.prompt=question`` sets raw['columns']['prompt'] (keeping the mapping's other keys)."""
    if "." in key:
        head, tail = key.split(".", 1)
        sub = raw.get(head, {})
        if not isinstance(sub, dict):
            raise ConfigError(f"{head}: cannot set '{tail}' inside a non-mapping value")
        raw[head] = {**sub, tail: value}
    elif isinstance(value, dict) and isinstance(raw.get(key), dict):
        raw[key] = {**raw[key], **value}  # a mapping after dotted keys into it: both kept
    else:
        raw[key] = value


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """A config as a dict (``to_dict()``, a run.yaml, a checkpoint's record, of this version or an
    earlier, flat one) with its sections' keys at the top level."""
    names = {s.name for s in sections()}
    out = {}
    for key, value in config.items():
        if key in names and isinstance(value, dict):
            out.update(value)
        else:
            out[key] = value
    return out


# -- building ---------------------------------------------------------------------------------------


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that gives a key twice: YAML forbids it, and PyYAML
    would keep the later value and drop the earlier one without a word. Keys a merge (``<<``)
    brings in may still be overridden."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                line = key_node.start_mark.line + 1
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key '{key}' given twice (first on line {first[key]})", key_node.start_mark)
                first[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file '{path}' is a folder; give the YAML file")
    if not p.exists():
        raise ConfigError(f"config file '{path}' does not exist")
    if not p.is_file():
        raise ConfigError(f"config file '{path}' is not a regular file; give the YAML file")
    try:
        loader = _UniqueKeys(p.read_text(encoding="utf-8"))  # what yaml.load does, with this safe loader
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
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
    """Build a TrainConfig from keys given flat, by section or both (a YAML file's, flags', a
    Python dict's): sort them into the top level, the sections and the method's hyperparameters,
    convert each value to its field's type, then check."""
    flat: dict[str, Any] = {}
    for key, value in normalize(raw).items():
        _merge_dotted(flat, key, value)
    layout, types_ = _layout(), _value_types()
    for key in SPEC_LIST_KEYS & flat.keys():
        if not convert(flat[key], types_[key], key):  # null or [] (a run's run.yaml writes []): as if left out
            del flat[key]
    recipe = flat.get("recipe")
    for key, value in (RECIPE_DEFAULTS.get(recipe, {}) if isinstance(recipe, str) else {}).items():
        flat.setdefault(key, value)  # a recipe's, unless given
    method = str(flat.get("method", "dpo"))
    spec = get_loss(method)
    if spec.num_generations is not None:  # a method that compares a fixed number of samples (online-dpo: 2)
        flat.setdefault("num_generations", spec.num_generations)
    method_keys = set(_field_types(spec.params))
    parts: dict[str | None, dict[str, Any]] = {None: {}, **{s.name: {} for s in sections()}}
    method_raw = {}
    for key, value in flat.items():
        if key in layout:
            parts[layout[key]][key] = value
        elif key in method_keys:
            method_raw[key] = value
        else:
            other = [n for n, s in REGISTRY.items() if key in _field_types(s.params)]
            if other:
                raise ConfigError(f"{key}: not a parameter of method '{method}' (it belongs to {', '.join(other)})")
            known = set(layout) | method_keys | {s.name for s in sections()}
            raise unknown_key_error(key, sorted(known), f"method '{method}'")
    top = {key: convert(value, types_[key], key) for key, value in parts[None].items()}
    built = {s.name: build(s.cls, parts[s.name], "the training config") for s in sections()}
    params = build(spec.params, method_raw, f"method '{method}'")
    return _instantiate(TrainConfig, {**top, **built, "method_params": params}, "the training config")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None, *,
                need_rounds: bool = False) -> TrainConfig:
    """YAML file (optional) plus overrides (flag values; flat, dotted or by section). With
    ``need_rounds`` (``alignlab iterate``), a config without ``rounds`` of 1 or more is refused
    first, before the other keys are checked against a run without rounds."""
    raw: dict[str, Any] = {}
    if path:
        from_yaml = read_yaml(path)
        try:
            for key, value in normalize(from_yaml).items():
                _merge_dotted(raw, key, value)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    from_file = set(raw)
    given = normalize(overrides or {})
    for key, value in given.items():
        _merge_dotted(raw, key, value)
    overridden = {key.split(".", 1)[0] for key in given}
    if need_rounds and convert(raw.get("rounds", 0), int, "rounds") < 1:
        raise UserError("alignlab iterate runs rounds: give rounds: N (N >= 1) in the config or --rounds N")
    try:
        return make_config(raw)
    except ConfigError as e:
        key = str(e).split(":", 1)[0]
        if path and key in from_file and key not in overridden:
            raise ConfigError(f"{path}: {e}") from None  # the key came from the file: say which file
        raise


# -- what the keys are, for help, the README and the flag parser --------------------------------------


def field_help(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type name, default, help) for each value field of a config dataclass (sections and
    internal fields left out)."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal") or f.metadata.get("section"):
            continue
        tp, _ = strip_optional(hints[f.name])
        name = getattr(tp, "__name__", str(tp))
        rows.append((f.name, name, f.default, f.metadata.get("help", "")))
    return rows


# Keys that may differ between a run and its resumption: they do not change the weights. The
# output_dir is where the run was found (its run.yaml, its checkpoints), however it is written
# now, or wherever the folder has been moved.
RESUMABLE_KEYS = frozenset({
    "resume", "progress", "overwrite", "save_every", "keep_checkpoints", "log_every", "eval_every", "output_dir",
    "eval_batch_size", "eval_data", "eval_data_split", "merge_lora", "trust_remote_code", "task",
    "task_eval_prompts", "task_eval_decoding", "cache_dir", "cache", "eval_at_start", "gradient_checkpointing", "skip_nonfinite",
    "report_to", "logging_dir", "run_name", "run_group", "project",
})


def config_differences(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys whose values differ between two configs and that matter for resuming, by flat name.
    Either may be sectioned (``to_dict()``) or flat (written by an earlier version); a key that
    one of them lacks (written by another version) is not compared."""
    previous, current = flat_config(previous), flat_config(current)
    return sorted(k for k in set(previous) & set(current)
                  if k not in RESUMABLE_KEYS and not _same_value(k, previous[k], current[k]))


def _same_value(key: str, a: Any, b: Any) -> bool:
    """Equal, or for a path key (``SOURCE_KEYS``) two spellings of one path from the same folder
    (``./runs/x/`` and ``runs/x``); a relative path read from another folder is not recognised."""
    if a == b:
        return True
    if key in SOURCE_KEYS and isinstance(a, str) and isinstance(b, str):
        return os.path.normpath(os.path.expanduser(a)) == os.path.normpath(os.path.expanduser(b))
    return False


def known_keys() -> set[str]:
    """Names of the fields of TrainConfig (flat), of its sections and of every method's hyperparameters."""
    return set(_layout()) | {s.name for s in sections()} | {
        name for spec in REGISTRY.values() for name in _field_types(spec.params)}


def list_keys() -> set[str]:
    """Keys of list values, as ``bool_keys`` gives the boolean ones (``report_to``,
    ``tracking.report_to``, ``reward``, ...)."""
    layout = _layout()
    out = {name for name, tp in _value_types().items() if typing.get_origin(strip_optional(tp)[0]) is list}
    out |= {f"{layout[name]}.{name}" for name in out if layout[name]}
    for spec in REGISTRY.values():
        out |= {name for name, tp in _field_types(spec.params).items()
                if typing.get_origin(strip_optional(tp)[0]) is list}
    return out


def bool_keys() -> set[str]:
    """Keys of boolean values: fields of TrainConfig (flat, and by section: ``adapter.lora``) and
    every method's hyperparameters."""
    layout = _layout()
    out = {name for name, tp in _value_types().items() if strip_optional(tp)[0] is bool}
    out |= {f"{layout[name]}.{name}" for name in out if layout[name]}
    for spec in REGISTRY.values():
        out |= {name for name, tp in _field_types(spec.params).items() if strip_optional(tp)[0] is bool}
    return out


def fields_markdown() -> str:
    """The README's table of TrainConfig fields, top level first, then by section (tests check
    that the README holds it verbatim)."""
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]

    def add(cls: type) -> None:
        for name, tp, default, help_ in field_help(cls):
            rows.append(f"| `{name}` | {tp} | `{default!r}` | {help_.replace('|', '/')} |")

    add(TrainConfig)
    for s in sections():
        rows.append(f"| `{s.name}` | section | - | {s.help} (the fields below, given flat or by the section: "
                    f"`{s.name}: {{FIELD: ...}}`, `--{s.name}.FIELD`) |")
        add(s.cls)
    return "\n".join(rows)
