"""Checking plain data (a parameter file, an override, a stage's config) against a config dataclass.

Every configurable thing in the book is a frozen dataclass: the trainable models' configs
(``inversion.models``), each stage's config and each book section's settings (``inversion.pipeline``).
``validate(cls, data, where)`` turns a dict read from YAML into an instance of ``cls`` and refuses, with
one message that names the place, anything that would otherwise run silently differently:

- an unknown key (a typo such as ``stpes``), naming the closest valid key;
- a missing required key;
- a value of the wrong type (a string for a number: YAML reads ``1e-3`` as a string, ``1.0e-3`` as a
  float; a bool for an int; a dict where a list belongs), or not among a ``Literal``'s choices;
- a value out of range: the dataclass's own ``__post_init__`` says what is valid, and its ValueError is
  passed on with the place prefixed.

Why not pydantic: the configs are flat dataclasses of numbers, strings and lists that the models also use
without any pipeline (``PixelCNNConfig`` is ``train_pixelcnn``'s argument), so their range checks live in
their ``__post_init__`` and must run there anyway; what remains is a walk over type hints, about a hundred
lines, and the messages (the file or override a key came from, the nearest valid key) would have to be
rewritten from pydantic's errors in any case. The library's dependencies stay torch, numpy, scipy, tqdm.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

__all__ = ["ConfigError", "validate", "closest", "to_plain"]


class ConfigError(ValueError):
    """A parameter set, an override or a stage config that cannot be run as written."""


def closest(word: str, choices) -> str:
    """' (did you mean 'steps'?)' for the nearest valid choice, or ''."""
    near = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _join(where: str, key) -> str:
    return f"{where}.{key}" if where else str(key)


def _type_name(tp) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}.get(
            tp.__name__, tp.__name__)
    return str(tp).replace("typing.", "")


def _describe(value) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, bool):
        return f"the boolean {value}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _convert(tp, value, where: str):
    """``value`` checked against the type hint ``tp`` (and converted: ints to floats, lists to tuples)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        expected = " or ".join(_type_name(a) for a in args)
        raise ConfigError(f"{where}: expected {expected}, got {_describe(value)}")
    if origin is Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise ConfigError(f"{where}: {value!r} is not one of {list(args)}{closest(value, args)}")
    if dataclasses.is_dataclass(tp):
        return validate(tp, value, where)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected a list of {len(args)} values, got {len(value)}")
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_describe(value)}")
        key_tp, val_tp = args if args else (Any, Any)
        return {_convert(key_tp, k, f"{where} key"): _convert(val_tp, v, _join(where, k)) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            raise ConfigError(f"{where}: expected a number, got the string {value!r} (YAML reads a number "
                              "without a decimal point, such as 1e-3, as a string: write 1.0e-3)")
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"{where}: cannot check values of type {tp!r}")
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {_describe(value)}")


def validate(cls, data, where: str = ""):
    """An instance of the dataclass ``cls`` from the mapping ``data``; ConfigError naming ``where`` otherwise."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping of settings, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        raise ConfigError(f"{_join(where, k)}: unknown key {k!r}{closest(k, fields)}; valid keys here: "
                          f"{', '.join(fields)}")
    required = [n for n, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in data]
    if missing:
        raise ConfigError(f"{where or cls.__name__}: missing required key {missing[0]!r}")
    values = {k: _convert(hints[k], v, _join(where, k)) for k, v in data.items()}
    try:
        return cls(**values)
    except ConfigError as e:  # a __post_init__ that names the key itself, relative to this mapping
        raise ConfigError(f"{where}.{e}" if where else str(e)) from None
    except (ValueError, TypeError) as e:
        # the models' configs say "<Class>.<field> must be ..."; here the place is ``where``
        msg = str(e)
        for klass in cls.__mro__:
            if msg.startswith(f"{klass.__name__}."):
                rest = msg[len(klass.__name__) + 1:]
                raise ConfigError(f"{where}.{rest}" if where else rest) from None
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def to_plain(obj):
    """A dataclass (or nested containers of them) as plain JSON-like data: dicts, lists, numbers, strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj
