"""configure_logging: console + `<log_dir>/<run_id>.log`, idempotent, scrubbed."""

import io
import logging

import pytest

from lm.tracker import configure_logging
from lm.tracker.logs import reset_logging


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    level = root.level
    yield root
    reset_logging()
    root.setLevel(level)


def _ours(root):
    return [h for h in root.handlers if getattr(h, "_lm_configure_logging", False)]


def test_records_go_to_console_and_file(tmp_path, restore_root_logger, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secretsecretsecret")
    console = io.StringIO()
    log_file = tmp_path / "logs" / "run42.log"
    configure_logging(log_file, level="INFO", stream=console)
    log = logging.getLogger("lm.some.module")
    log.info("hello %s", "world")
    log.debug("not shown")
    log.warning("token is hf_secretsecretsecret")
    text = log_file.read_text()
    assert "INFO lm.some.module: hello world" in text
    assert "not shown" not in text
    assert "token is ***REDACTED***" in text and "hf_secretsecretsecret" not in text
    assert console.getvalue().splitlines()[0].endswith("INFO lm.some.module: hello world")
    assert "hf_secretsecretsecret" not in console.getvalue()


def test_configure_twice_replaces_its_own_handlers(tmp_path, restore_root_logger):
    root = restore_root_logger
    other = logging.NullHandler()
    root.addHandler(other)
    try:
        configure_logging(tmp_path / "a.log", stream=io.StringIO())
        configure_logging(tmp_path / "b.log", level="DEBUG", stream=io.StringIO())
        assert len(_ours(root)) == 2 and other in root.handlers
        assert root.level == logging.DEBUG
        logging.getLogger("lm.x").debug("to b")
        assert "to b" in (tmp_path / "b.log").read_text()
        assert "to b" not in (tmp_path / "a.log").read_text()
    finally:
        root.removeHandler(other)


def test_appends_on_restart(tmp_path, restore_root_logger):
    for msg in ("first", "second"):
        configure_logging(tmp_path / "r.log", stream=io.StringIO())
        logging.getLogger("lm.x").info(msg)
    lines = (tmp_path / "r.log").read_text().splitlines()
    assert [line.rsplit(" ", 1)[-1] for line in lines] == ["first", "second"]


def test_each_process_of_a_multi_process_run_tags_its_lines(tmp_path, restore_root_logger):
    # Two processes append to the same <run_id>.log (a shared log_dir): their lines differ.
    for index in (0, 1):
        configure_logging(tmp_path / "r.log", stream=io.StringIO(), process_index=index)
        logging.getLogger("lm.x").info("started")
    configure_logging(tmp_path / "r.log", stream=io.StringIO())
    logging.getLogger("lm.x").info("alone")
    lines = (tmp_path / "r.log").read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == [
        "process 0 INFO lm.x: started",
        "process 1 INFO lm.x: started",
        "INFO lm.x: alone",
    ]


def test_the_process_tag_survives_a_format_without_the_time(tmp_path, restore_root_logger):
    configure_logging(
        tmp_path / "r.log", stream=io.StringIO(), fmt="%(levelname)s: %(message)s", process_index=3
    )
    logging.getLogger("lm.x").info("started")
    assert (tmp_path / "r.log").read_text().splitlines() == ["process 3 INFO: started"]


def test_bad_arguments_are_clear_errors(restore_root_logger):
    with pytest.raises(ValueError, match="log level must be one of .*INFO.*got 'LOUD'"):
        configure_logging(None, level="LOUD")
    with pytest.raises(ValueError, match="must be a local path"):
        configure_logging("gs://bucket/run.log")
