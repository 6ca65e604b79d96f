"""The hints the config decoder adds to its messages: what an unknown key most likely
meant (a misspelling, another framework's name, a field one level down, a field of another
`type:`), which strings a union of enums and literals accepts, and a note when a check
judged a default the user did not write."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping
from typing import Any

from lm.config import typeinfo as ti
from lm.config.errors import first_key


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


def default_note(cls: type, given: Mapping[str, Any], field: str) -> str:
    """Says so when a `__post_init__` problem is about a field the config did not set: the
    value is the dataclass's default (e.g. Llama's 32 KV heads after `--model.type llama`
    switched the model of a GPT-2 config), not something the user wrote."""
    name = first_key(field) if field else ""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    if not name or name in given or name not in names:
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


def unknown_key(key: Any, owner: str, valid: list[str], cls: type | None = None) -> str:
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
    return f"unknown field `{key}` for {owner}; valid fields: {', '.join(sorted(valid))}"
