"""Building frozen config dataclasses from plain data (YAML, overrides, checkpoints).

One mechanism for every config class: each value is coerced to the type its field declares (read
from the dataclass's type hints), so a new field needs no parsing code. An unknown key or a value
of the wrong kind is a `ConfigError` that names `section.key` and, for a key, suggests the closest
field ("did you mean").

Coercions (the only ones; anything else is an error):
- `int`: ints, integral floats (`2.0`) and digit strings; never a bool.
- `float`: anything `float()` accepts.
- `bool`: a bool, or the strings true/false/yes/no/1/0 (any case).
- `str`: a string, or a number (`train.precision=32` arrives from YAML as an int).
- `tuple[X, ...]` / `tuple[X, Y]`: any list or tuple (not a string), each element coerced; a fixed
  length must match, except that a single int fills a tuple of ints (`model.img_size=640`: a square).
- `X | None`: None, or a value coerced to X.
- `Any`: as given.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Mapping, TypeVar

from eomt.errors import EomtError

T = TypeVar("T")


class ConfigError(EomtError, ValueError):
    """A configuration value or key that does not fit; the message names the field."""


def unknown(key: str, value: Any, choices: Any, what: str = "value") -> str:
    """`key: unknown <what> 'value'; did you mean 'closest'? (expected one of: ...)`."""
    choices = [str(c) for c in choices]
    hint = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
    msg = f"{key}: unknown {what} {value!r}"
    if hint:
        msg += f"; did you mean {hint[0]!r}?"
    return msg + f" (expected one of: {', '.join(choices)})"


def from_dict(cls: type[T], d: Mapping[str, Any], prefix: str) -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys with a suggestion.

    Values are coerced to the field's declared type (see the module docstring); a value of the
    wrong kind is a ConfigError that names `prefix.key` and the expected type.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in d.items():
        if key not in fields:
            raise ConfigError(unknown(prefix, key, fields, what="key"))
        kwargs[key] = coerce(value, hints[key], f"{prefix}.{key}", _type_name(fields[key]))
    return cls(**kwargs)


def coerce(value: Any, hint: Any, key: str, type_name: str | None = None) -> Any:
    """`value` as type `hint`, or a ConfigError naming `key` and `type_name` (default: the hint)."""
    try:
        return _coerce(value, hint)
    except (TypeError, ValueError):
        name = type_name or _hint_name(hint)
        example = " (write a list, e.g. [1, 2])" if name.startswith("tuple") else ""
        raise ConfigError(f"{key}: {value!r} is not a valid {name}{example}") from None


def _coerce(value: Any, hint: Any) -> Any:
    if hint is Any:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]  # X | None only
        return _coerce(value, inner)
    if origin is tuple:
        return _coerce_tuple(value, args)
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise TypeError
        return value
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise TypeError
        return int(value)
    if hint is float:
        return float(value)
    if hint is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise TypeError
        return value
    return value  # a type without a coercion rule (none of the configs' fields today)


def _coerce_tuple(value: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    variadic = len(args) == 2 and args[1] is Ellipsis
    if not variadic and args and isinstance(value, int) and not isinstance(value, bool) and set(args) == {int}:
        return (value,) * len(args)  # `model.img_size=640`: a square
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError
    items = list(value)
    if variadic:
        return tuple(_coerce(v, args[0]) for v in items)
    if len(items) != len(args):
        raise ValueError
    return tuple(_coerce(v, a) for v, a in zip(items, args))


def _type_name(f: dataclasses.Field) -> str:
    """The field's type as written in its class (`tuple[int, int]`), for messages."""
    return f.type if isinstance(f.type, str) else _hint_name(f.type)


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) if not typing.get_args(hint) else str(hint).replace("typing.", "")  # type: ignore[return-value]


def parse_value(text: str) -> Any:
    """A `key=value` override's value parsed as YAML (`2e-4`, `[1, 2]`, `true`); unparsable text as is."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text
