"""Type introspection shared by the decoder, the help text and the encoder.

Classifies annotations (union, list-like, mapping, choice registry, ...), resolves dataclass
field types (string annotations, generic dataclasses) and describes types in plain words
for error messages ("an integer or a list of integers").
"""

from __future__ import annotations

import collections.abc
import dataclasses
import datetime
import enum
import functools
import inspect
import pathlib
import types
import typing
from typing import Any

import draccus
import jmp

NoneType = type(None)

# Abstract and concrete containers decoded from a YAML list, and the Python type they build.
_LIST_ORIGINS: dict[Any, type] = {
    list: list,
    collections.abc.Sequence: list,
    collections.abc.MutableSequence: list,
    collections.abc.Iterable: list,
    collections.abc.Collection: list,
    tuple: tuple,
    set: set,
    frozenset: frozenset,
    collections.abc.Set: frozenset,
    collections.abc.MutableSet: set,
}
_MAPPING_ORIGINS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def strip(tp: Any) -> Any:
    """Remove wrappers that do not change decoding: Annotated, NewType, bound TypeVars."""
    while True:
        if typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif hasattr(tp, "__supertype__"):
            tp = tp.__supertype__
        elif isinstance(tp, typing.TypeVar):
            tp = tp.__bound__ if tp.__bound__ is not None else Any
        else:
            return tp


def is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def union_members(tp: Any) -> tuple[Any, ...]:
    return tuple(strip(t) for t in typing.get_args(tp))


def is_literal(tp: Any) -> bool:
    return typing.get_origin(tp) is typing.Literal


def list_kind(tp: Any) -> type | None:
    """The Python container a YAML list becomes for `tp`, or None if `tp` is not list-like."""
    origin = typing.get_origin(tp) or tp
    try:
        return _LIST_ORIGINS.get(origin)
    except TypeError:  # unhashable annotation objects
        return None


def is_mapping(tp: Any) -> bool:
    origin = typing.get_origin(tp) or tp
    return origin in _MAPPING_ORIGINS


def is_choice(tp: Any) -> bool:
    """True for draccus choice registries and their registered subclasses."""
    if not isinstance(tp, type):
        return False
    try:
        return issubclass(tp, draccus.ChoiceType)
    except TypeError:
        return False


def is_dataclass_type(tp: Any) -> bool:
    origin = typing.get_origin(tp) or tp
    return isinstance(origin, type) and dataclasses.is_dataclass(origin)


def is_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, enum.Enum)


# Types this package decodes itself; any other type with a draccus decoder is a "codec".
_BUILTIN_SCALARS = (bool, int, float, str, bytes)


def codec_for(tp: Any):
    """The decoding function registered with `draccus.decode.register` for `tp`, or None."""
    if not isinstance(tp, type) or tp in _BUILTIN_SCALARS:
        return None
    found = draccus.decode.dispatch(tp)
    return None if found is None else found.func


def choice_name(cls: type) -> str | None:
    """The `type:` name `cls` is registered under, or None for an unregistered base."""
    try:
        return cls.get_choice_name(cls)
    except (ValueError, KeyError):
        return None


def _defining_globals(cls: type) -> dict[str, Any] | None:
    """The globals of the module whose code defined `cls`, from a function in its body.

    `typing.get_type_hints` looks names up in `sys.modules[cls.__module__]`, which is the wrong
    module when a script runs under another `__main__` (`python -m cProfile -m lm.main...`,
    `runpy`): the class says `__main__`, but `__main__` is the profiler. A method written in the
    class body still carries its real module's globals."""
    for klass in cls.__mro__:
        for attr in vars(klass).values():
            fn = getattr(attr, "fget", None) or getattr(attr, "__func__", None) or attr
            if (
                inspect.isfunction(fn)
                and fn.__qualname__.startswith(klass.__qualname__ + ".")
                and fn.__code__.co_filename != "<string>"  # not generated (dataclass __init__)
            ):
                return fn.__globals__
    return None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except NameError as e:
        namespace = _defining_globals(cls)
        if namespace is not None:
            try:
                return typing.get_type_hints(cls, globalns=namespace)
            except NameError:
                pass
        raise TypeError(
            f"cannot resolve the field annotations of {cls.__qualname__}: {e}. Define config "
            "classes at module level, or avoid string annotations naming local classes."
        ) from e


def field_types(tp: Any) -> dict[str, Any]:
    """Resolved annotation of every init field of the dataclass type `tp` (generics applied)."""
    origin = typing.get_origin(tp) or tp
    hints = _hints(origin)
    type_map = {}
    if origin is not tp:
        type_map = dict(
            zip(getattr(origin, "__parameters__", ()), typing.get_args(tp), strict=False)
        )
    out = {}
    for f in dataclasses.fields(origin):
        if not f.init:
            continue
        ftype = hints.get(f.name, f.type)
        if isinstance(ftype, typing.TypeVar) and ftype in type_map:
            ftype = type_map[ftype]
        out[f.name] = ftype
    return out


def has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


# ----------------------------------------------------------------------------------------------
# Plain-word descriptions for messages.

_SCALAR_WORDS: dict[Any, tuple[str, str]] = {
    bool: ("a boolean (true or false)", "booleans"),
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    str: ("a string", "strings"),
    bytes: ("a string", "strings"),
    NoneType: ("null", "nulls"),
    datetime.timedelta: ("a duration (like 15m, 1h30m, 90s, 500ms)", "durations"),
    jmp.Policy: ("a mixed-precision policy (like p=f32,c=bfloat16)", "mixed-precision policies"),
    pathlib.Path: ("a path", "paths"),
}


def describe(tp: Any) -> str:
    """`tp` in plain words with an article: "an integer or a list of integers"."""
    return _words(strip(tp))[0]


def _words(tp: Any) -> tuple[str, str]:
    if tp is Any or tp is object:
        return "any value", "values"
    if tp in _SCALAR_WORDS:
        return _SCALAR_WORDS[tp]
    if is_union(tp):
        members = union_members(tp)
        parts = [_words(m) for m in members if m is not NoneType]
        singular = " or ".join(p[0] for p in parts)
        plural = " or ".join(p[1] for p in parts)
        if NoneType in members:
            singular += " or null"
        return singular, plural
    if is_literal(tp):
        options = ", ".join(show_value(a) for a in typing.get_args(tp))
        return f"one of {options}", f"values among {options}"
    if is_enum(tp):
        options = ", ".join(m.name for m in tp)
        return f"one of {options}", f"values among {options}"
    kind = list_kind(tp)
    if kind is not None:
        args = typing.get_args(tp)
        if kind is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            inner = ", ".join(_words(strip(a))[0] for a in args)
            return f"a list of {len(args)} items ({inner})", f"lists of {len(args)} items"
        inner = _words(strip(args[0]))[1] if args else "values"
        return f"a list of {inner}", f"lists of {inner}"
    if is_mapping(tp):
        args = typing.get_args(tp)
        if len(args) == 2:
            k, v = (_words(strip(a))[1] for a in args)
            return f"a mapping from {k} to {v}", f"mappings from {k} to {v}"
        return "a mapping", "mappings"
    if is_choice(tp) and choice_name(tp) is None:
        return f"a {tp.__name__} mapping", f"{tp.__name__} mappings"
    if is_dataclass_type(tp):
        name = (typing.get_origin(tp) or tp).__name__
        return f"a {name} mapping", f"{name} mappings"
    name = getattr(tp, "__name__", str(tp))
    return f"a {name}", f"{name} values"


def type_name(tp: Any) -> str:
    """`tp` written the way Python spells it, for --help: `int | list[int]`."""
    tp = strip(tp)
    if tp is NoneType:
        return "None"
    if tp is Any:
        return "Any"
    if is_union(tp):
        return " | ".join(type_name(m) for m in union_members(tp))
    if is_literal(tp):
        return "Literal[" + ", ".join(repr(a) for a in typing.get_args(tp)) + "]"
    origin = typing.get_origin(tp)
    if origin is not None:
        args = ", ".join("..." if a is Ellipsis else type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp)


def kind_of(value: Any) -> str:
    """The YAML kind of a raw value: "a string", "a list", ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def show_value(value: Any, limit: int = 80) -> str:
    """A short YAML-flavoured rendering of a raw value for messages."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = repr(value)
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(show_value(v, limit) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{k}: {show_value(v, limit)}" for k, v in value.items()) + "}"
    else:
        text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text
