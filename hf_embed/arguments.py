"""Command-line arguments generated from `HfEmbedConfig`, and `--config_overrides` parsing.

Every field of `HfEmbedConfig.argument_fields()` becomes a flag of the same name and type (`--n_embd_wte 64`,
`--use_rotary_embeddings`, `--rope_variant soap`). Each flag defaults to `None`, meaning "not given: keep the
config's value" (the class default for a new model, the saved value for a loaded one), so a flag given on the
command line always wins and an absent one never overwrites. Booleans take an optional value
(`--use_rotary_embeddings`, `--use_rotary_embeddings false`) and those that default to True also get a
`--no_NAME` form, as `HfArgumentParser` does for its own booleans.
"""

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal

from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from .configuration_hf_embed import HfEmbedConfig

__all__ = [
    "add_negative_flags",
    "apply_config_values",
    "config_arguments_dataclass",
    "given_config_values",
    "parse_config_overrides",
    "parse_value",
]

_NONE_WORDS = ("none", "null")


def _optional(hint: Any) -> Any:
    """`hint | None`, unless None is already allowed."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint):
        return hint
    return typing.Optional[hint]  # noqa: UP045 - a Literal | None needs typing.Optional on Python 3.10


def _base_type(hint: Any) -> Any:
    """`int | None` -> int; `Literal[...] | None` -> the Literal; a plain hint -> itself."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def config_arguments_dataclass(exclude: set[str] = frozenset(), name: str = "HfEmbedArguments") -> type:
    """A dataclass with one `None`-defaulted field per `HfEmbedConfig` argument, for `HfArgumentParser`.

    `exclude` names fields that another argument dataclass already defines (argparse refuses duplicates); the
    script maps those itself.
    """
    fields = []
    for field in HfEmbedConfig.argument_fields():
        if field.name in exclude:
            continue
        base = _base_type(field.type)
        default = field.default if field.default is not dataclasses.MISSING else None
        help_text = field.metadata.get("help", f"HfEmbedConfig.{field.name}")
        metadata = {"help": f"{help_text} (config default: {default!r})"}
        if base is bool:
            metadata.update(nargs="?", const=True)
        fields.append((field.name, _optional(field.type), dataclasses.field(default=None, metadata=metadata)))
    cls = dataclasses.make_dataclass(name, fields)
    cls.__doc__ = "Every HfEmbedConfig argument as a flag; None means not given (keep the config's value)."
    return cls


def add_negative_flags(parser: HfArgumentParser, arguments_class: type) -> None:
    """Add `--no_NAME` for every boolean config argument whose config default is True."""
    defaults = {f.name: f.default for f in HfEmbedConfig.argument_fields()}
    for field in dataclasses.fields(arguments_class):
        if _base_type(field.type) is bool and defaults.get(field.name) is True:
            parser.add_argument(
                f"--no_{field.name}",
                action="store_false",
                dest=field.name,
                default=None,
                help=f"set {field.name} to False",
            )


def given_config_values(arguments: Any) -> dict[str, Any]:
    """The config arguments that were given (not None), by name."""
    return {
        f.name: getattr(arguments, f.name)
        for f in dataclasses.fields(arguments)
        if getattr(arguments, f.name) is not None
    }


def parse_value(name: str, text: str, hint: Any) -> Any:
    """Cast the string `text` to the field type `hint`; a `ValueError` names the field, the value and the type."""
    base = _base_type(hint)
    allows_none = base is not hint or hint is type(None)
    if allows_none and text.strip().lower() in _NONE_WORDS:
        return None
    try:
        if typing.get_origin(base) is Literal:
            choices = typing.get_args(base)
            if text not in choices:
                raise ValueError(f"expected one of {list(choices)}")
            return text
        if base is bool:
            return string_to_bool(text)
        if base in (int, float, str):
            return base(text)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
        raise ValueError(f"config override {name}={text!r} is not allowed: {error}") from None
    raise ValueError(f"config override {name}: unsupported field type {hint!r}")


def parse_config_overrides(text: str | None) -> dict[str, Any]:
    """`"n_embd_wte=64,rope_length=16"` -> `{"n_embd_wte": 64, "rope_length": 16}`, typed by the config fields.

    Unlike `PretrainedConfig.update_from_string`, fields whose current value is None work, and so does `None`
    itself (`n_embd_wte=None`). Standard aliases (`hidden_size=...`) map to their fields.
    """
    if not text:
        return {}
    hints = {f.name: f.type for f in HfEmbedConfig.argument_fields()}
    values: dict[str, Any] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, raw = item.partition("=")
        key = HfEmbedConfig.attribute_map.get(key.strip(), key.strip())
        if not sep or key not in hints:
            raise ValueError(
                f"config_overrides item {item!r} is not allowed: expected NAME=VALUE with NAME one of {sorted(hints)}"
            )
        values[key] = parse_value(key, raw.strip(), hints[key])
    return values


def apply_config_values(config: HfEmbedConfig, values: dict[str, Any]) -> HfEmbedConfig:
    """Set the given fields on `config` and check the result as a whole."""
    for name, value in values.items():
        setattr(config, name, value)
    config.check_arguments()
    return config
