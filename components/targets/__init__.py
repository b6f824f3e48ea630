"""Deployment targets: where the platform differences live (and only there)."""

from __future__ import annotations

from ..config import StackConfig
from .base import Target


def make_target(config: StackConfig) -> Target:
    """The target named by ``config.target``."""
    if config.target == "docker":
        from .docker import DockerTarget

        return DockerTarget(config)
    from .kubernetes import KubernetesTarget

    return KubernetesTarget(config)


__all__ = ["Target", "make_target"]
