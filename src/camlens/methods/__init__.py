"""The CAM family: one class per method, all with the same call signature and result type."""

from __future__ import annotations

from torch import nn

from ..capture import unwrap_model
from ..errors import CamlensError
from .activation import CAM, ISCAM, SSCAM, AblationCAM, ScoreCAM
from .attention import AttentionExplainer, AttentionRollout, GenericAttentionCAM, LeGrad, attention_sites
from .bagging import BagCAMs
from .base import CAMResult, Cancelled, Explainer, select_classes, stop_when
from .decomposition import EigenCAM
from .gradient import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from .layered import LayerExplainer

METHODS: dict[str, type[Explainer]] = {
    cls.name: cls
    for cls in (
        CAM,
        GradCAM,
        GradCAMPlusPlus,
        XGradCAM,
        LayerCAM,
        HiResCAM,
        ScoreCAM,
        SSCAM,
        ISCAM,
        AblationCAM,
        EigenCAM,
        AttentionRollout,
        GenericAttentionCAM,
        LeGrad,
        BagCAMs,
    )
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


def applicable_methods(model: nn.Module) -> tuple[str, ...]:
    """The names of the registered methods that apply to ``model``, sorted: the attention methods (rollout, gae,
    legrad) only where it has self-attention (:func:`camlens.methods.attention.attention_sites`).

    Args:
        model: the model to explain.

    Returns:
        Method names, keys of :data:`METHODS`.
    """
    has_attention = bool(attention_sites(unwrap_model(model)))
    return tuple(name for name in sorted(METHODS) if has_attention or not METHODS[name].needs_attention)


__all__ = [
    "AblationCAM",
    "AttentionExplainer",
    "AttentionRollout",
    "BagCAMs",
    "CAM",
    "CAMResult",
    "Cancelled",
    "EigenCAM",
    "Explainer",
    "GenericAttentionCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "ISCAM",
    "LayerCAM",
    "LayerExplainer",
    "LeGrad",
    "METHODS",
    "SSCAM",
    "ScoreCAM",
    "XGradCAM",
    "applicable_methods",
    "get_method",
    "select_classes",
    "stop_when",
]
