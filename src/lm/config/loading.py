"""YAML loading: `!include`, `base:` inheritance, and where every value was written.

* `key: !include other.yaml` replaces the value of `key` with the parsed contents of
  `other.yaml`, resolved relative to the directory of the *including* file (local paths and
  any fsspec URL: `memory://`, `file://`, `gs://`). Includes nest (each relative to its own
  file); cycles are an error. A document whose top level is itself an `!include` is an
  error: put the include under a key.
* `<<: !include other.yaml` merges an included mapping into the surrounding one (YAML merge
  key semantics: keys written next to it win).
* A top-level `base: parent.yaml` (or a list of files) in a run config is loaded first (its
  own `base:` and includes too), deep-merged in order, and the file's own keys are
  deep-merged over it: mappings merge key by key, lists and scalars replace.
* Duplicate keys are an error; YAML syntax errors name `file:line:column`.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
from typing import Any

import fsspec
import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from lm.config.errors import ConfigError, ConfigProblem, closest_name, index_path, join_path

INCLUDE_TAG = "!include"
BASE_KEY = "base"
_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclasses.dataclass
class LoadedYaml:
    """A loaded document and, for each YAML path in it, the `file:line` it came from."""

    data: Any
    locations: dict[str, str]


def load_yaml(path_or_url: str | os.PathLike) -> dict:
    """Load a run config (resolving `!include` and `base:`); raises `ConfigError`."""
    return load_document(path_or_url).data


def load_document(path_or_url: str | os.PathLike, *, via: str | None = None) -> LoadedYaml:
    """`load_yaml` plus the source location of every value.

    `via` is where the document was named (`--config_path`), for problems with the file."""
    url = os.fspath(path_or_url)
    loader = _Loader()
    data = loader.load_run_config(url, "", via)
    if loader.problems:
        raise ConfigError(loader.problems, source=url)
    return LoadedYaml(data, loader.locations)


def resolve_relative(including: str, target: str) -> str:
    """`target` resolved against the directory of the file `including` (URL-aware)."""
    if "://" in target or os.path.isabs(target):
        return target
    if "://" in including:
        protocol, rest = including.split("://", 1)
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(rest), target))
        return f"{protocol}://{joined}"
    return os.path.normpath(os.path.join(os.path.dirname(including), target))


def deep_merge(base: Any, over: Any) -> Any:
    """`over` merged onto `base`: mappings merge recursively, anything else replaces."""
    if not (isinstance(base, dict) and isinstance(over, dict)):
        return over
    out = dict(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if key in out else value
    return out


def _merge_locations(
    base: Any, over: Any, base_locs: dict[str, str], over_locs: dict[str, str], path: str
) -> dict[str, str]:
    """Locations for `deep_merge(base, over)` at `path`."""
    if not (isinstance(base, dict) and isinstance(over, dict)):
        return {p: loc for p, loc in over_locs.items() if under(p, path)}
    out = {p: loc for p, loc in base_locs.items() if under(p, path)}
    for key, value in over.items():
        sub = join_path(path, key)
        for p in [p for p in out if under(p, sub)]:
            del out[p]
        if key in base:
            out.update(_merge_locations(base[key], value, base_locs, over_locs, sub))
        else:
            out.update({p: loc for p, loc in over_locs.items() if under(p, sub)})
    if path in over_locs:
        out[path] = over_locs[path]
    return out


def under(p: str, path: str) -> bool:
    """Whether YAML path `p` is `path` or below it."""
    if not path:
        return True
    return p == path or p.startswith(path + ".") or p.startswith(path + "[")


def _file_key(url: str) -> tuple[str, str]:
    fs, path = fsspec.core.url_to_fs(url)
    return type(fs).__name__, path


def _unopenable(url: str, error: Exception) -> str:
    """Why fsspec cannot open `url`: a filesystem package that is not installed (and what to
    install: `gs://` needs gcsfs, `lm[gcs]`), an unknown protocol, or `error` itself."""
    from lm.fs import missing_filesystem  # lm.fs imports lm.config.errors: not at the top

    return f"cannot read {url}: {missing_filesystem(url) or error}"


class _Loader:
    def __init__(self):
        self.problems: list[ConfigProblem] = []
        self.locations: dict[str, str] = {}
        self.stack: list[tuple[tuple[str, str], str]] = []  # (file key, url) being loaded
        self.constructor = yaml.SafeLoader("")  # only used to build scalars from nodes

    def fail(self, path: str, message: str, location: str | None = None) -> None:
        self.problems.append(ConfigProblem(path, message, location))

    # Files ------------------------------------------------------------------------------------

    def _enter(self, url: str, path: str, via: str | None) -> bool:
        try:
            key = _file_key(url)
        except (ImportError, ValueError) as e:  # a filesystem package missing, unknown protocol
            self.fail(path, _unopenable(url, e), via)
            return False
        chain = [u for k, u in self.stack]
        if any(k == key for k, _ in self.stack):
            cycle = " -> ".join([*chain[[k for k, _ in self.stack].index(key) :], url])
            self.fail(path, f"include cycle: {cycle}", via)
            return False
        self.stack.append((key, url))
        return True

    def _compose(self, url: str, path: str, via: str | None) -> tuple[bool, Node | None]:
        try:
            with fsspec.open(url, "r", encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            message = f"file not found: {url}"
            if via is not None:
                message += f" (referenced at {via})"
            self.fail(path, message)
            return False, None
        except (OSError, ImportError) as e:
            self.fail(path, _unopenable(url, e), via)
            return False, None
        try:
            return True, yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            where = f"{url}:{mark.line + 1}:{mark.column + 1}" if mark else url
            context = f" ({e.context})" if e.context else ""
            hint = "; YAML indents with spaces, not tabs" if "'\\t'" in str(e.problem) else ""
            self.fail(path, f"{where}: YAML syntax error: {e.problem}{context}{hint}")
            return False, None
        except yaml.YAMLError as e:
            self.fail(path, f"{url}: YAML error: {e}")
            return False, None

    def _document(self, url: str, path: str, via: str | None) -> tuple[bool, Any]:
        ok, root = self._compose(url, path, via)
        if not ok:
            return False, None
        if root is None:
            return True, None
        if root.tag == INCLUDE_TAG:
            self.fail(
                path,
                f"`!include` is not supported at the top level of {url}; put it under a key "
                f"(e.g. `data: !include {root.value}`)",
                self._loc(url, root),
            )
            return False, None
        return True, self.walk(root, path, url)

    def load_run_config(self, url: str, path: str, via: str | None = None) -> Any:
        """A run config or a `base:` file: a mapping, with its own `base:` applied."""
        if not self._enter(url, path, via):
            return {}
        try:
            ok, data = self._document(url, path, via)
            if not ok:
                return {}
            if data is None:
                return {}
            if not isinstance(data, dict):
                self.fail(path, f"the top level of {url} must be a mapping of fields, not {data!r}")
                return {}
            if BASE_KEY not in data:
                return data
            return self._apply_bases(data, url, path)
        finally:
            self.stack.pop()

    def _apply_bases(self, data: dict, url: str, path: str) -> dict:
        bases = data.pop(BASE_KEY)
        base_path = join_path(path, BASE_KEY)
        base_loc = self.locations.pop(base_path, None)
        for p in [p for p in self.locations if under(p, base_path)]:
            del self.locations[p]
        if isinstance(bases, str):
            bases = [bases]
        if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            self.fail(
                base_path, f"`base:` must be a file or a list of files, got {bases!r}", base_loc
            )
            return data
        own_locations = self.locations  # a document's own walk fills a fresh dict
        merged: dict = {}
        merged_locs: dict[str, str] = {}
        for base in bases:
            target = resolve_relative(url, base)
            saved = self.locations
            self.locations = {}
            base_data = self.load_run_config(target, path, via=base_loc or url)
            base_locs, self.locations = self.locations, saved
            merged_locs = _merge_locations(merged, base_data, merged_locs, base_locs, path)
            merged = deep_merge(merged, base_data)
        self.locations = _merge_locations(merged, data, merged_locs, own_locations, path)
        return deep_merge(merged, data)

    def _include(self, node: Node, path: str, url: str) -> Any:
        via = self._loc(url, node)
        if not isinstance(node, ScalarNode) or not node.value:
            self.fail(path, "`!include` needs a file name, like `!include data.yaml`", via)
            return None
        target = resolve_relative(url, node.value)
        if not self._enter(target, path, via):
            return None
        try:
            return self._document(target, path, via)[1]
        finally:
            self.stack.pop()

    # Nodes ------------------------------------------------------------------------------------

    def _loc(self, url: str, node: Node) -> str:
        return f"{url}:{node.start_mark.line + 1}"

    def walk(self, node: Node, path: str, url: str) -> Any:
        if node.tag == INCLUDE_TAG:
            return self._include(node, path, url)
        if isinstance(node, MappingNode):
            return self._mapping(node, path, url)
        if isinstance(node, SequenceNode):
            out = []
            for i, item in enumerate(node.value):
                sub = index_path(path, i)
                self.locations[sub] = self._loc(url, item)
                out.append(self.walk(item, sub, url))
            return out
        try:
            return self.constructor.construct_object(node, deep=True)
        except ConstructorError as e:
            hint = ""
            if node.tag.startswith("!") and node.tag != INCLUDE_TAG:
                close = closest_name(node.tag, [INCLUDE_TAG])
                hint = (
                    f"; did you mean {close}?"
                    if close
                    else f" (the only tag a config file may use is {INCLUDE_TAG})"
                )
            self.fail(path, f"{e.problem}{hint}", self._loc(url, node))
            return None

    def _mapping(self, node: MappingNode, path: str, url: str) -> dict:
        out: dict = {}
        first_seen: dict[Any, int] = {}
        merged: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merged = {**self._merge_source(value_node, path, url), **merged}
                continue
            key = self.walk(key_node, path, url)
            try:
                hash(key)
            except TypeError:
                self.fail(
                    path, f"mapping keys must be scalars, got {key!r}", self._loc(url, key_node)
                )
                continue
            line = key_node.start_mark.line + 1
            sub = join_path(path, key)
            if key in first_seen:
                self.fail(
                    sub,
                    f"duplicate key `{key}` (first written at line {first_seen[key]})",
                    f"{url}:{line}",
                )
                continue
            first_seen[key] = line
            self.locations[sub] = f"{url}:{line}"
            out[key] = self.walk(value_node, sub, url)
        return {**merged, **out}

    def _merge_source(self, node: Node, path: str, url: str) -> dict:
        nodes = node.value if isinstance(node, SequenceNode) else [node]
        out: dict = {}
        for item in reversed(nodes):  # earlier sources win, as in YAML merge keys
            value = self.walk(item, path, url)
            if not isinstance(value, dict):
                self.fail(path, f"`<<` merges mappings, got {value!r}", self._loc(url, item))
                continue
            out.update(value)
        return out
