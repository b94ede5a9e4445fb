"""The CAM family: one class per method, all with the same call signature and result type."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..capture import CamlensError
from .activation import CAM, ISCAM, SSCAM, AblationCAM, ScoreCAM
from .bagging import BagCAMs
from .base import CAMResult, Cancelled, Explainer, select_classes, stop_when
from .decomposition import EigenCAM
from .gradient import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from .layered import LayerExplainer

METHODS: dict[str, type[Explainer]] = {
    cls.name: cls
    for cls in (CAM, GradCAM, GradCAMPlusPlus, XGradCAM, LayerCAM, HiResCAM, ScoreCAM, SSCAM, ISCAM, AblationCAM, EigenCAM,
                BagCAMs)
}


def get_method(name: str) -> type[Explainer]:
    """The explainer class registered under ``name`` (case, dashes and underscores ignored, ``++`` read as
    ``pp``: ``Grad-CAM++`` = ``gradcampp``)."""
    key = name.lower().replace("-", "").replace("_", "").replace("++", "pp")
    if key not in METHODS:
        raise CamlensError(f"unknown method {name!r}; choose from {', '.join(sorted(METHODS))}")
    return METHODS[key]


def build_explainer(model: nn.Module, method: str = "cam", layer: str | None = None, **options: Any) -> Explainer:
    """The explainer of ``method`` (:func:`get_method`) on ``model`` at ``layer``.  CAM with no layer on a network
    trained with a WSOL method (its checkpoint records the method) is that method's map, as its paper defines it:
    ACoL's max of two normalized maps (:class:`camlens.training.wsol.ACoLCAM`), plain CAM for the others."""
    cls = get_method(method)
    if cls.name == "cam" and layer is None:
        from ..training.wsol import method_explainer  # the training side is loaded only for such networks

        trained_with = method_explainer(model)
        if trained_with is not None:
            return trained_with
    return cls(model, layer=layer, **options)


__all__ = [
    "AblationCAM",
    "BagCAMs",
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
    "build_explainer",
    "get_method",
    "select_classes",
    "stop_when",
]
