"""Distributed setup: `jax.distributed` (`DistributedConfig`) and Ray for preprocessing
(`RayConfig`)."""

from lm.distributed.init import DistributedConfig
from lm.distributed.ray import RayConfig, shutdown_ray

__all__ = ["DistributedConfig", "RayConfig", "shutdown_ray"]
