"""Localization evaluation: a model and a CAM method over a dataset, or precomputed score maps, fed to every
WSOL metric (:mod:`camlens.metrics.localization`), with box baselines on the same data; and boxes for files.

Maps from a model are computed for the ground-truth class and upsampled (bilinear) to the original image size, so
every box and metric lives in the original pixel grid of the annotations.  The CAM paper's boxes (Top-1/Top-5/
GT-known Loc) threshold that raw map at 20% of its maximum, as the paper states; Choe et al.'s sweep and PxAP take
it min-max normalized, as their protocol states.  (Normalizing first would move the paper's threshold to 20% of
the way up from the map's minimum, which is a different rule for maps with negative values such as CAM.)  Precomputed
maps (Choe et al.'s layout: one ``<image_id>.npy`` per image) are scored as given, in [0, 1], with ground-truth
boxes mapped onto the map's grid as Choe et al. do (:func:`camlens.boxes.wsol_resize_boxes`).

One module per part: ``model`` (a model and method over a dataset), ``precomputed`` (``.npy`` score maps),
``batch`` (a batch's maps at each image's size and boxes from maps, shared with ``camlens localize``),
``accumulators`` (every localization accumulator as one), ``baselines`` (box baselines), ``report`` (the table and
the JSON file).  This package exports every public name.
"""

from .accumulators import Accumulators
from .baselines import box_baselines
from .batch import explain_batch, image_maps, map_boxes
from .model import evaluate_model
from .precomputed import evaluate_maps, load_score_map, map_names
from .report import FAITHFULNESS_ROWS, METRIC_ROWS, format_table, write_json

__all__ = [
    "FAITHFULNESS_ROWS",
    "METRIC_ROWS",
    "Accumulators",
    "box_baselines",
    "evaluate_maps",
    "evaluate_model",
    "explain_batch",
    "format_table",
    "image_maps",
    "load_score_map",
    "map_boxes",
    "map_names",
    "write_json",
]
