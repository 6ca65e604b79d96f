"""Configs back to data: YAML text, saved files, and flat dicts for hyperparameter logging.

The encoder is type-directed like the decoder (draccus 0.11.6's own encoder mis-types
2-element `tuple[X, ...]` values and drops `type:` there), and delegates leaf types to
codecs registered with `draccus.encode` (durations, jmp policies, paths, and any other
area adds). Choice classes carry their `type`. For every config,
`decode(type(cfg), yaml.safe_load(to_yaml(cfg))) == cfg`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import typing
from collections.abc import Mapping
from typing import Any

import draccus
import fsspec
import yaml

from lm.config import typeinfo as ti
from lm.config.decoding import CHOICE_KEY


def to_data(cfg: Any, tp: Any = None) -> Any:
    """The plain data (dicts, lists, scalars) that `cfg` encodes to, as annotated by `tp`."""
    return _encode(cfg, ti.strip(tp) if tp is not None else Any)


def _encode(value: Any, tp: Any) -> Any:
    tp = ti.strip(tp)
    if ti.is_union(tp):
        tp = _member_for(value, ti.union_members(tp))
    if isinstance(value, enum.Enum):  # before the scalar check: StrEnum/IntEnum are str/int
        return value.name
    if value is None or isinstance(value, bool | int | float | str):
        return value
    codec = draccus.encode.dispatch(type(value))
    if codec is not None and not isinstance(value, list | tuple | set | frozenset | Mapping):
        return draccus.encode(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _encode_dataclass(value, tp)
    if isinstance(value, Mapping):
        args = typing.get_args(tp) if ti.is_mapping(tp) else ()
        key_tp, value_tp = args if len(args) == 2 else (Any, Any)
        return {_encode(k, key_tp): _encode(v, value_tp) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        args = typing.get_args(tp) if ti.list_kind(tp) is not None else ()
        if len(args) == 2 and args[1] is Ellipsis or len(args) == 1:
            item_types = [args[0]] * len(value)
        elif args and len(args) == len(value):
            item_types = list(args)
        else:
            item_types = [Any] * len(value)
        return [_encode(v, t) for v, t in zip(value, item_types, strict=True)]
    return draccus.encode(value)


def _encode_dataclass(value: Any, tp: Any) -> dict:
    cls = type(value)
    out: dict[str, Any] = {}
    if ti.is_choice(cls):
        name = ti.choice_name(cls)
        if name is None:
            raise ValueError(
                f"cannot encode {cls.__name__}: it is not registered in its choice registry"
            )
        out[CHOICE_KEY] = name
    annotation = tp if ti.is_dataclass_type(tp) and (typing.get_origin(tp) or tp) is cls else cls
    types = ti.field_types(annotation)
    for name, ftype in types.items():
        out[name] = _encode(getattr(value, name), ftype)
    return out


def _member_for(value: Any, members: tuple[Any, ...]) -> Any:
    """The union member `value` was decoded as (exact scalar types first)."""
    for member in members:
        if ti.is_literal(member) and value in typing.get_args(member):
            return member
    exact = {bool: bool, int: int, float: float, str: str, type(None): type(None)}
    if type(value) in exact and exact[type(value)] in members:
        return type(value)
    for member in members:
        origin = ti.list_kind(member) or (dict if ti.is_mapping(member) else None)
        check = origin if origin is not None else member
        if isinstance(check, type) and isinstance(value, check):
            return member
    return Any


class _Dumper(yaml.SafeDumper):
    """Block-style YAML whose lists of scalars stay on one line, like hand-written configs."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    scalars = all(isinstance(v, str | int | float | bool) or v is None for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=scalars)


_Dumper.add_representer(list, _represent_list)


def to_yaml(cfg: Any) -> str:
    """`cfg` as a YAML document (field order kept)."""
    return yaml.dump(
        to_data(cfg, type(cfg)),
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        width=100,
    )


def save_config(cfg: Any, path_or_url: str | os.PathLike) -> None:
    """Write `to_yaml(cfg)` to a local path or any fsspec URL (parent folders are created)."""
    url = os.fspath(path_or_url)
    with fsspec.open(url, "w", encoding="utf-8", auto_mkdir=True) as f:
        f.write(to_yaml(cfg))


Scalar = str | int | float | bool | None


def to_flat_dict(cfg: Any) -> dict[str, Scalar]:
    """`cfg` as `{dotted.path: scalar}` for tracker hyperparameters.

    Nested mappings become dotted keys (`trainer.num_train_steps`), choice classes include
    their `type` (`model.type: llama`), lists of mappings are indexed
    (`trainer.tracker[0].type`), and lists of scalars become one JSON string
    (`data.tags: '["a", "b"]'`), so every value is a scalar every tracker accepts.
    """
    out: dict[str, Scalar] = {}
    _flatten(to_data(cfg, type(cfg)), "", out)
    return out


def _flatten(value: Any, path: str, out: dict[str, Scalar]) -> None:
    if isinstance(value, dict):
        if not value and path:
            out[path] = "{}"
        for key, sub in value.items():
            _flatten(sub, f"{path}.{key}" if path else str(key), out)
    elif isinstance(value, list):
        if any(isinstance(v, dict | list) for v in value):
            for i, sub in enumerate(value):
                _flatten(sub, f"{path}[{i}]", out)
        else:
            out[path] = json.dumps(value)
    else:
        out[path] = value
