"""`--help`: the field tree of a config class with types, defaults and field docstrings.

Every field a YAML can set is listed, whichever `type:` a config file or `--model.type` picks:

- a choice field (`type:`) lists the fields of its current (or default) choice under
  `type: <name>`, then each other registered choice under its own `type: <name>` line with
  only what differs from the most similar choice listed before it (`type: lion  (as type:
  adam, without epsilon, nesterov; and:)`, then lion's own fields and other defaults);
- a union of configs (`data: LMDatasetConfig | LMMixtureDatasetConfig`) lists the default's
  fields, then each other config of the union under `or <Class>`, the same way;
- a config that is optional or sits in a list or a mapping (`quantization:
  QuantizationConfig | None`, `train_batch_size: int | list[ScheduleStep]`, `configs:
  dict[str, LMDatasetSourceConfig]`) lists its fields below the field, those it shares with
  a similar config listed before as a note (`(as LMDatasetConfig under data, without ...)`).

A class is listed once (`(fields as type: wandb under trainer.tracker)` elsewhere), and a
deprecated field (its docstring starts with "Deprecated") shows only its own line.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import linecache
import textwrap
import typing
from collections.abc import Callable
from typing import Any

from lm.config import typeinfo as ti
from lm.config.encoding import to_data
from lm.config.errors import join_path

_INDENT = "  "
_MAX_DEPTH = 12
_WIDTH = 100
_NO_DEFAULT = object()  # the value of a field without a default

# A listed config's fields: name -> (type as written, default as shown).
_Specs = dict[str, tuple[str, str]]


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
        _Tree(lines).fields(cls, _default_instance(cls), 0, "", frozenset())
    return "\n".join(lines)


def _class_doc(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    if doc.startswith(cls.__name__ + "("):  # dataclass's generated signature, not prose
        return ""
    return doc.split("\n\n", 1)[0].replace("\n", " ")


def _default_instance(cls: type) -> Any:
    try:
        return (typing.get_origin(cls) or cls)()
    except Exception:  # noqa: BLE001 - required fields or a failing default: the field defaults
        return None


class _Tree:
    """Appends the field tree to `lines`, remembering each config class it listed."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        self.listed: dict[type, tuple[str, _Specs]] = {}  # class -> (where, its specs)

    def fields(
        self,
        cls: Any,
        instance: Any,
        depth: int,
        path: str,
        seen: frozenset,
        only: set[str] | None = None,
    ) -> None:
        """The lines of `cls`'s fields (those in `only` when given) at `depth`."""
        origin = typing.get_origin(cls) or cls
        if depth >= _MAX_DEPTH or origin in seen:
            return
        seen = seen | {origin}
        types = ti.field_types(cls)
        docs = attribute_docs(origin)
        values = _values(origin, instance)
        for name, value in values.items():
            if only is None or name in only:
                tp = ti.strip(types[name])
                doc = docs.get(name, "")
                self.field(name, tp, value, doc, depth, join_path(path, name), seen)

    def field(
        self, name: str, tp: Any, value: Any, doc: str, depth: int, path: str, seen: frozenset
    ) -> None:
        pad = _INDENT * (depth + 1)
        header = f"{pad}{name}: {ti.type_name(tp)}"
        config = value if dataclasses.is_dataclass(value) else None
        below: Callable[[], None] | None = None
        if ti.codec_for(tp) is not None:
            header += _default_text(value, tp)
        elif doc.startswith("Deprecated"):
            # only the field's own line: its replacement lists the fields
            header += "" if config is not None else _default_text(value, tp)
        elif ti.is_choice(tp):
            header += _choice_note(tp)
            below = functools.partial(self.choice, tp, config, depth + 1, path, seen)
        elif ti.is_dataclass_type(tp):
            below = functools.partial(self.block, tp, config, depth + 1, path, seen)
        else:
            members = _config_members(tp)
            default = next(
                (m for m, how in members if not how and isinstance(config, _origin(m))), None
            )
            if default is not None:
                # the default's class first: its fields are listed with the default's values
                members.sort(key=lambda item: item[0] is not default)
                header += f"  (default: {type(value).__name__}, fields below)"
            else:
                header += _default_text(value, tp)
                plain = [_member_words(m, how) for m, how in members if not ti.is_choice(m)]
                if plain:
                    header += f"  (fields of {' | '.join(plain)} below)"
                config = None
            header += "".join(_choice_note(m) for m, _ in members if ti.is_choice(m))
            if members:
                below = functools.partial(self.union, members, config, depth + 1, path, seen)
        self.lines.append(header)
        if doc:
            self.lines.extend(_wrap(doc, pad + "    "))
        if below is not None:
            below()

    def choice(self, tp: type, value: Any, depth: int, path: str, seen: frozenset) -> None:
        """The fields of each registered choice of `tp`: the current (or default) one under
        `type: <name>`, then each other one as far as it differs from those before it."""
        choices = _known_choices(tp)
        current = ti.choice_name(type(value)) if value is not None else None
        if current not in choices:
            default = _default_choice(tp)
            current = default if default in choices else next(iter(choices), None)
            value = None
        if current is None:
            return
        pad = _INDENT * (depth + 1)
        before: list[tuple[str, _Specs]] = []  # (label, specs) of the choices listed
        for name in [current, *(n for n in choices if n != current)]:
            cls = choices[name]
            where = f"type: {name} under {path}" if path else f"type: {name}"
            if name == current:  # `type:` beside its fields, as a YAML writes it
                specs = self.block(cls, value, depth, path, seen, f"{pad}type: {name}", [], where)
            else:
                specs = self.block(
                    cls, None, depth + 1, path, seen, f"{pad}type: {name}", before, where
                )
            before.append((f"type: {name}", specs))

    def union(
        self,
        members: list[tuple[Any, str]],
        value: Any,
        depth: int,
        path: str,
        seen: frozenset,
    ) -> None:
        """The fields of each config class of a union: the first (the default's) as they are,
        each other under `or <Class>` as far as it differs from those before it."""
        pad = _INDENT * (depth + 1)
        before: list[tuple[str, _Specs]] = []
        for i, (member, how) in enumerate(members):
            if ti.is_choice(member):
                if i:
                    self.lines.append(f"{pad}or {_member_words(member, how)}")
                self.choice(member, value if i == 0 else None, depth + bool(i), path, seen)
                continue
            label = _origin(member).__name__
            if i == 0:
                specs = self.block(member, value, depth, path, seen)
            else:
                heading = f"{pad}or {_member_words(member, how)}"
                specs = self.block(member, None, depth + 1, path, seen, heading, before)
            before.append((label, specs))

    def block(
        self,
        cls: Any,
        instance: Any,
        depth: int,
        path: str,
        seen: frozenset,
        heading: str | None = None,
        similar: list[tuple[str, _Specs]] | None = None,
        where: str | None = None,
    ) -> _Specs:
        """The fields of the config class `cls` at `depth`, after the line `heading` if
        given; returns their specs.

        Only the fields that differ from the most similar config in `similar` (the siblings
        listed before: other choices, other union members) are listed, with a note saying
        so; with `similar` None, from a config listed anywhere before that shares at least
        half of the fields (and 3). A class listed before is not listed again."""
        origin = _origin(cls)
        if instance is None:
            instance = _default_instance(origin)
        specs = _specs(cls, instance)
        note, only = "", None
        if origin in self.listed:
            note, only = f"  (fields as {self.listed[origin][0]})", set()
        else:
            reference = _most_similar(specs, similar, self.listed.values())
            if reference is not None:
                note, only = _relation(specs, *reference)
            self.listed[origin] = (where or f"{origin.__name__} under {path}", specs)
        if heading is not None:
            indent = heading[: len(heading) - len(heading.lstrip())]
            self.lines.extend(_wrap(heading.strip() + note, indent, hang="    "))
        elif note:
            self.lines.extend(_wrap(note.strip(), _INDENT * (depth + 1), hang="    "))
        if only != set():
            self.fields(cls, instance, depth, path, seen, only)
        return specs


def _origin(tp: Any) -> type:
    return typing.get_origin(tp) or tp


def _values(cls: type, instance: Any) -> dict[str, Any]:
    """Each init field's value in `instance`, else the field's default (or `_NO_DEFAULT`)."""
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if instance is not None:
            out[f.name] = getattr(instance, f.name, _NO_DEFAULT)
        elif f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            try:
                out[f.name] = f.default_factory()
            except Exception:  # noqa: BLE001 - a failing factory: show the type only
                out[f.name] = _NO_DEFAULT
        else:
            out[f.name] = _NO_DEFAULT
    return out


def _specs(cls: Any, instance: Any) -> _Specs:
    types = ti.field_types(cls)
    return {
        name: (ti.type_name(ti.strip(types[name])), _default_text(value, ti.strip(types[name])))
        for name, value in _values(_origin(cls), instance).items()
    }


def _most_similar(
    specs: _Specs, similar: list[tuple[str, _Specs]] | None, listed
) -> tuple[str, _Specs] | None:
    """The (label, specs) of the config sharing the most fields (same type and default)
    with `specs`: among `similar`, any that shares one; else among `listed` (where, specs),
    one that shares at least half of them, and 3."""
    if similar is None:
        candidates, least = list(listed), max(3, (len(specs) + 1) // 2)
    else:
        candidates, least = similar, 1
    best, best_shared = None, 0
    for label, other in candidates:
        shared = sum(other.get(name) == spec for name, spec in specs.items())
        if shared > best_shared:
            best, best_shared = (label, other), shared
    return best if best_shared >= least else None


def _relation(specs: _Specs, label: str, other: _Specs) -> tuple[str, set[str]]:
    """The note for a config listed as far as it differs from `other`, and the fields to
    list: those `other` lacks or has with another type or default."""
    shared = [name for name, spec in specs.items() if other.get(name) == spec]
    missing = [name for name in other if name not in specs]
    rest = {name for name in specs if name not in shared}
    if len(shared) <= len(missing):
        text = f"shares {', '.join(shared)} with {label}"
    else:
        text = f"as {label}" + (f", without {', '.join(missing)}" if missing else "")
    if rest:
        text += "; and:"
    return f"  ({text})", rest


def _config_members(tp: Any) -> list[tuple[Any, str]]:
    """The config classes in a union, list or mapping type, each with how it appears there:
    "" (itself), "entry" (a list's entries) or "value" (a mapping's values)."""
    out: list[tuple[Any, str]] = []
    for member in ti.union_members(tp) if ti.is_union(tp) else (tp,):
        how = ""
        args = [a for a in typing.get_args(member) if a is not Ellipsis]
        if ti.list_kind(member) is not None and len(args) == 1:
            member, how = ti.strip(args[0]), "entry"
        elif ti.is_mapping(member) and len(args) == 2:
            member, how = ti.strip(args[1]), "value"
        if (
            ti.is_dataclass_type(member)
            and ti.codec_for(_origin(member)) is None
            and all(_origin(member) is not _origin(m) for m, _ in out)
        ):
            out.append((member, how))
    return out


def _member_words(member: Any, how: str) -> str:
    name = _origin(member).__name__
    return f"each {name} {how}" if how else name


def _known_choices(tp: type) -> dict[str, type]:
    """The choices a field of type `tp` takes, by name: every registered one for a registry,
    those below it for a registered class (`rope: DefaultRotaryEmbeddingsConfig`)."""
    try:
        choices = {name: tp.get_choice_class(name) for name in sorted(tp.get_known_choices())}
    except Exception:  # noqa: BLE001 - plugin discovery failed; still show the field
        return {}
    return {name: cls for name, cls in choices.items() if _is_subclass(cls, tp)}


def _is_subclass(cls: Any, tp: type) -> bool:
    try:
        return issubclass(cls, _origin(tp))
    except TypeError:
        return False


def _default_choice(tp: type) -> str | None:
    name = ti.choice_name(tp)
    return tp.default_choice_name() if name is None else name


def _choice_note(tp: type) -> str:
    """`  (type: a | b; default a)`: the choices of the registry `tp`."""
    default = _default_choice(tp)
    note = f"  (type: {' | '.join(_known_choices(tp))}"
    return note + (f"; default {default})" if default else ")")


def _default_text(value: Any, tp: Any) -> str:
    return "  (required)" if value is _NO_DEFAULT else f" = {_show_default(value, tp)}"


def _show_default(value: Any, tp: Any) -> str:
    try:
        encoded = to_data(value, tp)
    except Exception:  # noqa: BLE001 - an unencodable default is shown with repr
        return repr(value)
    return ti.show_value(encoded, limit=70)


def _wrap(text: str, indent: str, hang: str = "") -> list[str]:
    """`text` wrapped below `_WIDTH` (less the indent), its later lines indented by `hang`
    more than its first."""
    width = max(40, _WIDTH - len(indent))
    return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent + hang)


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
        filename = inspect.getsourcefile(klass)
    except TypeError:  # a built-in class
        return {}
    if filename:
        found = _module_attribute_docs(filename).get(klass.__qualname__)
        if found is not None:
            return found
    try:  # a class the module's own source does not show (defined in a function, say)
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
    except (OSError, TypeError, SyntaxError):
        return {}
    if not tree.body or not isinstance(tree.body[0], ast.ClassDef):
        return {}
    return _class_body_docs(tree.body[0])


@functools.cache
def _module_attribute_docs(filename: str) -> dict[str, dict[str, str]]:
    """The attribute docstrings of every class in a source file, by qualified name: the
    file is parsed once (`inspect.getsource` parses the whole module for each class)."""
    try:
        tree = ast.parse("".join(linecache.getlines(filename)))
    except (SyntaxError, ValueError):
        return {}
    out: dict[str, dict[str, str]] = {}

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for stmt in body:
            if isinstance(stmt, ast.ClassDef):
                out[prefix + stmt.name] = _class_body_docs(stmt)
                visit(stmt.body, f"{prefix}{stmt.name}.")

    visit(tree.body, "")
    return out


def _class_body_docs(node: ast.ClassDef) -> dict[str, str]:
    out = {}
    body = node.body
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
