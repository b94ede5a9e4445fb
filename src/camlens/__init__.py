"""camlens: Class Activation Maps and their family for PyTorch."""

from . import methods
from .capture import CamlensError, NotAGapClassifierError, layer_names, tokens_to_grid
from .maps import fuse, normalize, upsample
from .methods import *  # noqa: F403  (CAM, GradCAM, ... and get_method)
from .networks import gapify

__version__ = "0.1.0"

__all__ = [
    "CamlensError",
    "NotAGapClassifierError",
    "fuse",
    "gapify",
    "layer_names",
    "normalize",
    "tokens_to_grid",
    "upsample",
    *methods.__all__,
]
