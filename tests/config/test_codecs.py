"""Leaf codecs: durations and jmp mixed-precision policies (MP-01 grammar), paths."""

import dataclasses
import datetime
import pathlib
import subprocess
import sys

import draccus
import jax.numpy as jnp
import jmp
import pytest

import lm.config
from lm.config import ConfigError, decode, format_duration, format_policy, parse_policy
from lm.config.codecs import HalfPolicy

td = datetime.timedelta


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("15m", td(minutes=15)),
        ("1h30m", td(hours=1, minutes=30)),
        ("90s", td(seconds=90)),
        ("2d", td(days=2)),
        ("500ms", td(milliseconds=500)),
        ("1w", td(weeks=1)),
        ("1.5h", td(minutes=90)),
        ("1h 30m", td(minutes=90)),
        ("10 minutes", td(minutes=10)),
        ("250us", td(microseconds=250)),
        ("0s", td(0)),
        (90, td(seconds=90)),
        (2.5, td(seconds=2.5)),
        ("60", td(minutes=1)),
    ],
)
def test_duration_valid(raw, expected):
    assert decode(td, raw) == expected


@pytest.mark.parametrize("raw", ["15x", "soon", "", "m15", "-5m", -3, True, [1], "1h-30m", "inf"])
def test_duration_invalid(raw):
    with pytest.raises(ConfigError, match="duration"):
        decode(td, raw)


@pytest.mark.parametrize(
    "value, text",
    [
        (td(minutes=15), "15m"),
        (td(minutes=90), "1h30m"),
        (td(days=2, seconds=1), "2d1s"),
        (td(milliseconds=500), "500ms"),
        (td(0), "0s"),
        (td(microseconds=1_000_001), "1s1us"),
    ],
)
def test_duration_encodes_compactly_and_round_trips(value, text):
    assert format_duration(value) == text
    assert draccus.encode(value) == text
    assert decode(td, text) == value


def test_negative_duration_cannot_be_encoded():
    with pytest.raises(ValueError, match="negative"):
        format_duration(td(seconds=-1))


F32, BF16, F16, F64 = jnp.float32, jnp.bfloat16, jnp.float16, jnp.float64


@pytest.mark.parametrize(
    "raw, dtypes",
    [
        ("p=f32,c=bfloat16", (F32, BF16, BF16)),
        ("f32", (F32, F32, F32)),
        ("full", (F32, F32, F32)),
        ("bf16", (BF16, BF16, BF16)),
        ("c=f16", (F32, F16, F16)),
        ("p=f16,c=f32", (F16, F32, F32)),
        ("params=float32,compute=bfloat16,output=float32", (F32, BF16, F32)),
        ("p=f64", (F64, F64, F64)),
        ("o=bf16", (F32, F32, BF16)),
        ("p = f32 , c = BF16", (F32, BF16, BF16)),
        ("half", (F16, F16, F16)),  # CPU: jmp's half is float16 off TPU
    ],
)
def test_policy_valid(raw, dtypes):
    policy = decode(jmp.Policy, raw)
    assert (policy.param_dtype, policy.compute_dtype, policy.output_dtype) == dtypes


def test_half_stays_half_until_a_dtype_is_read():
    policy = parse_policy("p=f32,c=half")
    assert isinstance(policy, HalfPolicy)
    assert format_policy(policy) == "p=f32,c=half,o=half" == str(policy)
    assert draccus.encode(policy) == "p=f32,c=half,o=half"
    assert decode(jmp.Policy, format_policy(policy)) == policy
    # on CPU, jmp's half is float16; once read, it behaves as jmp's own policy
    assert (policy.param_dtype, policy.compute_dtype, policy.output_dtype) == (F32, F16, F16)
    assert policy == jmp.get_policy("p=f32,c=f16") and jmp.get_policy("p=f32,c=f16") == policy
    assert hash(policy) == hash(jmp.get_policy("p=f32,c=f16"))
    assert policy.cast_to_compute(jnp.ones(2)).dtype == F16
    assert policy.with_output_dtype(F32).output_dtype == F32
    assert type(parse_policy("p=f32,c=bf16")) is jmp.Policy


PARSE_HALF = """
import jax
from jax._src import xla_bridge
import lm.config
from lm.main.train_lm import TrainLmConfig

config = lm.config.parse(TrainLmConfig, args=["--trainer.mp", "half"])
assert not xla_bridge.backends_are_initialized(), "parsing `mp: half` started the backend"
print(lm.config.format_policy(config.trainer.mp))
print(jax.numpy.dtype(config.trainer.mp.compute_dtype).name)
"""


def test_parsing_half_does_not_start_the_jax_backend(subprocess_env):
    """`jax.distributed.initialize()` (in TrainerConfig.initialize) must come before the XLA
    backend starts; `half` depends on the backend, so parsing it must not ask (DST-03)."""
    env = {**subprocess_env, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", PARSE_HALF], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["p=half,c=half,o=half", "float16"]


@pytest.mark.parametrize(
    "raw", ["p=f32,c=bfloat16", "f32", "c=f16", "params=float32,compute=bfloat16,output=float32"]
)
def test_policy_matches_jmp_and_round_trips(raw):
    ours = parse_policy(raw)
    assert ours == jmp.get_policy(raw)
    text = format_policy(ours)
    assert text.startswith("p=") and ",c=" in text and ",o=" in text
    assert parse_policy(text) == ours
    assert draccus.encode(ours) == text


def test_policy_canonical_form():
    assert format_policy(parse_policy("p=f32,c=bfloat16")) == "p=f32,c=bf16,o=bf16"


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ("x=f32", "unknown key 'x' in mixed-precision policy 'x=f32'; allowed keys: p (params)"),
        ("p=f33", "unknown dtype 'f33'"),
        ("p=f33", "did you mean 'f32'?"),
        ("fp8", "allowed dtypes: full, f32, float32, bf16, bfloat16, f16, float16, f64, float64"),
        ("p=f32,p=bf16", "params is given twice"),
        ("p=f32,bf16", "malformed part 'bf16'"),
        ("", "expected a jmp policy"),
        (3, "expected a jmp policy"),
    ],
)
def test_policy_invalid(raw, fragment):
    with pytest.raises(ConfigError) as info:
        decode(jmp.Policy, raw)
    assert fragment in str(info.value)


def test_path_codec():
    assert decode(pathlib.Path, "a/b") == pathlib.Path("a/b")
    assert draccus.encode(pathlib.Path("a/b")) == "a/b"
    with pytest.raises(ConfigError, match="expected a non-empty path string, got 3"):
        decode(pathlib.Path, 3)


def test_codecs_are_registered_with_draccus():
    assert lm.config  # importing the package registers them
    assert draccus.decode(td, "1h") == td(hours=1)
    assert draccus.decode(jmp.Policy, "bf16") == parse_policy("bf16")


class Ratio:
    """A leaf type another area might add, with its codec registered in draccus."""

    def __init__(self, num: int, den: int):
        self.num, self.den = num, den

    def __eq__(self, other):
        return isinstance(other, Ratio) and (self.num, self.den) == (other.num, other.den)


def _decode_ratio(raw, path=()):
    num, _, den = str(raw).partition("/")
    if not den:
        raise ValueError(f"expected a ratio like 3/4, got {raw!r}")
    return Ratio(int(num), int(den))


draccus.decode.register(Ratio, _decode_ratio)
draccus.encode.register(Ratio, lambda r, _=None: f"{r.num}/{r.den}")


@dataclasses.dataclass(frozen=True)
class WithRatio:
    r: Ratio = dataclasses.field(default_factory=lambda: Ratio(1, 2))
    r_or_int: int | Ratio = 0
    r_or_str: str | Ratio = "none"


def test_any_draccus_codec_is_used_for_decoding_and_encoding():
    cfg = decode(WithRatio, {"r": "3/4", "r_or_int": "5/6", "r_or_str": "7/8"})
    assert cfg.r == Ratio(3, 4)
    assert cfg.r_or_int == Ratio(5, 6)
    assert cfg.r_or_str == "7/8"  # a string goes to `str` before string-parsing codecs
    assert decode(WithRatio, {"r_or_int": 5}).r_or_int == 5
    assert lm.config.to_data(cfg, WithRatio) == {"r": "3/4", "r_or_int": "5/6", "r_or_str": "7/8"}
    with pytest.raises(ConfigError) as info:
        decode(WithRatio, {"r": "half"})
    assert str(info.value.problems[0]) == "r: expected a ratio like 3/4, got 'half'"
