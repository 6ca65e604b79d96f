"""`log_jaxprs` / `log_xla_hlo` artifacts: train_step.jaxpr.txt.gz and train_step.hlo.txt."""

import gzip

import jax
import jax.numpy as jnp
import pytest

from lm.tracker import JsonLoggerConfig, log_jaxpr, log_xla_hlo, read_json_log


def step(x):
    return jnp.sin(x) * 2.0


def test_jaxpr_and_hlo_are_logged_once_per_name(tmp_path):
    tracker = JsonLoggerConfig(plot=False).init("r", run_dir=str(tmp_path))
    x = jnp.ones(3)
    traced = jax.jit(step).trace(x)
    with tracker:
        assert log_jaxpr("train_step", traced) is True
        assert log_jaxpr("train_step", jax.make_jaxpr(step)(x)) is False  # once per name
        assert log_xla_hlo("train_step", jax.jit(step).lower(x).compile()) is True
        assert log_xla_hlo("train_step", "HloModule other") is False
        assert log_xla_hlo("eval_step", jax.jit(step).lower(x)) is True
    tracker.finish()

    jaxpr = gzip.decompress((tmp_path / "artifacts" / "train_step.jaxpr.txt.gz").read_bytes())
    assert jaxpr.decode() == str(jax.make_jaxpr(step)(x))
    hlo = (tmp_path / "artifacts" / "train_step.hlo.txt").read_text()
    assert hlo.startswith("HloModule") and "sine" in hlo
    assert (tmp_path / "artifacts" / "eval_step.hlo.txt").read_text().startswith("HloModule")
    events = [r for r in read_json_log(str(tmp_path / "metrics.jsonl")) if r["event"] == "artifact"]
    assert [(e["name"], e["type"]) for e in events] == [
        ("train_step.jaxpr.txt.gz", "jaxpr"),
        ("train_step.hlo.txt", "xla_hlo"),
        ("eval_step.hlo.txt", "xla_hlo"),
    ]


def test_a_new_tracker_gets_its_own_copy(tmp_path):
    for name in ("a", "b"):
        tracker = JsonLoggerConfig(plot=False).init(name, run_dir=str(tmp_path / name))
        assert log_jaxpr("train_step", "{ lambda ; }", tracker=tracker) is True
        tracker.finish()
        assert (tmp_path / name / "artifacts" / "train_step.jaxpr.txt.gz").exists()


def test_bad_hlo_argument_is_a_clear_error(tmp_path):
    tracker = JsonLoggerConfig(plot=False).init("r", run_dir=str(tmp_path))
    with pytest.raises(TypeError, match="expects a jax Compiled or Lowered stage or HLO text"):
        log_xla_hlo("train_step", 42, tracker=tracker)
    tracker.finish()
