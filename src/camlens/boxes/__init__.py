"""Boxes from maps: the CAM paper's protocol, and the threshold sweep of Choe et al.'s WSOL evaluation.

Box convention (the library's): ``[x0, y0, x1, y1]`` in pixel units with exclusive right/bottom edges, so a box
over pixel columns 2..5 is ``x0=2, x1=6``; IoU is the area IoU of those rectangles (:func:`box_iou`).

**Paper protocol** (Zhou et al., CVPR 2016, Sec. 3.1 "Weakly-supervised object localization"): keep the pixels
whose value is above ``threshold`` (default 20%) of the map's maximum, and take the tight box around the largest
connected component (by pixel count; 8-connected by default).

**WSOL sweep** (Choe et al., CVPR 2020, "Evaluating Weakly Supervised Object Localization Methods Right", and
their ``wsolevaluation`` code).  A map in [0, 1] is quantized as ``q = uint8(map * 255)`` (truncation, float64);
for each threshold ``t`` of ``arange(0, 1, step)`` the foreground is ``q > int(t * max(q))``, OpenCV's
``findContours`` (``RETR_TREE``: outer borders of 8-connected components *and* borders of their 4-connected
holes) gives the contours, and each contour's box is ``cv2.boundingRect``.  MaxBoxAcc scores the contour of
largest ``cv2.contourArea``; MaxBoxAccV2 the best of all contours.  Their box then becomes
``(x, y, min(x + w, W - 1), min(y + h, H - 1))`` and is compared with an IoU that counts ``x1 - x0 + 1`` pixels,
i.e. as an *inclusive* box; with no contour at all the box is ``(0, 0, 0, 0)``.  In camlens terms
(:func:`wsol_protocol_boxes`): the contour's exact bounding box ``[x, y, x + w, y + h]`` becomes
``[x, y, min(x + w, W - 1) + 1, min(y + h, H - 1) + 1]`` (one pixel wider and taller unless it touches the
border), and "no contour" becomes the single pixel ``[0, 0, 1, 1]``; the area IoU of camlens boxes then equals
their ``+1`` IoU exactly.

The sweep is computed for every threshold in one pass instead of one contour search per threshold
(:func:`wsol_sweep`).  Facts it relies on, each checked against OpenCV in the tests:

* the thresholded sets are nested, and ``q`` has at most 256 levels, so the 1000 thresholds cut at most 255
  distinct foregrounds;
* an outer contour's bounding rect is its 8-connected component's box; a hole contour's is the box of the
  4-connected background hole grown by one pixel on every side;
* ``contourArea`` of an outer contour is the area of the polygon through the border pixel centres, which equals
  ``#(2x2 quads with 4 pixels in F) + #(quads with 3) / 2`` for the component ``F`` with its holes filled; the
  largest is always an outer contour of a component not inside a hole, ties going to the component that starts
  last in raster order (OpenCV lists contours last-found first).

One module per part: ``geometry`` (IoU, boxes moved between grids), ``paper`` (the paper protocol), ``protocol``
(the WSOL protocol's thresholds, quantization and box conventions), ``sweep`` (the one-pass sweep and its scoring
against ground truth), ``trees`` (the component trees it is computed from, compiled with numba), ``_common`` (the
input checks they share).  This package exports every public name.
"""

from ._common import boxes_are_2d
from .geometry import box_iou, paired_iou, scale_boxes
from .paper import paper_boxes
from .protocol import (
    NUM_LEVELS,
    threshold_levels,
    wsol_protocol_boxes,
    wsol_quantize,
    wsol_resize_boxes,
    wsol_thresholds,
)
from .sweep import ContourSweep, wsol_sweep

__all__ = [
    "NUM_LEVELS",
    "ContourSweep",
    "box_iou",
    "boxes_are_2d",
    "paired_iou",
    "paper_boxes",
    "scale_boxes",
    "threshold_levels",
    "wsol_protocol_boxes",
    "wsol_quantize",
    "wsol_resize_boxes",
    "wsol_sweep",
    "wsol_thresholds",
]
