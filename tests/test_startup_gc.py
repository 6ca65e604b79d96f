import gc
import subprocess
import sys

import pytest

from lm import startup_gc


@pytest.fixture
def restore_gc():
    enabled = gc.isenabled()
    yield
    startup_gc._paused = False
    gc.unfreeze()
    if enabled:
        gc.enable()
    else:
        gc.disable()


@pytest.mark.parametrize(
    "argv, module",
    [
        (["python", "-m", "lm.main.train_lm", "--config_path", "x.yaml"], "lm.main.train_lm"),
        (["python", "-X", "importtime", "-m", "lm.main.train_lm"], "lm.main.train_lm"),
        (["python", "-mlm.main.eval_lm"], "lm.main.eval_lm"),
        (["python", "script.py", "-m", "lm.main.train_lm"], None),  # -m is the script's
        (["python", "-c", "import lm", "-m", "x"], None),
        (["python", "-m"], None),
        (["python"], None),
    ],
)
def test_command_module(argv, module):
    assert startup_gc.command_module(argv) == module


def test_pause_then_end_freezes_and_resumes(restore_gc):
    gc.enable()
    assert startup_gc.pause() and not gc.isenabled() and startup_gc.paused()
    assert not startup_gc.pause()  # already paused
    survivor = [object()]
    assert startup_gc.end_pause()
    assert gc.isenabled() and not startup_gc.paused()
    assert gc.get_freeze_count() > 0 and survivor
    assert not startup_gc.end_pause()  # once


def test_collection_turned_off_elsewhere_is_left_alone(restore_gc):
    gc.disable()
    assert not startup_gc.pause()
    assert not startup_gc.end_pause()
    assert not gc.isenabled() and gc.get_freeze_count() == 0


_COMMAND = """
import gc, sys
sys.argv[0] = "-m"
sys.orig_argv = [sys.executable, "-m", {module!r}]
import lm.main
import lm.prefault
print(gc.isenabled(), lm.startup_gc.paused(), lm.prefault.active())
"""

_LINUX = sys.platform.startswith("linux")


@pytest.mark.parametrize(
    "module, env, expected",
    [
        ("lm.main.train_lm", {}, f"False True {_LINUX}"),
        ("lm.main.train_lm", {"LM_HOST_PREFAULT": "off"}, "False True False"),
        ("lm.main.eval_lm", {}, "True False False"),
    ],
)
def test_only_train_lm_pauses_and_prefaults(subprocess_env, module, env, expected):
    """`python -m lm.main.train_lm` pauses the collector and, on a CPU-only Linux run,
    starts the prefault pool (lm.prefault); other commands do neither."""
    # LM_HOST_MALLOC=0: no re-execution (it would run the faked command line for real)
    env = {**subprocess_env, "LM_HOST_MALLOC": "0", "JAX_PLATFORMS": "cpu", **env}
    out = subprocess.run(
        [sys.executable, "-c", _COMMAND.format(module=module)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.split("\n")[0] == expected, out.stderr
