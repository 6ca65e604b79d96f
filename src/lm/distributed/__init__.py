"""Distributed setup: Ray for preprocessing (`RayConfig`)."""

from lm.distributed.ray import RayConfig, shutdown_ray

__all__ = ["RayConfig", "shutdown_ray"]
