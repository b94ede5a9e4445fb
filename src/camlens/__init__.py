"""camlens: Class Activation Maps and their family for PyTorch."""

from .capture import CamlensError, NotAGapClassifierError, layer_names
from .maps import normalize, upsample
from .methods import CAM, METHODS, CAMResult, Explainer, get_method

__version__ = "0.1.0"

__all__ = [
    "CAM",
    "CAMResult",
    "CamlensError",
    "Explainer",
    "METHODS",
    "NotAGapClassifierError",
    "get_method",
    "layer_names",
    "normalize",
    "upsample",
]
