"""Building caches with Ray (a local cluster, started once per session)."""

from __future__ import annotations

import json
import logging
import os
import re
import threading

import pytest

from lm.data import CacheOptions, TokenCache, build_or_load_cache, build_progress, read_ledger
from lm.data import cache as cache_mod
from lm.data.sources import UrlSource
from lm.data.tokenizer import DocumentEncoder
from lm.distributed import RayConfig, shutdown_ray
from lm.distributed.ray import RAY_AUTH_LOGGER

pytestmark = pytest.mark.ray

# what Ray's authentication module logged while the session's cluster started
_RAY_AUTH_RECORDS: list[logging.LogRecord] = []


class _Keep(logging.Handler):
    def emit(self, record):
        _RAY_AUTH_RECORDS.append(record)


@pytest.fixture(scope="session")
def local_ray():
    import ray

    assert not ray.is_initialized()
    # A stale address in the environment (like a dead cluster named by
    # /tmp/ray/ray_current_cluster after a killed run) must not be joined: starting a local
    # cluster always starts a new one.
    stale = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = "127.0.0.1:1"
    keep = _Keep()
    logging.getLogger(RAY_AUTH_LOGGER).addHandler(keep)
    try:
        assert RayConfig().initialize() is True
    finally:
        logging.getLogger(RAY_AUTH_LOGGER).removeHandler(keep)
        if stale is None:
            del os.environ["RAY_ADDRESS"]
        else:
            os.environ["RAY_ADDRESS"] = stale
    assert RayConfig().initialize() is True  # idempotent
    yield ray
    shutdown_ray()
    assert not ray.is_initialized()


def test_local_cluster_keeps_token_auth_without_rays_warning(local_ray):
    """Ray's default token authentication stays on; its warning saying so is left out."""
    from ray._private.authentication.authentication_token_setup import AUTH_MODE_ENV_VAR

    assert os.environ.get(AUTH_MODE_ENV_VAR) == "token"  # what Ray sets when it turns it on
    messages = [r.getMessage() for r in _RAY_AUTH_RECORDS if r.levelno >= logging.WARNING]
    assert not [m for m in messages if "Token authentication is enabled" in m]


def test_ray_config_without_auto_start_starts_nothing(monkeypatch):
    """Checked as if no Ray ran: other tests of this worker may have started one (this test
    used to skip itself then, which with `--dist loadfile` was every time)."""
    import ray

    def must_not_start(*args, **kwargs):
        raise AssertionError(f"ray.init{args}{kwargs} was called")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", must_not_start)
    assert RayConfig(auto_start_cluster=False).initialize() is False
    with pytest.raises(ValueError, match="^address: must be a non-empty address"):
        RayConfig(address=" ")


def test_the_no_cluster_error_names_the_fields_that_help():
    """It said "start Ray, set ray.address, ...": Ray started by hand is never joined (lm
    reads no RAY_ADDRESS), and the fields were not named by their YAML paths."""
    from lm.distributed.ray import no_cluster_message

    message = no_cluster_message()
    assert message.startswith(
        "data.cache_options.backend is 'ray' but no Ray cluster is available: "
        "trainer.ray.address is unset and trainer.ray.auto_start_cluster is false"
    )
    assert "start Ray," not in message
    for fix in (
        "Set trainer.ray.address (",
        "set trainer.ray.auto_start_cluster: true",
        "data.cache_options.backend: local",
        "not RAY_ADDRESS alone",
    ):
        assert fix in message


def test_a_head_without_workers_says_how_to_attach_them(monkeypatch, caplog):
    """`start_workers: false` starts a head with no CPUs: a build waited at 0% with nothing
    saying where workers must connect."""
    import types

    import ray

    started = []
    # (the session's real cluster, if it is up, is left alone)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: started.append(kw))
    monkeypatch.setattr(
        ray, "get_runtime_context", lambda: types.SimpleNamespace(gcs_address="10.1.2.3:6379")
    )
    with caplog.at_level(logging.INFO, logger="lm.distributed.ray"):
        assert RayConfig(start_workers=False).initialize() is True
    assert started[0]["num_cpus"] == 0 and started[0]["address"] == "local"
    assert (
        "Started a Ray head with no CPUs at 10.1.2.3:6379 (trainer.ray.start_workers: false): "
        "its tasks wait until workers join. On each worker machine run `RAY_AUTH_MODE=token "
        "ray start --address=10.1.2.3:6379`"
    ) in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lm.distributed.ray"):
        RayConfig().initialize()  # with workers: nothing to attach
    assert "no CPUs" not in caplog.text


def test_an_address_nothing_answers_at_fails_in_bounded_time():
    """ray.init retried an unreachable address for minutes, never naming the field."""
    import socket
    import time

    from lm.distributed.ray import RayUnreachable, check_reachable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    start = time.monotonic()
    with pytest.raises(RayUnreachable, match=r"^trainer.ray.address: nothing answers at ray://"):
        check_reachable(f"ray://127.0.0.1:{port}", timeout_s=1)
    assert time.monotonic() - start < 10
    check_reachable("auto", timeout_s=1)  # Ray's to resolve


def test_ray_build_matches_the_in_process_build(
    tmp_path, write_jsonl, local_ray, builtin_tokenizer
):
    for i in range(6):
        write_jsonl(
            tmp_path / "src" / f"part-{i}.jsonl",
            [f"part {i} line {j} " * (j + 1) for j in range(30)],
        )
    source = UrlSource.from_patterns([str(tmp_path / "src" / "part-{0..5}.jsonl")])
    enc = DocumentEncoder("builtin")
    # A relative cache_dir: Ray workers run elsewhere, so it is made absolute for them.
    ray_cache = build_or_load_cache(
        str(tmp_path / "ray"), source, enc, CacheOptions(backend="ray", num_workers=2)
    )
    local_cache = build_or_load_cache(
        str(tmp_path / "local"), source, enc, CacheOptions(backend="local")
    )
    assert ray_cache.num_docs == local_cache.num_docs == 180
    assert ray_cache.doc_ends.tolist() == local_cache.doc_ends.tolist()
    n = ray_cache.num_tokens
    assert (
        ray_cache.read_ranges([(0, n)])[0].tolist() == local_cache.read_ranges([(0, n)])[0].tolist()
    )
    assert read_ledger(str(tmp_path / "ray")).complete
    assert TokenCache(str(tmp_path / "ray")).num_tokens == n


def test_ray_shard_errors_surface_as_value_errors(tmp_path, write_jsonl, local_ray):
    write_jsonl(tmp_path / "ok.jsonl", ["fine"])
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n{oops\n')
    source = UrlSource.from_patterns([str(tmp_path / "{ok,bad}.jsonl")])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: malformed JSON"):
        build_or_load_cache(
            str(tmp_path / "c"), source, DocumentEncoder("builtin"), CacheOptions(num_workers=1)
        )
    ledger = read_ledger(str(tmp_path / "c"))
    assert list(ledger.finished) == [source.urls[0]] and not ledger.complete


def test_ray_build_reports_progress_within_a_shard(tmp_path, local_ray, monkeypatch, caplog):
    """The workers tell the driver how far they got inside a shard: with one shard that
    blocks half-way (a named pipe nobody has finished writing), the driver's progress line
    already counts the documents before it."""
    monkeypatch.setattr(build_progress, "PROGRESS_LOG_S", 0.0)
    monkeypatch.setattr(cache_mod, "PROGRESS_POLL_S", 0.2)
    pipe = tmp_path / "part.jsonl"
    os.mkfifo(pipe)
    source = UrlSource.from_patterns([str(pipe)])
    seen = threading.Event()
    progressed = threading.Event()
    lines = []

    class Progress(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())
            if re.search(r": 0/1 shards done, [1-9][\d,]* tokens in 20 documents", lines[-1]):
                progressed.set()
                seen.set()

    def write():
        with open(pipe, "w") as f:
            for j in range(40):
                f.write(json.dumps({"text": f"line {j} of the pipe"}) + "\n")
                if j == 19:
                    f.flush()
                    seen.wait(60)  # until the driver has seen the first 20 documents

    handler = Progress(level=logging.INFO)
    logger = logging.getLogger("lm.data.build_progress")
    logger.addHandler(handler)
    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        with caplog.at_level("INFO", logger="lm.data.build_progress"):
            cache = build_or_load_cache(
                str(tmp_path / "c"),
                source,
                DocumentEncoder("builtin"),
                CacheOptions(backend="ray", num_workers=1, batch_size=4),
            )
    finally:
        logger.removeHandler(handler)
        seen.set()  # the writer finishes either way
        writer.join(60)
    assert progressed.is_set(), lines
    assert cache.num_docs == 40


@pytest.mark.slow  # ~15 s: each worker loads the tokenizer directory through transformers
def test_relative_paths_reach_the_workers_as_absolute_ones(
    tmp_path, write_jsonl, local_ray, monkeypatch
):
    """Ray workers open files in their own working directory (on a cluster joined through
    ray.address, a directory of another machine): relative source paths and a relative
    tokenizer directory were sent as written, so the workers read other files, or none."""
    import shutil

    from lm.data.builtin_tokenizer import ensure_builtin_tokenizer

    driver = tmp_path / "driver"
    for i in range(2):
        write_jsonl(driver / "data" / f"part-{i}.jsonl", [f"part {i} line {j}" for j in range(9)])
    shutil.copytree(ensure_builtin_tokenizer(), driver / "tok")
    monkeypatch.chdir(driver)  # the workers were started elsewhere, and stay there
    worker_cwd = local_ray.get(local_ray.remote(lambda: os.getcwd()).remote())
    assert worker_cwd != str(driver)
    source = UrlSource.from_patterns(["data/part-{0..1}.jsonl"])
    enc = DocumentEncoder("tok")
    cache = build_or_load_cache(
        "cache", source, enc, CacheOptions(backend="ray", num_workers=1, batch_size=4)
    )
    assert cache.num_docs == 18
    local = build_or_load_cache("local", source, enc, CacheOptions(backend="local"))
    n = local.num_tokens
    assert cache.read_ranges([(0, n)])[0].tolist() == local.read_ranges([(0, n)])[0].tolist()
    assert read_ledger("cache").shards == ["data/part-0.jsonl", "data/part-1.jsonl"]


def test_a_worker_that_cannot_open_its_file_is_one_error_naming_it(
    tmp_path, write_jsonl, local_ray
):
    """A FileNotFoundError in a worker came out as Ray's RayTaskError, the worker's whole
    traceback for its message."""
    write_jsonl(tmp_path / "a.jsonl", ["one"])
    source = UrlSource.from_patterns([str(tmp_path / "a.jsonl")])
    os.remove(tmp_path / "a.jsonl")  # gone between listing and building
    with pytest.raises(ValueError) as info:
        build_or_load_cache(
            str(tmp_path / "c"),
            source,
            DocumentEncoder("builtin"),
            CacheOptions(backend="ray", num_workers=1),
        )
    assert type(info.value) is ValueError
    a = tmp_path / "a.jsonl"
    assert re.fullmatch(
        rf"building cache shard 0 from {re.escape(str(a))} failed on a Ray worker "
        r"\(FileNotFoundError: \[Errno 2\] No such file or directory: '"
        rf"{re.escape(str(a))}'\); nothing of that shard was recorded, and a rerun resumes the "
        r"build from the finished shards",
        str(info.value),
    ), str(info.value)
    assert not read_ledger(str(tmp_path / "c")).finished
