"""Typed configuration: the dataclass is the YAML schema, the CLI and the Python API.

``schema`` holds ``TrainConfig``, its sections and their checks; ``parse`` reads YAML files,
flags and dicts into it (flat keys, keys by section, dotted overrides), converting and checking
each value with errors that name the key.
"""

from alignlab.config.parse import (
    OTHER_NAMES,
    RESUMABLE_KEYS,
    bool_keys,
    build,
    config_differences,
    convert,
    field_help,
    fields_markdown,
    flat_config,
    known_keys,
    list_keys,
    load_config,
    make_config,
    normalize,
    read_yaml,
    unknown_key_error,
)
from alignlab.config.schema import (
    SOURCE_KEYS,
    AdapterConfig,
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    OptimConfig,
    Section,
    TrackingConfig,
    TrainConfig,
    get_loss,
    sections,
)

__all__ = [
    "OTHER_NAMES", "RESUMABLE_KEYS", "SOURCE_KEYS", "AdapterConfig", "CheckpointConfig", "DataConfig", "EvalConfig", "OptimConfig",
    "Section", "TrackingConfig", "TrainConfig", "bool_keys", "build", "config_differences", "convert", "field_help", "fields_markdown",
    "flat_config", "get_loss", "known_keys", "list_keys", "load_config", "make_config", "normalize", "read_yaml", "sections",
    "unknown_key_error",
]
