"""Executors: the subprocess one runs argv and logs only the masked form; the printer prints."""

import io
import logging

from lm.launch.executor import (
    MASK,
    Command,
    LaunchError,
    PrintingExecutor,
    SubprocessExecutor,
    require_programs,
)


def test_subprocess_executor_runs_argv_and_logs_the_masked_form(caplog):
    command = Command(
        ("sh", "-c", 'echo "$0"; exit 3', "s3cr3t"), ("sh", "-c", 'echo "$0"; exit 3', MASK)
    )
    ex = SubprocessExecutor()
    with caplog.at_level(logging.DEBUG):
        assert ex.run(command) == 3
        assert ex.capture(command) == (3, "s3cr3t\n")
        assert ex.capture(Command.plain("echo", "READY")) == (0, "READY\n")
    assert "s3cr3t" not in caplog.text
    assert "<redacted>" in caplog.text


def test_printing_executor_prints_shell_lines_and_answers_the_healthy_state():
    out = io.StringIO()
    ex = PrintingExecutor(out)
    assert ex.run(Command(("echo", "a b", "s3cr3t"), ("echo", "a b", MASK))) == 0
    assert ex.capture(Command.plain("gcloud", "describe", expected_output="ACTIVE\n")) == (
        0,
        "ACTIVE\n",
    )
    assert out.getvalue() == "echo 'a b' '<redacted>'\ngcloud describe\n"


def test_require_programs_names_every_missing_program():
    require_programs(["sh"])
    try:
        require_programs(
            ["sh", "gcloud", "docker"], which=lambda p: "/bin/sh" if p == "sh" else None
        )
    except LaunchError as e:
        message = str(e)
    else:
        raise AssertionError("expected LaunchError")
    assert "`gcloud` is not installed" in message and "`docker` is not installed" in message
    assert "`sh`" not in message
