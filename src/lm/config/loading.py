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
* Duplicate keys are an error; YAML syntax errors name `file:line:column`, a file that is
  not UTF-8 text names the first bad byte, and an alias inside its own anchor's value
  (`tags: &a [*a]`) is an error at its path.
* Besides the locations, the loader keeps the text of every number and boolean as it was
  written (`0123`, `12:30`, `off`), by YAML path: a `str` field takes a number as written
  (YAML 1.1 reads `0123` as 83), and a message can say what YAML made of a word.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import re
from typing import Any

import fsspec
import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from lm.config.errors import ConfigError, ConfigProblem, closest_name, index_path, join_path

INCLUDE_TAG = "!include"
BASE_KEY = "base"
_MERGE_TAG = "tag:yaml.org,2002:merge"


# The tags of the scalars whose text a `str` field (or a message) may need: YAML 1.1 reads
# `0123`, `12:30`, `1_000`, `1.50` and `off` as other values than the characters written.
_NUMBER_TAGS = frozenset(
    {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool"}
)


@dataclasses.dataclass
class LoadedYaml:
    """A loaded document and, for each YAML path in it, the `file:line` it came from; `texts`:
    for each number and boolean in it, its text as written (`0123` for the value 83)."""

    data: Any
    locations: dict[str, str]
    texts: dict[str, str] = dataclasses.field(default_factory=dict)


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
    return LoadedYaml(data, loader.locations, loader.texts)


def scalar_texts(text: str, path: str = "") -> dict[str, str]:
    """The text of each number and boolean in the YAML value `text` (a command-line override's
    value), by YAML path below `path`: `{"a.b": "007"}` for `{b: 007}` at `a`.

    Raises `yaml.YAMLError` for text that is not YAML, and `ConfigError` for an alias inside its
    own anchor's value (`&a [*a]`), which no config value can be."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is None:
        return {}
    loader = _Loader()
    loader.walk_texts(node, path)
    if loader.problems:
        raise ConfigError(loader.problems)
    return loader.texts


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


def _not_utf8(url: str, raw: bytes, error: UnicodeDecodeError) -> str:
    """Why the bytes of `url` are no config text: the first byte that is not UTF-8, where."""
    offset = error.start
    line = raw.count(b"\n", 0, offset) + 1
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        kind = "it is UTF-16 text (it starts with a UTF-16 byte order mark)"
    elif b"\0" in raw[:8192]:
        kind = "it is a binary file, not text"
    else:
        kind = f"byte 0x{raw[offset]:02x} at offset {offset} (line {line}) is not UTF-8"
    return f"cannot read {url} as a YAML file: {kind}; config files are UTF-8 text"


def _anchor_name(node: Node) -> str | None:
    """The anchor (`&a`) written at the start of `node`, if the source text is at hand."""
    mark = node.start_mark
    if not mark.buffer:
        return None
    found = re.match(r"&([^\s,\[\]{}]+)", mark.buffer[mark.pointer : mark.pointer + 200])
    return found.group(1) if found else None


class _Loader:
    def __init__(self):
        self.problems: list[ConfigProblem] = []
        self.locations: dict[str, str] = {}
        self.texts: dict[str, str] = {}  # the text of each number and boolean, by YAML path
        self.active: set[int] = set()  # the nodes being walked: an alias to one is a cycle
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
            with fsspec.open(url, "rb") as f:
                raw = f.read()
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
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.fail(path, _not_utf8(url, raw, e), via)
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
        for table in (self.locations, self.texts):
            for p in [p for p in table if under(p, base_path)]:
                del table[p]
        if isinstance(bases, str):
            bases = [bases]
        if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            self.fail(
                base_path, f"`base:` must be a file or a list of files, got {bases!r}", base_loc
            )
            return data
        # a document's own walk fills fresh tables
        own_locations, own_texts = self.locations, self.texts
        merged: dict = {}
        merged_locs: dict[str, str] = {}
        merged_texts: dict[str, str] = {}
        for base in bases:
            target = resolve_relative(url, base)
            saved = self.locations, self.texts
            self.locations, self.texts = {}, {}
            base_data = self.load_run_config(target, path, via=base_loc or url)
            base_locs, base_texts = self.locations, self.texts
            self.locations, self.texts = saved
            merged_locs = _merge_locations(merged, base_data, merged_locs, base_locs, path)
            merged_texts = _merge_locations(merged, base_data, merged_texts, base_texts, path)
            merged = deep_merge(merged, base_data)
        self.locations = _merge_locations(merged, data, merged_locs, own_locations, path)
        self.texts = _merge_locations(merged, data, merged_texts, own_texts, path)
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
            data = self._document(target, path, via)[1]
        finally:
            self.stack.pop()
        if isinstance(data, dict) and _names_files(data.get(BASE_KEY)):
            self._misplaced_base(data, path, target)
        return data

    def _misplaced_base(self, data: dict, path: str, url: str) -> None:
        """Report (and drop) a `base:` at the top of an included file: only a run file's own
        `base:` is applied, so the decoder would call it an unknown field, or miss the
        `type:` the base file has."""
        bases = data.pop(BASE_KEY)
        base_path = join_path(path, BASE_KEY)
        where = self.locations.get(base_path)
        for table in (self.locations, self.texts):
            for p in [p for p in table if under(p, base_path)]:
                del table[p]
        hint = (
            f"; to build on {bases} here, merge it in with `<<: !include {bases}` (keys written "
            "beside it win)"
            if isinstance(bases, str)
            else ""
        )
        self.fail(
            base_path,
            f"`{BASE_KEY}:` only works at the top of a run file (the one --config_path names); "
            f"{url} is read with `!include`, where it does not apply{hint}",
            where,
        )

    # Nodes ------------------------------------------------------------------------------------

    def _loc(self, url: str, node: Node) -> str:
        return f"{url}:{node.start_mark.line + 1}"

    def _recursive_alias(self, node: Node, path: str, url: str | None) -> None:
        anchor = _anchor_name(node)
        alias = f"`*{anchor}`" if anchor else "an alias"
        named = f" as `&{anchor}`" if anchor else ""
        where = self.locations.get(path) or (self._loc(url, node) if url is not None else None)
        self.fail(
            path,
            f"recursive YAML alias: {alias} stands for the value anchored{named} at line "
            f"{node.start_mark.line + 1}, which contains it; a config value cannot contain itself",
            where,
        )

    def walk(self, node: Node, path: str, url: str, *, key: bool = False) -> Any:
        if node.tag == INCLUDE_TAG:
            return self._include(node, path, url)
        if isinstance(node, MappingNode | SequenceNode):
            if id(node) in self.active:
                self._recursive_alias(node, path, url)
                return None
            self.active.add(id(node))
            try:
                if isinstance(node, MappingNode):
                    return self._mapping(node, path, url)
                out = []
                for i, item in enumerate(node.value):
                    sub = index_path(path, i)
                    self.locations[sub] = self._loc(url, item)
                    out.append(self.walk(item, sub, url))
                return out
            finally:
                self.active.discard(id(node))
        if not key and node.tag in _NUMBER_TAGS:
            self.texts[path] = node.value
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
            key = self.walk(key_node, path, url, key=True)
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

    def walk_texts(self, node: Node, path: str) -> None:
        """Record the text of each number and boolean under `node` (a value already loaded
        with `yaml.safe_load`), reporting an alias inside its own anchor's value."""
        if isinstance(node, ScalarNode):
            if node.tag in _NUMBER_TAGS:
                self.texts[path] = node.value
            return
        if id(node) in self.active:
            self._recursive_alias(node, path, None)
            return
        self.active.add(id(node))
        if isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                self.walk_texts(item, index_path(path, i))
        elif isinstance(node, MappingNode):
            # merged mappings first: keys written beside `<<:` win, as in the loaded value
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    merges = isinstance(value_node, SequenceNode)
                    for source in reversed(value_node.value if merges else [value_node]):
                        self.walk_texts(source, path)
            for key_node, value_node in node.value:
                if key_node.tag != _MERGE_TAG and isinstance(key_node, ScalarNode):
                    key = self.constructor.construct_object(key_node, deep=True)
                    self.walk_texts(value_node, join_path(path, key))
        self.active.discard(id(node))


def _names_files(value: Any) -> bool:
    """Whether `value` is what a `base:` holds: a file name or a list of them."""
    if isinstance(value, str):
        return bool(value)
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)
