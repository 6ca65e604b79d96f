"""The hints the config decoder adds to its messages: what an unknown key most likely
meant (a misspelling, another framework's name, a field one level down, a field of another
`type:`, a field of another section), which strings a union of enums and literals accepts,
how to write a string that YAML reads as a boolean or number, and a note when a check
judged a default the user did not write."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from collections.abc import Mapping
from typing import Any

from lm.config import typeinfo as ti
from lm.config.errors import first_key, join_path


def spelled_options(members) -> list[str]:
    """The strings that the enum and literal members of a union accept (for did-you-mean)."""
    options: list[str] = []
    for member in members:
        if ti.is_enum(member):
            options += list(member.__members__)
            options += [str(m.value) for m in member if isinstance(m.value, str)]
        elif ti.is_literal(member):
            options += [o for o in typing.get_args(member) if isinstance(o, str)]
    return list(dict.fromkeys(options))


def quote_hint(value: Any, text: str | None, flag: str | None = None) -> str:
    """The end of the message for a boolean or number given where a string was expected:
    quote it; with the word YAML 1.1 read as a boolean (`off`, `yes`), say so. `flag`: the
    dotted path, when the value came from the command line (where the shell's quotes go
    around YAML's)."""
    written = text if text is not None else ti.show_value(value)
    note = ""
    if isinstance(value, bool) and text is not None and text.lower() not in ("true", "false"):
        note = f"; YAML 1.1 reads `{text}` as {ti.show_value(value)}"
    if flag is not None:
        shell = f"--{flag} \"'{written}'\""
        return f"{note}; quote it to make it a string, inside the shell's quotes: {shell}"
    return f"{note}; quote it to make it a string: '{written}'"


def default_note(cls: type, given: Mapping[str, Any], field: str, message: str = "") -> str:
    """Says so when a `__post_init__` problem is about a field the config did not set: the
    value is the dataclass's default (e.g. Llama's 32 KV heads after `--model.type llama`
    switched the model of a GPT-2 config), not something the user wrote. Not for a field
    that is required (`is required: ...`): not setting it is the problem."""
    name = first_key(field) if field else ""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    if not name or name in given or name not in names or message.startswith("is required"):
        return ""
    return f" ({cls.__name__}'s default: this config does not set `{name}`)"


def _nested_field(key: str, cls: type) -> str | None:
    """A hint for a key that names a field one level down (`rope_theta`: `rope.theta`)."""
    for f in dataclasses.fields(cls):
        if not key.startswith(f.name + "_"):
            continue
        rest = key[len(f.name) + 1 :]
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            continue
        if dataclasses.is_dataclass(default) and rest in {
            g.name for g in dataclasses.fields(default)
        }:
            return f"did you mean `{f.name}.{rest}`? (write `{f.name}: {{{rest}: ...}}`)"
    return None


def _sibling_choices_with(key: str, cls: type) -> str | None:
    """For a choice class, the other choices of its registry that have field `key`
    (`sliding_window` on `type: llama`: "it is a field of `type: mistral`"), else None."""
    if not (ti.is_choice(cls) and hasattr(cls, "get_known_choices")):
        return None
    owners = sorted(
        name
        for name, other in cls.get_known_choices().items()
        if other is not cls
        and dataclasses.is_dataclass(other)
        and key in {g.name for g in dataclasses.fields(other)}
    )
    if not owners:
        return None
    return "it is a field of " + ", ".join(f"`type: {name}`" for name in owners)


# Names other frameworks (PyTorch, HF Trainer, MaxText) give fields lm spells otherwise:
# offered as a did-you-mean where the section has the field (difflib finds none of them).
_ALIASES = {
    "lr": "learning_rate",
    "wd": "weight_decay",
    "eps": "epsilon",
    "betas": "beta1",
    "max_steps": "num_train_steps",
    "steps": "num_train_steps",
    "batch_size": "train_batch_size",
    "global_batch_size": "train_batch_size",
    "grad_clip": "max_grad_norm",
    "clip_grad_norm": "max_grad_norm",
    "warmup_steps": "warmup",
    "n_layer": "num_layers",
    "n_layers": "num_layers",
    "n_head": "num_heads",
    "n_embd": "hidden_dim",
    "d_model": "hidden_dim",
    "hidden_size": "hidden_dim",
    "max_seq_len": "seq_len",
    "max_position_embeddings": "seq_len",
    "seq_length": "seq_len",
    "num_attention_heads": "num_heads",
    "num_hidden_layers": "num_layers",
    "intermediate_size": "intermediate_dim",
}


# How deep below the root config the search for a field written in the wrong section goes
# (`trainer.checkpointer.save_interval` is 3 deep), and how many places it names.
_SEARCH_DEPTH = 4
_MAX_PLACES = 3


def _sections(tp: Any) -> list[type]:
    """The dataclasses a field of annotation `tp` holds as a mapping: the dataclass itself,
    every choice of a choice registry (or the registered choice itself), each such member of
    a union. Lists and mappings of them are left out (their paths need an index or a key)."""
    tp = ti.strip(tp)
    if ti.is_union(tp):
        return [c for m in ti.union_members(tp) for c in _sections(m)]
    if ti.is_choice(tp) and ti.choice_name(tp) is None:
        try:  # all of them: `model:` has no default `type:`, and a field may be another type's
            return [c for c in tp.get_known_choices().values() if ti.is_dataclass_type(c)]
        except Exception:  # noqa: BLE001 - a broken registry just has no fields to offer
            return []
    if ti.is_dataclass_type(tp):
        return [typing.get_origin(tp) or tp]
    return []


@functools.cache
def _field_places(root: Any) -> dict[str, tuple[str, ...]]:
    """Every field name of the config tree under `root`, with the dotted paths (relative to
    the root) that have it, shallowest first."""
    places: dict[str, list[str]] = {}
    level: list[tuple[type, str]] = [(c, "") for c in _sections(root)]
    seen: set[tuple[type, str]] = set()
    for _ in range(_SEARCH_DEPTH):
        below: list[tuple[type, str]] = []
        for cls, path in level:
            if (cls, path) in seen:
                continue
            seen.add((cls, path))
            try:
                types = ti.field_types(cls)
            except TypeError:  # annotations that do not resolve: nothing to offer
                continue
            for name, tp in types.items():
                sub = join_path(path, name)
                if sub not in places.setdefault(name, []):
                    places[name].append(sub)
                below += [(c, sub) for c in _sections(tp)]
        level = below
    return {name: tuple(paths) for name, paths in places.items()}


def _other_places(key: str, root: tuple[Any, str], path: str) -> list[str]:
    """The full YAML paths where the root config has a field named `key`, other than `path`
    (where it was written)."""
    tp, root_path = root
    try:
        found = _field_places(tp).get(key, ())
    except TypeError:  # an unhashable annotation
        return []
    paths = [f"{root_path}.{p}" if root_path else p for p in found]
    return [p for p in paths if p != path][:_MAX_PLACES]


def unknown_key(
    key: Any,
    owner: str,
    valid: list[str],
    cls: type | None = None,
    root: tuple[Any, str] | None = None,
    path: str = "",
) -> str:
    """The message for `key`, which `owner` (at YAML path `path`) has no field for: the
    field one level down or another `type:` has, else a close spelling in the section, else
    the place the root config (annotation, YAML path) does have a field of that name, else
    the section's fields."""
    nested = _nested_field(str(key), cls) if cls is not None else None
    if nested is not None:
        return f"unknown field `{key}` for {owner}; {nested}"
    elsewhere = _sibling_choices_with(str(key), cls) if cls is not None else None
    owner = f"{owner} ({elsewhere})" if elsewhere else owner
    close = difflib.get_close_matches(str(key), valid, n=3, cutoff=0.6) if valid else []
    alias = _ALIASES.get(str(key).lower())
    if alias in valid and alias not in close:
        close = [alias, *close][:3]
    if close:
        options = " or ".join(f"`{c}`" for c in close)
        return f"unknown field `{key}` for {owner}; did you mean {options}?"
    places = _other_places(str(key), root, path) if root is not None and not elsewhere else []
    if places:
        top = " the top level:" if all("." not in p and "[" not in p for p in places) else ""
        options = " or ".join(f"`{p}`" for p in places)
        return f"unknown field `{key}` for {owner}; it belongs at{top} {options}"
    return f"unknown field `{key}` for {owner}; valid fields: {', '.join(sorted(valid))}"
