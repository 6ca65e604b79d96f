"""Configs back to data: YAML text, saved files, and flat dicts for hyperparameter logging.

Encoding goes through `draccus.encode`, so codecs registered with draccus (durations, jmp
policies, paths, and any another area adds) apply, and choice classes carry their `type`.
`decode(type(cfg), yaml.safe_load(to_yaml(cfg))) == cfg` holds for every config.
"""

from __future__ import annotations

import json
import os
from typing import Any

import draccus
import fsspec
import yaml


def to_data(cfg: Any) -> Any:
    """The plain data (dicts, lists, scalars) that `cfg` encodes to."""
    return draccus.encode(cfg)


class _Dumper(yaml.SafeDumper):
    """Block-style YAML whose lists of scalars stay on one line, like hand-written configs."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    scalars = all(isinstance(v, str | int | float | bool) or v is None for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=scalars)


_Dumper.add_representer(list, _represent_list)


def to_yaml(cfg: Any) -> str:
    """`cfg` as a YAML document (field order kept)."""
    return yaml.dump(
        to_data(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100
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
    _flatten(to_data(cfg), "", out)
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
