"""The CAM family: one class per method, all with the same call signature and result type."""

from __future__ import annotations

from ..errors import CamlensError
from .activation import CAM, ISCAM, SSCAM, AblationCAM, ScoreCAM
from .base import CAMResult, Cancelled, Explainer, select_classes, stop_when
from .decomposition import EigenCAM
from .gradient import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from .layered import LayerExplainer

METHODS: dict[str, type[Explainer]] = {
    cls.name: cls
    for cls in (CAM, GradCAM, GradCAMPlusPlus, XGradCAM, LayerCAM, HiResCAM, ScoreCAM, SSCAM, ISCAM, AblationCAM, EigenCAM)
}


def get_method(name: str) -> type[Explainer]:
    """The explainer class registered under ``name`` (case, dashes and underscores ignored, ``++`` read as
    ``pp``: ``Grad-CAM++`` = ``gradcampp``).

    Args:
        name: the method's name.

    Returns:
        The explainer class (a one-line error naming the choices for an unknown name).
    """
    key = name.lower().replace("-", "").replace("_", "").replace("++", "pp")
    if key not in METHODS:
        raise CamlensError(f"unknown method {name!r}; choose from {', '.join(sorted(METHODS))}")
    return METHODS[key]


__all__ = [
    "AblationCAM",
    "CAM",
    "CAMResult",
    "Cancelled",
    "EigenCAM",
    "Explainer",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "ISCAM",
    "LayerCAM",
    "LayerExplainer",
    "METHODS",
    "SSCAM",
    "ScoreCAM",
    "XGradCAM",
    "get_method",
    "select_classes",
    "stop_when",
]
