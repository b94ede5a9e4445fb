"""camlens: Class Activation Maps and their family for PyTorch."""

from .capture import CamlensError, NotAGapClassifierError, layer_names, tokens_to_grid
from .maps import fuse, normalize, upsample
from .methods import (
    CAM,
    ISCAM,
    METHODS,
    SSCAM,
    AblationCAM,
    CAMResult,
    EigenCAM,
    Explainer,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
    get_method,
)

__version__ = "0.1.0"

__all__ = [
    "AblationCAM",
    "CAM",
    "CAMResult",
    "CamlensError",
    "EigenCAM",
    "Explainer",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "ISCAM",
    "LayerCAM",
    "METHODS",
    "NotAGapClassifierError",
    "SSCAM",
    "ScoreCAM",
    "XGradCAM",
    "fuse",
    "get_method",
    "layer_names",
    "normalize",
    "tokens_to_grid",
    "upsample",
]
