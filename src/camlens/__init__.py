"""camlens: Class Activation Maps and their family for PyTorch."""

from . import methods
from .capture import layer_names
from .data.images import as_image, load_image
from .errors import CamlensError, NotAGapClassifierError
from .explanation import Explanation, explain
from .maps import fuse, normalize, upsample
from .methods import *  # noqa: F403  (CAM, GradCAM, ... and get_method)
from .models import LoadedModel, load_model
from .networks import gapify
from .render import overlay_image, three_panel
from .tokens import TokenLayout, token_layout, tokens_to_grid
from .wsolnet import build_explainer

__version__ = "0.1.0"

__all__ = [
    "as_image",
    "build_explainer",
    "CamlensError",
    "explain",
    "Explanation",
    "fuse",
    "gapify",
    "layer_names",
    "load_image",
    "load_model",
    "LoadedModel",
    "normalize",
    "NotAGapClassifierError",
    "overlay_image",
    "three_panel",
    "token_layout",
    "TokenLayout",
    "tokens_to_grid",
    "upsample",
    *methods.__all__,
]
