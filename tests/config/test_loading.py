"""YAML loading: `!include` (CFG-04), `base:` inheritance, duplicate keys, syntax errors."""

import sys
import uuid

import fsspec
import pytest

from lm.config import ConfigError, load_document, load_yaml, resolve_relative


@pytest.fixture
def mem():
    """A fresh memory:// folder; returns a writer `put(name, text) -> url`."""
    root = f"memory://cfg-{uuid.uuid4().hex}"

    def put(name: str, text: str) -> str:
        url = f"{root}/{name}"
        with fsspec.open(url, "w") as f:
            f.write(text)
        return url

    put.root = root
    yield put
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def error_of(url) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_yaml(url)
    return info.value


DATA_YAML = """\
train_urls:
    - "gs://my_bucket/openwebtext-sharded/openwebtext_train.{1..128}-of-128.jsonl.gz"
validation_urls:
    -  "gs://my_bucket/openwebtext-sharded/openwebtext_val.{1..8}-of-8.jsonl.gz"
cache_dir: "gs://my_bucket/tokenized/openwebtext_2/"
"""


def test_include_expands_like_the_reference_example(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "my-run.yaml").write_text(
        "data: !include data.yaml\ntrainer:\n    num_train_steps: 1000000\n"
    )
    (tmp_path / "configs" / "data.yaml").write_text(DATA_YAML)
    (tmp_path / "data.yaml").write_text("wrong: file\n")  # the CWD copy must not be used
    monkeypatch.chdir(tmp_path)
    assert load_yaml("configs/my-run.yaml") == {
        "data": {
            "train_urls": [
                "gs://my_bucket/openwebtext-sharded/openwebtext_train.{1..128}-of-128.jsonl.gz"
            ],
            "validation_urls": [
                "gs://my_bucket/openwebtext-sharded/openwebtext_val.{1..8}-of-8.jsonl.gz"
            ],
            "cache_dir": "gs://my_bucket/tokenized/openwebtext_2/",
        },
        "trainer": {"num_train_steps": 1000000},
    }


def test_nested_includes_resolve_relative_to_each_file(mem):
    run = mem("runs/run.yaml", "data: !include ../data/mix.yaml\nseed: 1\n")
    mem("data/mix.yaml", "components:\n  web: !include sources/web.yaml\n  code: {x: 2}\n")
    mem("data/sources/web.yaml", "urls: [a, b]\n")
    assert load_yaml(run) == {
        "data": {"components": {"web": {"urls": ["a", "b"]}, "code": {"x": 2}}},
        "seed": 1,
    }


def test_include_inside_a_list_and_file_url(tmp_path):
    (tmp_path / "a.yaml").write_text("sources:\n  - !include b.yaml\n  - {name: c}\n")
    (tmp_path / "b.yaml").write_text("name: b\n")
    assert load_yaml(f"file://{tmp_path}/a.yaml") == {"sources": [{"name": "b"}, {"name": "c"}]}


def test_merge_key_with_include(mem):
    run = mem("run.yaml", "model:\n  <<: !include model.yaml\n  num_layers: 2\n")
    mem("model.yaml", "type: gpt2\nnum_layers: 12\nhidden_dim: 64\n")
    assert load_yaml(run) == {"model": {"type": "gpt2", "num_layers": 2, "hidden_dim": 64}}


def test_missing_include_names_resolved_path_and_including_line(mem):
    run = mem("dir/run.yaml", "trainer: {}\ndata: !include ../nope/data.yaml\n")
    err = error_of(run)
    assert err.source == run
    (problem,) = err.problems
    assert problem.path == "data"
    assert problem.message == (f"file not found: {mem.root}/nope/data.yaml (referenced at {run}:2)")


def test_include_on_a_filesystem_that_is_not_installed(mem, monkeypatch):
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # `import gcsfs` raises ImportError
    run = mem("run.yaml", "trainer: {}\ndata: !include gs://bucket/data.yaml\n")
    (problem,) = error_of(run).problems
    assert (problem.path, problem.location) == ("data", f"{run}:2")
    assert problem.message.startswith("cannot read gs://bucket/data.yaml: gs:// needs gcsfs")
    assert "pip install 'lm[gcs]'" in problem.message


def test_include_cycle_is_detected(mem):
    a = mem("a.yaml", "x: !include b.yaml\n")
    b = mem("b.yaml", "y: !include a.yaml\n")
    (problem,) = error_of(a).problems
    assert problem.path == "x.y"
    assert problem.message == f"include cycle: {a} -> {b} -> {a}"


def test_top_level_include_is_a_clear_error(mem):
    mem("data.yaml", DATA_YAML)
    run = mem("run.yaml", "!include data.yaml\n")
    (problem,) = error_of(run).problems
    assert "`!include` is not supported at the top level" in problem.message
    assert "put it under a key" in problem.message
    assert problem.location == f"{run}:1"


def test_memory_url_from_the_root(mem):
    # Both spellings address the same memory file.
    url = "memory://lm-config-root-test.yaml"
    with fsspec.open(url, "w") as f:
        f.write("part: !include lm-config-root-part.yaml\n")
    with fsspec.open("memory://lm-config-root-part.yaml", "w") as f:
        f.write("v: 3\n")
    try:
        assert load_yaml(url) == {"part": {"v": 3}}
    finally:
        fsspec.filesystem("memory").rm("/lm-config-root-test.yaml")
        fsspec.filesystem("memory").rm("/lm-config-root-part.yaml")


def test_base_inheritance_deep_merges(mem):
    mem(
        "base.yaml",
        "trainer:\n  num_train_steps: 100\n  seed: 1\n  tags: [a, b]\n"
        "model: {type: gpt2, hidden_dim: 64}\n",
    )
    run = mem(
        "exp/run.yaml",
        "base: ../base.yaml\ntrainer:\n  num_train_steps: 5\n  tags: [c]\nmodel: {hidden_dim: 32}\n",
    )
    assert load_yaml(run) == {
        "trainer": {"num_train_steps": 5, "seed": 1, "tags": ["c"]},
        "model": {"type": "gpt2", "hidden_dim": 32},
    }


def test_base_list_later_wins_and_bases_chain(mem):
    mem("root.yaml", "a: 0\nb: 0\nc: 0\nd: {x: 1}\n")
    mem("one.yaml", "base: root.yaml\na: 1\nb: 1\n")
    mem("two.yaml", "b: 2\nd: {y: 2}\n")
    run = mem("run.yaml", "base: [one.yaml, two.yaml]\nc: 3\n")
    assert load_yaml(run) == {"a": 1, "b": 2, "c": 3, "d": {"x": 1, "y": 2}}


def test_base_locations_point_at_the_file_that_set_each_value(mem):
    base = mem("base.yaml", "trainer:\n  seed: 1\n  steps: 2\n")
    run = mem("run.yaml", "base: base.yaml\ntrainer:\n  steps: 3\n")
    locations = load_document(run).locations
    assert locations["trainer.seed"] == f"{base}:2"
    assert locations["trainer.steps"] == f"{run}:3"
    assert "base" not in locations


def test_base_errors(mem):
    run = mem("run.yaml", "base: missing.yaml\n")
    (problem,) = error_of(run).problems
    assert problem.message.startswith(f"file not found: {mem.root}/missing.yaml")
    run = mem("run2.yaml", "base: {a: 1}\n")
    (problem,) = error_of(run).problems
    assert (problem.path, problem.location) == ("base", f"{run}:1")
    assert "`base:` must be a file or a list of files" in problem.message
    a = mem("ca.yaml", "base: cb.yaml\n")
    mem("cb.yaml", "base: ca.yaml\n")
    (problem,) = error_of(a).problems
    assert problem.message.startswith("include cycle:")


def test_syntax_error_names_file_line_column(mem):
    run = mem("run.yaml", "trainer:\n  seed: 1\n  tags: [a, b\nmodel: {}\n")
    (problem,) = error_of(run).problems
    assert problem.message.startswith(f"{run}:4:6: YAML syntax error:")


def test_a_tab_indent_says_yaml_wants_spaces(mem):
    run = mem("run.yaml", "trainer:\n\tseed: 1\n")
    (problem,) = error_of(run).problems
    assert problem.message.startswith(f"{run}:2:1: YAML syntax error: found character '\\t'")
    assert problem.message.endswith("; YAML indents with spaces, not tabs")
    (problem,) = error_of(mem("ok.yaml", "trainer:\n  seed: [1\n")).problems
    assert "tabs" not in problem.message


def test_a_misspelled_include_tag_suggests_include(mem):
    (problem,) = error_of(mem("run.yaml", "optimizer: !inclde adam.yaml\n")).problems
    assert problem.path == "optimizer"
    assert problem.message.endswith("for the tag '!inclde'; did you mean !include?")
    (problem,) = error_of(mem("two.yaml", "optimizer: !env HOME\n")).problems
    assert problem.message.endswith("(the only tag a config file may use is !include)")


def test_syntax_error_in_an_included_file(mem):
    mem("data.yaml", "a: b: c\n")
    run = mem("run.yaml", "data: !include data.yaml\n")
    (problem,) = error_of(run).problems
    assert problem.path == "data"
    assert f"{mem.root}/data.yaml:1:5: YAML syntax error" in problem.message


def test_duplicate_keys_are_errors(mem):
    run = mem("run.yaml", "trainer:\n  seed: 1\n  seed: 2\n")
    (problem,) = error_of(run).problems
    assert problem.path == "trainer.seed"
    assert problem.message == "duplicate key `seed` (first written at line 2)"
    assert problem.location == f"{run}:3"


def test_top_level_must_be_a_mapping_and_empty_is_empty(mem):
    assert load_yaml(mem("empty.yaml", "")) == {}
    (problem,) = error_of(mem("list.yaml", "- a\n- b\n")).problems
    assert "must be a mapping of fields" in problem.message


def test_missing_config_file(mem):
    (problem,) = error_of(f"{mem.root}/absent.yaml").problems
    assert problem.message == f"file not found: {mem.root}/absent.yaml"


def test_every_problem_in_a_file_is_reported(mem):
    run = mem(
        "run.yaml", "a: !include x.yaml\nb: !include y.yaml\nc: !!python/object:os.system x\n"
    )
    paths = [p.path for p in error_of(run).problems]
    assert paths == ["a", "b", "c"]


@pytest.mark.parametrize(
    "including, target, expected",
    [
        ("run.yaml", "data.yaml", "data.yaml"),
        ("configs/run.yaml", "data/d.yaml", "configs/data/d.yaml"),
        ("configs/run.yaml", "../d.yaml", "d.yaml"),
        ("configs/run.yaml", "/abs/d.yaml", "/abs/d.yaml"),
        ("memory://test.yaml", "data.yaml", "memory://data.yaml"),
        ("gs://bucket/cfg/run.yaml", "../data/d.yaml", "gs://bucket/data/d.yaml"),
        ("gs://bucket/cfg/run.yaml", "s3://other/d.yaml", "s3://other/d.yaml"),
        ("file:///etc/lm/run.yaml", "d.yaml", "file:///etc/lm/d.yaml"),
    ],
)
def test_resolve_relative(including, target, expected):
    assert resolve_relative(including, target) == expected
