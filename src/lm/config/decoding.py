"""The type-directed decoder: raw YAML data -> typed config, collecting every problem.

Unions are decided by the *shape* of the YAML value (a list goes to a list member, a mapping
to a dataclass or mapping member, a bool to `bool`, an int to `int` before `float`, a string
to `str` before string-parsing codecs), never by member order alone, so `["a", "b"]` for
`str | list[str]` is a list and `"model"` for `str | tuple[str, ...]` is a string.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import typing
import weakref
from collections.abc import Mapping
from typing import Any

from lm.config import typeinfo as ti
from lm.config.errors import (
    ConfigError,
    ConfigProblem,
    FieldError,
    did_you_mean,
    first_key,
    index_path,
    is_int,
    join_path,
)
from lm.config.hints import default_note, quote_hint, spelled_options, unknown_key

CHOICE_KEY = "type"


class _Invalid:
    """Marker for a value that failed to decode (its problems are already recorded)."""

    def __repr__(self) -> str:
        return "<invalid>"


INVALID: Any = _Invalid()


def decode(
    cls: Any,
    data: Any,
    *,
    path: str = "",
    locations: Mapping[str, str] | None = None,
    texts: Mapping[str, str] | None = None,
):
    """Decode raw YAML data into `cls`, raising `ConfigError` listing every problem.

    Args:
        cls: the target annotation, usually a config dataclass.
        data: plain data as `yaml.safe_load` or `load_yaml` returns it.
        path: YAML path of `data` inside a larger document, prefixed to reported paths.
        locations: optional map from YAML path to where it was written (`file:line`), used to
            annotate problems.
        texts: optional map from YAML path to a number's or boolean's text as written
            (`load_document(...).texts`): a `str` field takes `0123` as "0123", not "83".
    """
    decoder = Decoder(locations or {}, texts, root=(cls, path))
    value = decoder.run(cls, data, path)
    if decoder.problems:
        raise ConfigError(decoder.problems)
    return value


# The fields a decoded config wrote for each dataclass it built (`fields_set`), by object id;
# an entry goes with its object (a weak reference's callback).
_FIELDS_SET: dict[int, tuple[weakref.ref, frozenset[str]]] = {}


def _record_fields_set(value: Any, names) -> None:
    key = id(value)
    try:
        ref = weakref.ref(value, lambda _, key=key: _FIELDS_SET.pop(key, None))
    except TypeError:  # a dataclass with __slots__ and no __weakref__
        return
    _FIELDS_SET[key] = (ref, frozenset(names))


def fields_set(value: Any) -> frozenset[str] | None:
    """The fields the YAML or command line wrote for `value`, a dataclass that `lm.config`
    decoded; None for one built otherwise (in Python, or by `dataclasses.replace`), where only
    a comparison with the class defaults can tell. `use_hf_model_config` keeps exactly the
    runtime fields a user wrote, also one written as its default (`embed_pdrop: 0.0` over a
    checkpoint's 0.1)."""
    entry = _FIELDS_SET.get(id(value))
    if entry is None or entry[0]() is not value:
        return None
    return entry[1]


class Decoder:
    """Decodes one document, collecting its problems.

    Args:
        locations: YAML path -> where it was written (`file:line`, `--flag value`).
        texts: YAML path -> the text of a number or boolean as written (`0123`, `off`).
        root: the annotation the document decodes to and its YAML path: the tree an unknown
            key's did-you-mean searches for the field's right place.
    """

    def __init__(
        self,
        locations: Mapping[str, str],
        texts: Mapping[str, str] | None = None,
        *,
        root: tuple[Any, str] | None = None,
    ):
        self.locations = locations
        self.texts = texts or {}
        self.root = root
        self.problems: list[ConfigProblem] = []
        # Problems that only say "wrong shape here": a union may try another member instead.
        self.shape_mismatches: set[int] = set()

    def fail(self, path: str, message: str) -> Any:
        self.problems.append(ConfigProblem(path, message, self._location(path)))
        return INVALID

    def _location(self, path: str) -> str | None:
        """Where `path` was written; for a key only an override below it wrote (the unknown
        `trainr` of `--trainr.num_train_steps 2`), where that override was; for a value inside
        one written whole (`--optimizer.skip_bad_steps "{histroy_len: 3}"`), where that was."""
        if path in self.locations:
            return self.locations[path]
        if not path:
            return None
        below = sorted(k for k in self.locations if k.startswith((path + ".", path + "[")))
        return self.locations[below[0]] if below else self.written_at(path)

    def written_at(self, path: str) -> str | None:
        """Where `path` was written, else where its closest parent was (a `__post_init__`
        problem inside `--trainer.jax_config '{...}'` is at the flag that set the mapping)."""
        while path:
            if path in self.locations:
                return self.locations[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return None

    def mismatch(self, tp: Any, value: Any, path: str, hint: str = "") -> Any:
        got = ti.show_value(value)
        kind = ti.kind_of(value)
        shown = got if got == "null" else f"{got} ({kind})"
        self.fail(path, f"expected {ti.describe(tp)}, got {shown}{hint}")
        self.shape_mismatches.add(id(self.problems[-1]))
        return INVALID

    def trial(self, tp: Any, value: Any, path: str) -> tuple[Any, Decoder]:
        sub = Decoder(self.locations, self.texts, root=self.root)
        out = sub.run(tp, value, path)
        return out, sub

    def only_shape_mismatch(self, path: str) -> bool:
        return all(id(p) in self.shape_mismatches and p.path == path for p in self.problems)

    # -----------------------------------------------------------------------------------------

    def run(self, tp: Any, value: Any, path: str) -> Any:
        tp = ti.strip(tp)
        if isinstance(value, str) and (variable := _environment_variable(value)) is not None:
            return self.fail(
                path,
                f"got {value!r}, which names the environment variable {variable}: config "
                "values are not expanded, so it would be taken literally (a directory named "
                f"{variable}). Write the value out, or pass it on the command line, where the "
                f'shell expands it: --{path} "{value}"',
            )
        if tp is Any or tp is object:
            return value
        if ti.is_union(tp):
            return self.union(tp, value, path)
        if tp is ti.NoneType:
            return None if value is None else self.mismatch(tp, value, path)
        if ti.is_literal(tp):
            return self.literal(tp, value, path)
        codec = ti.codec_for(tp)
        if codec is not None:
            return self.codec(codec, tp, value, path)
        if ti.is_choice(tp):
            return self.choice(tp, value, path)
        if ti.is_dataclass_type(tp):
            return self.dataclass(tp, value, path)
        if ti.is_enum(tp):
            return self.enum(tp, value, path)
        if tp is bool:
            return self.bool_(value, path)
        if tp is int:
            return self.int_(value, path)
        if tp is float:
            return self.float_(value, path)
        if tp is str:
            return self.str_(value, path)
        if ti.list_kind(tp) is not None:
            return self.sequence(tp, value, path)
        if ti.is_mapping(tp):
            return self.mapping(tp, value, path)
        raise TypeError(
            f"lm.config cannot decode the annotation {ti.type_name(tp)} (at {path or 'top level'}); "
            "register a codec with draccus.decode.register"
        )

    # Scalars ---------------------------------------------------------------------------------

    def bool_(self, value: Any, path: str) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        return self.mismatch(bool, value, path)

    def int_(self, value: Any, path: str) -> Any:
        if isinstance(value, bool):
            return self.mismatch(int, value, path)
        if isinstance(value, int):
            return value
        number = value
        if isinstance(value, str):
            text = value.strip()
            try:
                return int(text)
            except ValueError:
                try:
                    number = float(text)
                except ValueError:
                    return self.mismatch(int, value, path)
        if isinstance(number, float):
            if math.isfinite(number) and number.is_integer():
                return int(number)
            return self.mismatch(int, value, path, " with a fractional part")
        return self.mismatch(int, value, path)

    def float_(self, value: Any, path: str) -> Any:
        if isinstance(value, bool):
            return self.mismatch(float, value, path)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        return self.mismatch(float, value, path)

    def str_(self, value: Any, path: str) -> Any:
        if isinstance(value, str):
            return value
        text = self.texts.get(path)
        if isinstance(value, int | float) and not isinstance(value, bool):
            # Numbers-as-names (`run_id: 2024`, `--trainer.id 007`) are taken verbatim: as
            # written where the text is known (YAML 1.1 reads `0123` as 83, `12:30` as 750).
            if text is not None:
                return text
            if is_int(value):
                return str(value)
        return self.mismatch(str, value, path, self._quote_hint(value, path))

    def _quote_hint(self, value: Any, path: str) -> str:
        """For a boolean or a number where a string was expected: quote it (on the command line
        inside the shell's quotes), and what YAML read a word such as `off` as."""
        if not isinstance(value, bool | float):
            return ""
        where = self.written_at(path) or ""
        flag = path if where.startswith("--") else None
        return quote_hint(value, self.texts.get(path), flag)

    def literal(self, tp: Any, value: Any, path: str) -> Any:
        for option in typing.get_args(tp):
            if type(option) is type(value) and option == value:
                return option
        # A string from the command line may spell an int/bool literal.
        for option in typing.get_args(tp):
            if isinstance(value, str) and not isinstance(option, str):
                if str(option).lower() == value.strip().lower():
                    return option
        options = [o for o in typing.get_args(tp) if isinstance(o, str)]
        return self.mismatch(tp, value, path, did_you_mean(value, options))

    def enum(self, tp: type[enum.Enum], value: Any, path: str) -> Any:
        for member in tp:
            if type(member.value) is type(value) and member.value == value:
                return member
        if isinstance(value, str) and value in tp.__members__:
            return tp.__members__[value]
        names = list(tp.__members__) + [str(m.value) for m in tp if isinstance(m.value, str)]
        return self.mismatch(tp, value, path, did_you_mean(value, names))

    def codec(self, fn, tp: Any, value: Any, path: str) -> Any:
        if value is None:
            return self.mismatch(tp, value, path)
        try:
            try:
                return fn(value, ())
            except TypeError as e:
                # draccus also accepts one-argument decoders.
                if "positional argument" not in str(e):
                    raise
                return fn(value)
        except Exception as e:  # noqa: BLE001 - any codec failure is a user-facing problem
            message = str(e) or f"cannot decode {ti.show_value(value)} as {ti.describe(tp)}"
            return self.fail(path, message)

    # Containers ------------------------------------------------------------------------------

    def sequence(self, tp: Any, value: Any, path: str) -> Any:
        if not isinstance(value, list | tuple):
            return self.mismatch(tp, value, path)
        kind = ti.list_kind(tp)
        args = typing.get_args(tp)
        if kind is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                return self.fail(
                    path,
                    f"expected {ti.describe(tp)}, got {len(value)} items: {ti.show_value(value)}",
                )
            item_types = args
        else:
            item_types = [args[0] if args else Any] * len(value)
        before = len(self.problems)
        items = [
            self.run(t, v, index_path(path, i))
            for i, (t, v) in enumerate(zip(item_types, value, strict=True))
        ]
        if len(self.problems) > before:
            return INVALID
        return kind(items)

    def mapping(self, tp: Any, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            return self.mismatch(tp, value, path)
        args = typing.get_args(tp)
        key_type, value_type = args if len(args) == 2 else (Any, Any)
        before = len(self.problems)
        out = {}
        for k, v in value.items():
            sub = join_path(path, k)
            # the texts at `sub` are the value's, not the key's
            texts, self.texts = self.texts, {}
            try:
                key = self.run(key_type, k, sub)
            finally:
                self.texts = texts
            out[key] = self.run(value_type, v, sub)
        if len(self.problems) > before:
            return INVALID
        return out

    # Dataclasses and choices -----------------------------------------------------------------

    def choice(self, tp: type, value: Any, path: str) -> Any:
        known = tp.get_known_choices()
        own_name = ti.choice_name(tp)
        if not isinstance(value, dict):
            hint = ""
            if isinstance(value, str) and value in known:
                hint = f"; to select that choice write `{CHOICE_KEY}: {value}` under the key"
            return self.mismatch(tp, value, path, hint)
        if CHOICE_KEY in value:
            name = value[CHOICE_KEY]
            type_path = join_path(path, CHOICE_KEY)
            if not isinstance(name, str) or name not in known:
                choices = ", ".join(sorted(known))
                return self.fail(
                    type_path,
                    f"unknown {tp.__name__} type {ti.show_value(name)}; known types: "
                    f"{choices}{did_you_mean(name, list(known))}",
                )
            cls = tp.get_choice_class(name)
            if not (isinstance(cls, type) and issubclass(cls, tp)):
                return self.fail(
                    type_path,
                    f"`{CHOICE_KEY}: {name}` ({cls.__name__}) is not allowed here; "
                    f"expected {tp.__name__} (`{CHOICE_KEY}: {own_name}`)",
                )
        elif own_name is not None:
            cls = tp
        else:
            default = tp.default_choice_name()
            if default is None:
                choices = ", ".join(sorted(known))
                return self.fail(
                    path, f"missing `{CHOICE_KEY}:` to select a {tp.__name__}; one of: {choices}"
                )
            if default not in known:
                choices = ", ".join(sorted(known))
                return self.fail(
                    path,
                    f"no `{CHOICE_KEY}:` given and the default {tp.__name__} type {default!r} "
                    f"is not registered; write `{CHOICE_KEY}:` with one of: {choices}",
                )
            cls = tp.get_choice_class(default)
        fields = {k: v for k, v in value.items() if k != CHOICE_KEY}
        return self.dataclass(cls, fields, path, extra_keys=(CHOICE_KEY,))

    def dataclass(self, tp: Any, value: Any, path: str, extra_keys: tuple[str, ...] = ()) -> Any:
        if not isinstance(value, dict):
            return self.mismatch(tp, value, path)
        cls = typing.get_origin(tp) or tp
        types = ti.field_types(tp)
        all_fields = {f.name: f for f in dataclasses.fields(cls)}
        before = len(self.problems)
        kwargs = {}
        for key, raw in value.items():
            sub = join_path(path, key)
            if key in types:
                kwargs[key] = self.run(types[key], raw, sub)
            elif key in all_fields:
                self.fail(sub, f"`{key}` of {cls.__name__} is computed and cannot be set")
            else:
                valid = [*types, *extra_keys]
                self.fail(sub, unknown_key(key, cls.__name__, valid, cls, self.root, sub))
        for name, f in all_fields.items():
            if f.init and name not in value and not ti.has_default(f):
                self.fail(
                    join_path(path, name),
                    f"missing required field `{name}` of {cls.__name__} "
                    f"(expected {ti.describe(types[name])})",
                )
        if len(self.problems) > before:
            self.check_others(cls, kwargs, path)
            return INVALID
        return self.construct(cls, kwargs, path)

    def check_others(self, cls: type, kwargs: dict[str, Any], path: str) -> None:
        """The `__post_init__` checks of a dataclass some of whose fields did not decode (or
        which has unknown keys), run with those fields at their defaults, so that one run
        reports a bad sub-section (say `model.rope`) and the section's other bad fields
        (`model.num_heads`) together.

        Only problems located at the fields that did decode are kept, and none whose message
        names a failed field: a check across fields would otherwise judge a default the user
        did not write. Nothing is checked when a failed field has no default."""
        failed = {key for key, v in kwargs.items() if v is INVALID}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if any(not ti.has_default(fields[name]) for name in failed):
            return
        start = len(self.problems)
        self.construct(cls, {k: v for k, v in kwargs.items() if k not in failed}, path)
        found, self.problems[start:] = self.problems[start:], []
        prefix = f"{path}." if path else ""
        for problem in found:
            field = first_key(problem.path[len(prefix) :])
            if (
                problem.path.startswith(prefix)
                and field
                and field not in failed
                and not any(re.search(rf"\b{name}\b", problem.message) for name in failed)
            ):
                self.problems.append(problem)

    def construct(self, cls: type, kwargs: dict[str, Any], path: str) -> Any:
        try:
            value = cls(**kwargs)
            _record_fields_set(value, kwargs)
            return value
        except ConfigError as e:
            for p in e.problems:
                sub = _nest(path, p.path)
                message = p.message + default_note(cls, kwargs, p.path, p.message)
                self.problems.append(ConfigProblem(sub, message, self.written_at(sub)))
            return INVALID
        except FieldError as e:
            sub = _nest(path, e.field)
            message = e.message + default_note(cls, kwargs, e.field, e.message)
            self.problems.append(ConfigProblem(sub, message, self.written_at(sub)))
            return INVALID
        except (ValueError, TypeError) as e:
            return self.fail(path, f"invalid {cls.__name__}: {e}")

    # Unions ----------------------------------------------------------------------------------

    def union(self, tp: Any, value: Any, path: str) -> Any:
        members = ti.union_members(tp)
        if value is None:
            return None if ti.NoneType in members else self.mismatch(tp, value, path)
        ranked = sorted(
            ((r, i, m) for i, m in enumerate(members) if (r := _rank(m, value)) is not None),
            key=lambda t: (t[0], t[1]),
        )
        candidates = [m for _, _, m in ranked]
        if isinstance(value, dict):
            candidates = _prefer_matching_keys(candidates, value)
        hint = did_you_mean(value, spelled_options(members))
        if not hint and str in members:
            hint = self._quote_hint(value, path)
        if not candidates:
            return self.mismatch(tp, value, path, hint)
        for member in candidates:
            out, sub = self.trial(member, value, path)
            if not sub.problems:
                return out
            if not sub.only_shape_mismatch(path):
                # The value had the right shape for this member but is wrong inside it:
                # those problems are the useful ones.
                self.problems.extend(sub.problems)
                return INVALID
        return self.mismatch(tp, value, path, hint)


def _rank(member: Any, value: Any) -> int | None:
    """How well `member` fits the shape of `value` (lower is better; None: not at all)."""
    if member is Any or member is object:
        return 9
    if ti.is_literal(member):
        return 0 if any(_literal_fits(o, value) for o in typing.get_args(member)) else None
    codec = ti.codec_for(member)
    if codec is not None:
        return 5 if not isinstance(value, list | tuple | dict) else 8
    if isinstance(value, bool):
        return 0 if member is bool else None
    if isinstance(value, int):
        return {int: 0, float: 1, str: 7}.get(member, 4 if ti.is_enum(member) else None)
    if isinstance(value, float):
        # `str` takes a number as written, where the text is known (else `str_` says quote it)
        return {float: 0, int: 1, str: 7}.get(member)
    if isinstance(value, str):
        if member is str:
            return 0
        if ti.is_enum(member):
            return 1
        return {bool: 6, int: 6, float: 7}.get(member)
    if isinstance(value, list | tuple):
        return 0 if ti.list_kind(member) is not None else None
    if isinstance(value, dict):
        if ti.is_choice(member) or ti.is_dataclass_type(member):
            return 0
        return 1 if ti.is_mapping(member) else None
    return None


def _literal_fits(option: Any, value: Any) -> bool:
    if type(option) is type(value):
        return option == value
    return isinstance(value, str) and str(option).lower() == value.strip().lower()


def _accepted_keys(member: Any, value: dict) -> int:
    """How many keys of `value` the dataclass `member` has fields for (choices: the chosen
    one; -1 for a choice whose `type:` the value does not name); a mapping takes them all."""
    keys = {k for k in value if isinstance(k, str)}
    if ti.is_choice(member):
        cls = member
        if ti.choice_name(member) is None or CHOICE_KEY in value:
            name = value.get(CHOICE_KEY, member.default_choice_name())
            if not _names_choice(member, name):
                return -1
            cls = member.get_choice_class(name)
        return len(keys & (set(ti.field_types(cls)) | {CHOICE_KEY}))
    if ti.is_dataclass_type(member):
        return len(keys & set(ti.field_types(member)))
    return len(keys)


def _prefer_matching_keys(candidates: list[Any], value: dict) -> list[Any]:
    """Mapping-shaped members, those that take more of the keys first (ties keep their
    order): one whose fields accept every key decodes it, and when none does, the problems
    reported are those of the member the mapping most looks like (a misspelt key of a
    mixture, not every mixture key as unknown to the single-source config)."""
    if CHOICE_KEY in value:
        named = [m for m in candidates if ti.is_choice(m) and _names_choice(m, value[CHOICE_KEY])]
        if named:
            return named + [m for m in candidates if m not in named]
    counts = {id(m): _accepted_keys(m, value) for m in candidates}
    return sorted(candidates, key=lambda m: -counts[id(m)])


def _names_choice(member: type, name: Any) -> bool:
    try:
        known = member.get_known_choices()
    except Exception:  # noqa: BLE001 - a broken plugin registry just doesn't match
        return False
    return isinstance(name, str) and name in known and issubclass(known[name], member)


_VARIABLE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}|^\$[A-Za-z_][A-Za-z0-9_]*(?=/|$)")


def _environment_variable(value: str) -> str | None:
    """The environment variable `value` names and that nothing expanded (`${OUT}/logs`,
    `$HOME/data`), or None."""
    if "$" not in value:
        return None
    found = _VARIABLE.search(value)
    return found.group() if found else None


def _nest(path: str, sub: str) -> str:
    if not sub:
        return path
    if not path:
        return sub
    return f"{path}{sub}" if sub.startswith("[") else f"{path}.{sub}"
