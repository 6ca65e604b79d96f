"""Throughput and MFU.

MFU = model FLOPs per second / (peak FLOPs per device x devices). Model FLOPs come from
the model config (`flops_per_token`, forward + backward). Peak FLOPs per device come from
the table below for accelerators, keyed by `device_kind` and the compute dtype; on CPU the
peak is measured once per process with a float32 matmul, as the benchmark does.
"""

from __future__ import annotations

import functools
import logging
import time

import jax
import jax.numpy as jnp

logger = logging.getLogger(__name__)

# Dense peak TFLOP/s per device: (16-bit, 32-bit). The 32-bit number for NVIDIA parts is the
# TF32 tensor-core peak, which is what XLA uses for f32 matmuls at default precision.
_PEAK_TFLOPS: dict[str, tuple[float, float]] = {
    "h200": (989.0, 494.0),
    "h100 sxm": (989.0, 494.0),
    "h100 80gb hbm3": (989.0, 494.0),
    "h100 pcie": (756.0, 378.0),
    "h100": (989.0, 494.0),
    "gh200": (989.0, 494.0),
    "a100": (312.0, 156.0),
    "l4": (121.0, 60.0),
    "a10g": (125.0, 62.5),
    "v100": (125.0, 15.7),
    "tpu v6": (918.0, 918.0),
    "tpu v5p": (459.0, 459.0),
    "tpu v5 lite": (197.0, 197.0),
    "tpu v5e": (197.0, 197.0),
    "tpu v5": (459.0, 459.0),
    "tpu v4": (275.0, 275.0),
    "tpu v3": (123.0, 123.0),
    "tpu v2": (45.0, 45.0),
}


def table_peak_flops(device_kind: str, dtype) -> float | None:
    kind = device_kind.lower()
    sixteen_bit = jnp.dtype(dtype).itemsize <= 2
    for key in sorted(_PEAK_TFLOPS, key=len, reverse=True):
        if key in kind:
            return _PEAK_TFLOPS[key][0 if sixteen_bit else 1] * 1e12
    return None


@functools.cache
def measured_cpu_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a float32 n x n matmul on this CPU (best of `repeats`)."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def device_peak_flops(dtype=jnp.float32) -> float | None:
    """Peak FLOP/s of one device for matmuls in `dtype`; measured on CPU; None if unknown."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return measured_cpu_peak_flops() / max(1, jax.local_device_count())
    peak = table_peak_flops(device.device_kind, dtype)
    if peak is None:
        logger.warning(
            "No peak-FLOPs entry for device kind %r: MFU will not be logged", device.device_kind
        )
    return peak
