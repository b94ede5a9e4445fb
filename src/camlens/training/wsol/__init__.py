"""WSOL training methods: one module per method, each a :class:`TrainingMethod`."""

from .base import TrainingMethod

__all__ = ["TrainingMethod"]
