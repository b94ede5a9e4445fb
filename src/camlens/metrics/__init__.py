"""Metrics on maps: localization (boxes, masks) and faithfulness (perturbations, pointing, sanity)."""

from . import faithfulness
from .faithfulness import *  # noqa: F403
from .localization import BoxAccuracy, ClassLocalization, PixelAP

__all__ = ["BoxAccuracy", "ClassLocalization", "PixelAP", *faithfulness.__all__]
