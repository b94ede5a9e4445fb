"""What every network trained with a WSOL method carries: the mark with its method's config."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import CamlensError

# The attribute an attached network carries: its method's config, so an explainer can be chosen from the
# network alone (the web server's per-worker copies, ``camlens explain --checkpoint``).
MARK = "camlens_wsol"
META_KEY = "wsol_method"  # where checkpoints record the method's config


def mark(model: nn.Module, config: dict[str, Any]) -> None:
    """Record on ``model`` the config (``{"name": ..., **params}``) of the WSOL method attached to it."""
    object.__setattr__(model, MARK, dict(config))


def check_fraction(method: str, name: str, value: float) -> None:
    """One-line error unless ``0 <= value <= 1`` (thresholds and rates)."""
    if not 0.0 <= float(value) <= 1.0:
        raise CamlensError(f"{method}: {name}={value} is outside [0, 1]")
