"""The CAM family: one class per method, all with the same call signature and result type."""

from __future__ import annotations

from .activation import CAM
from .base import CAMResult, Explainer, select_classes

METHODS: dict[str, type[Explainer]] = {cls.name: cls for cls in (CAM,)}


def get_method(name: str) -> type[Explainer]:
    """The explainer class registered under ``name`` (case and dashes ignored: ``grad-cam`` = ``gradcam``)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(sorted(METHODS))}")
    return METHODS[key]


__all__ = ["CAM", "CAMResult", "Explainer", "METHODS", "get_method", "select_classes"]
