"""Faithfulness and sanity metrics for maps: does the map point at what the model actually uses?

Every metric takes the model, the images exactly as the model receives them (B, C, H, W) (already preprocessed:
"zeros" below means zeros of that tensor, i.e. the dataset mean colour under the usual normalization), maps
(B, H, W) or (B, 1, H, W) (resized bilinearly to (H, W) by :func:`camlens.upsample` when smaller) and one
explained class per image.  Average Drop / Increase, deletion, insertion and the pointing game take 1-D signals
(B, C, L) with maps (B, L) and 3-D volumes (B, C, D, H, W) with maps (B, D, H, W) alike ("pixels" are then the
signal's samples or the volume's voxels); ROAD's imputation is defined on the image plane and stays 2-D.  The
class score is the softmax probability (``score="softmax"``, the default, as in the papers) or the raw logit
(``score="logit"``).  Forward passes run under ``torch.no_grad`` in batches of ``batch_size`` perturbed images,
mixing images and perturbation steps; the model must be in eval mode.

Every function returns per-image values, so a dataset-level number is a sum and a count (see
:class:`FaithfulnessTotals`), reducible across processes.  :func:`faithfulness_scores` runs them all at once.

Pixel rankings break ties deterministically: by the row-major pixel index, lower first, in both the
most-relevant-first and the least-relevant-first orders.

One module per metric family: ``confidence`` (Average Drop / Increase), ``curves`` (deletion / insertion),
``road``, ``pointing`` (the pointing game), ``randomization`` (the model randomization check), ``scores`` (all at
once); ``_common`` holds what they share.  This package exports them all.
"""

from ._common import class_scores
from .confidence import ConfidenceChange, confidence_change
from .curves import PerturbationCurve, deletion_curve, insertion_curve, perturbation_curve, rise_blur
from .pointing import boxes_to_masks, pointing_game
from .randomization import RandomizationResult, randomization_check, rank_correlation, ssim
from .road import ROAD_NEIGHBOUR_WEIGHTS, ROAD_PERCENTAGES, RoadResult, noisy_linear_imputation, road
from .scores import METRICS, FaithfulnessConfig, FaithfulnessTotals, faithfulness_scores

__all__ = [
    "METRICS",
    "ROAD_NEIGHBOUR_WEIGHTS",
    "ROAD_PERCENTAGES",
    "ConfidenceChange",
    "FaithfulnessConfig",
    "FaithfulnessTotals",
    "PerturbationCurve",
    "RandomizationResult",
    "RoadResult",
    "boxes_to_masks",
    "class_scores",
    "confidence_change",
    "deletion_curve",
    "faithfulness_scores",
    "insertion_curve",
    "noisy_linear_imputation",
    "perturbation_curve",
    "pointing_game",
    "randomization_check",
    "rank_correlation",
    "rise_blur",
    "road",
    "ssim",
]
