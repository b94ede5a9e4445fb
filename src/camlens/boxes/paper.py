"""The CAM paper's boxes (Zhou et al., CVPR 2016, Sec. 3.1 "Weakly-supervised object localization"): keep the
pixels whose value is above ``threshold`` (default 20%) of the map's maximum, and take the tight box around the
largest connected component (by pixel count; 8-connected by default), found by scipy's labelling."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..constants import PAPER_THRESHOLD
from ..errors import CamlensError
from ._common import as_numpy_maps, boxes_are_2d
from .geometry import scale_boxes


def paper_boxes(
    maps: Tensor | np.ndarray,
    threshold: float = PAPER_THRESHOLD,
    *,
    connectivity: int = 8,
    image_size: Sequence[int] | None = None,
) -> Tensor:
    """The CAM paper's boxes: for each map (..., h, w), the tight box around the largest connected component of
    ``{map > threshold * max(map)}`` (largest by pixel count; ties go to the component met first in raster
    order).  ``connectivity`` is 8 or 4.  An empty region (e.g. a map that is all zeros) gives the zero box
    ``[0, 0, 0, 0]``, whose IoU with anything is 0.

    ``image_size=(H, W)``: the map covers an image of that size (resized without crop, e.g. a map at the
    network's input size), and boxes are returned in that image's pixel coordinates (:func:`scale_boxes`).
    Returns float64 boxes of shape (..., 4).
    """
    from scipy import ndimage

    if connectivity not in (4, 8):
        raise CamlensError(f"connectivity={connectivity} must be 4 or 8")
    arr = as_numpy_maps(maps).astype(np.float64, copy=False)
    if arr.ndim > 4:
        raise boxes_are_2d(arr.shape, "(h, w), (B, h, w) or (B, N, h, w)")
    lead, (h, w) = arr.shape[:-2], arr.shape[-2:]
    flat = arr.reshape(-1, h, w)
    structure = np.ones((3, 3), bool) if connectivity == 8 else ndimage.generate_binary_structure(2, 1)
    out = np.zeros((flat.shape[0], 4), np.float64)
    for i, m in enumerate(flat):
        labels, count = ndimage.label(m > threshold * m.max(), structure=structure)
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        ys, xs = np.nonzero(labels == 1 + int(np.argmax(sizes)))
        out[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    boxes = torch.from_numpy(out).reshape(*lead, 4)
    return scale_boxes(boxes, (h, w), image_size) if image_size is not None else boxes
