"""`--help`: the field tree of a config class with types, defaults and field docstrings."""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import typing
from typing import Any

from lm.config import typeinfo as ti
from lm.config.encoding import to_data

_INDENT = "  "
_MAX_DEPTH = 8


def format_help(cls: type, prog: str | None = None) -> str:
    """The `--help` text for the config class `cls`."""
    prog = prog or "python -m <entry point>"
    lines = [
        f"usage: {prog} [--config_path PATH] [--FIELD.PATH VALUE ...] [--help]",
        "",
        "  --config_path PATH    YAML run config (local path or URL: gs://, memory://, file://)",
        "  --a.b VALUE           set field a.b; VALUE is YAML (10, 3e-4, [1,2], null, {type: x})",
        "",
        f"{cls.__name__} fields (YAML keys), with types and defaults:",
    ]
    doc = _class_doc(cls)
    if doc:
        lines.insert(5, textwrap.fill(doc, 96, initial_indent="", subsequent_indent="") + "\n")
    if ti.is_dataclass_type(cls):
        default = _default_instance(cls)
        _fields(cls, default, 0, lines, set())
    return "\n".join(lines)


def _class_doc(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    if doc.startswith(cls.__name__ + "("):  # dataclass's generated signature, not prose
        return ""
    return doc.split("\n\n", 1)[0].replace("\n", " ")


def _default_instance(cls: type) -> Any:
    try:
        return cls()
    except Exception:  # noqa: BLE001 - required fields or a failing default: show types only
        return None


def _fields(cls: type, instance: Any, depth: int, lines: list[str], seen: set[type]) -> None:
    if depth >= _MAX_DEPTH or cls in seen:
        return
    seen = seen | {cls}
    types = ti.field_types(cls)
    docs = attribute_docs(typing.get_origin(cls) or cls)
    pad = _INDENT * (depth + 1)
    for f in dataclasses.fields(typing.get_origin(cls) or cls):
        if not f.init:
            continue
        tp = ti.strip(types[f.name])
        value = getattr(instance, f.name, None) if instance is not None else None
        known_value = instance is not None
        header = f"{pad}{f.name}: {ti.type_name(tp)}"
        nested = member = None
        if ti.codec_for(tp) is not None:
            header += f" = {_show_default(value, tp)}" if known_value else ""
        elif ti.is_choice(tp):
            nested, extra = _choice_target(tp, value if known_value else None)
            header += extra
        elif ti.is_dataclass_type(tp):
            nested = tp
        elif (member := _union_member_of(tp, value if known_value else None)) is not None:
            # `data: LMDatasetConfig | LMMixtureDatasetConfig`: the default's own fields
            nested = type(value)
            header += f"  (default: {type(value).__name__}, fields below)"
            if ti.is_choice(member):
                header += _choice_target(member, value)[1]
        elif not ti.has_default(f):
            header += "  (required)"
        elif known_value:
            header += f" = {_show_default(value, tp)}"
        lines.append(header)
        if f.name in docs:
            width = max(40, 100 - len(pad) - 4)
            lines.extend(
                textwrap.wrap(
                    docs[f.name], width, initial_indent=pad + "    ", subsequent_indent=pad + "    "
                )
            )
        if nested is not None:
            sub_instance = value if known_value and value is not None else None
            if isinstance(sub_instance, nested) and (ti.is_choice(tp) or ti.is_choice(member)):
                name = ti.choice_name(type(sub_instance))
                if name is not None:
                    lines.append(f"{pad}{_INDENT}type: {name}")
            _fields(nested, sub_instance, depth + 1, lines, seen)


def _union_member_of(tp: Any, value: Any) -> type | None:
    """For a union field whose default is a config dataclass, the member it belongs to."""
    if value is None or not ti.is_union(tp) or not dataclasses.is_dataclass(value):
        return None
    for member in ti.union_members(tp):
        if ti.is_dataclass_type(member) and isinstance(value, typing.get_origin(member) or member):
            return member
    return None


def _choice_target(tp: type, value: Any) -> tuple[type | None, str]:
    """The class whose fields to list under a choice field, and a note on the choices."""
    try:
        names = sorted(tp.get_known_choices())
    except Exception:  # noqa: BLE001 - plugin discovery failed; still show the field
        names = []
    default = tp.default_choice_name() if ti.choice_name(tp) is None else ti.choice_name(tp)
    note = f"  (type: {' | '.join(names)}"
    note += f"; default {default})" if default else ")"
    if value is not None and dataclasses.is_dataclass(value):
        return type(value), note
    if default is not None and default in names:
        return tp.get_choice_class(default), note
    return None, note


def _show_default(value: Any, tp: Any) -> str:
    try:
        encoded = to_data(value, tp)
    except Exception:  # noqa: BLE001 - an unencodable default is shown with repr
        return repr(value)
    return ti.show_value(encoded, limit=70)


@functools.cache
def attribute_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (a string literal right under a field) of `cls` and its bases."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        out.update(_own_attribute_docs(klass))
    return out


def _own_attribute_docs(klass: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(klass))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return {}
    if not tree.body or not isinstance(tree.body[0], ast.ClassDef):
        return {}
    body = tree.body[0].body
    out = {}
    for stmt, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            out[stmt.target.id] = " ".join(inspect.cleandoc(nxt.value.value).split())
    return out
