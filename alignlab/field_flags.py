"""A dataclass's fields as command-line flags, and back: the settings dataclasses of ``alignlab
demo``, ``feedback``, ``sample``, ``decode`` and ``tiny-model`` become flags with their types,
defaults and help, and the parsed flags become the dataclass's keyword arguments. (``alignlab
train``'s config fields go through ``config/parse.py`` instead, which also reads YAML.) Its own
module so that every command's module can use it without importing the command line itself."""

from __future__ import annotations

import argparse
import dataclasses

import yaml

from alignlab.errors import UserError

FLAG_NAMES = {
    "demo": {"num_prompts": "prompts", "method_params": "param"},
    "feedback": {"num_prompts": "prompts"},
    "sample": {},
    "decode": {},
    "tiny-model": {},
}


def field_flag(command: str, name: str) -> str:
    """The flag that sets field ``name`` of ``command``'s settings: ``--prompts`` for num_prompts."""
    return "--" + FLAG_NAMES[command].get(name, name).replace("_", "-")


def default_text(value: object) -> str:
    """A field's default as ``--help`` shows it: ``(default 0.5)``, ``(default none)``."""
    if value is None or value == {}:
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def field_default(f: dataclasses.Field) -> object:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def add_field_flags(parser: argparse.ArgumentParser, cls: type, command: str, required: tuple[str, ...] = (),
                    helps: dict[str, str] | None = None) -> None:
    """One flag per field of dataclass ``cls``: named after the field (or as ``FLAG_NAMES[command]``
    says), of its type, with its default and its help (``metadata['help']``, else ``helps[name]``
    for a dataclass that keeps no help of its own; ``metadata['choices']`` limits the values). A
    mapping field is a repeatable ``--flag NAME=VALUE``; a tuple field takes any number of values."""
    import typing

    from alignlab.config.parse import strip_optional

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, _ = strip_optional(hints[f.name])
        flag = field_flag(command, f.name)
        shown = "required" if f.name in required else f"default {default_text(field_default(f))}"
        text = f.metadata.get("help") or (helps or {}).get(f.name, "")
        kwargs = {"dest": f.name, "help": f"{text} ({shown})".replace("%", "%%")}
        if f.name in required:
            kwargs["required"] = True
        else:
            kwargs["default"] = field_default(f)
        if "choices" in f.metadata:
            kwargs["choices"] = list(f.metadata["choices"])
            kwargs["metavar"] = "{" + ",".join(f.metadata["choices"]) + "}"
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(tp) is dict:
            parser.add_argument(flag, action="append", metavar="NAME=VALUE", **{**kwargs, "default": []})
        elif typing.get_origin(tp) is tuple:
            item = typing.get_args(tp)[0]
            parser.add_argument(flag, nargs="*", type=item, metavar=item.__name__.upper(), **kwargs)
        else:
            parser.add_argument(flag, type=tp, **{"metavar": flag[2:].upper().replace("-", "_"), **kwargs})


def field_values(args: argparse.Namespace, cls: type, command: str) -> dict:
    """The values of ``cls``'s fields from parsed flags; a mapping's NAME=VALUE items become a
    dict, each value read as YAML (``--param epsilon=0.3`` gives ``{'epsilon': 0.3}``); a tuple
    field's values become a tuple."""
    import typing

    from alignlab.config.parse import strip_optional

    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name)
        origin = typing.get_origin(strip_optional(hints[f.name])[0])
        if origin is tuple and isinstance(value, list):
            value = tuple(value)
        elif origin is dict and isinstance(value, list):
            items = {}
            for item in value:
                name, sep, text = item.partition("=")
                if not sep or not name:
                    raise UserError(f"{field_flag(command, f.name)}: expected NAME=VALUE, got '{item}'")
                items[name] = yaml.safe_load(text)
            value = items
        out[f.name] = value
    return out
