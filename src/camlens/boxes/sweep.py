"""The WSOL sweep in one pass: :func:`wsol_sweep` gives the contours of maps at every threshold of the protocol
(from the component trees of :mod:`camlens.boxes.trees`) as :class:`ContourSweep`, which scores them against
ground-truth boxes as MaxBoxAcc and MaxBoxAccV2 do (numba).  The facts it relies on: :mod:`camlens.boxes`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numba
import numpy as np
import torch
from torch import Tensor

from ..errors import CamlensError
from ._common import boxes_are_2d
from .protocol import NUM_LEVELS, threshold_levels, wsol_protocol_boxes, wsol_quantize, wsol_thresholds
from .trees import _WORK_ROWS, _sweep_map


@dataclass
class ContourSweep:
    """The contours of B maps (H, W) at every threshold of a WSOL sweep, from :func:`wsol_sweep`.

    ``levels`` (B, T): the uint8 level each threshold cuts at (foreground ``q > level``).
    ``largest`` (B, T, 4): exact bounding box ``[x, y, x + w, y + h]`` of the largest contour (largest
    ``cv2.contourArea``, ties to the component starting last in raster order, as OpenCV picks); zeros where the
    map has no contour (an all-zero map).
    ``boxes`` (E, 4) with ``image`` (E,) and ``level`` (E,): every contour, outer and hole borders, at every level;
    the contours at threshold i of map b are those with ``image == b`` and ``level == levels[b, i]``.
    Exact boxes, not the protocol's: use :func:`wsol_protocol_boxes` or :meth:`protocol_largest` to score.
    """

    thresholds: Tensor
    size: tuple[int, int]
    levels: Tensor
    largest: Tensor
    boxes: Tensor
    image: Tensor
    level: Tensor

    def protocol_largest(self) -> Tensor:
        """(B, T, 4) largest-contour boxes in the protocol's convention (what MaxBoxAcc scores)."""
        return wsol_protocol_boxes(self.largest, self.size)

    def contours(self, b: int, i: int) -> Tensor:
        """Exact boxes (n, 4) of all contours of map ``b`` at threshold index ``i``."""
        return self.boxes[(self.image == b) & (self.level == self.levels[b, i])]

    def best_iou_by_level(self, gt_boxes: Sequence[Tensor]) -> Tensor:
        """(B, 256) float64: at each level, the best IoU (:func:`paired_iou`, same arithmetic) of any contour of
        map b, in the protocol's convention (:func:`wsol_protocol_boxes`), with any of ``gt_boxes[b]`` (n_b, 4);
        0 where the level has no contour.  What MaxBoxAccV2 scores, in one pass over the contours."""
        gts, offsets = _gt_array(gt_boxes, self.levels.shape[0])
        out = np.zeros(self.levels.shape[0] * 256)
        _best_iou_by_level(
            self.boxes.numpy(), self.image.numpy(), self.level.numpy(), gts, offsets, self.size[0], self.size[1], out
        )
        return torch.from_numpy(out).view(-1, 256)

    def protocol_ious(self, gt_boxes: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """What MaxBoxAcc and MaxBoxAccV2 score at each threshold: the best IoU (:func:`paired_iou`, same
        arithmetic) with any of ``gt_boxes[b]`` (n_b, 4) of the largest contour (B, T), and of the best contour
        (B, T), in the protocol's convention (:func:`wsol_protocol_boxes`).  A map without any contour scores
        the protocol's fallback box (:meth:`protocol_largest`) in both."""
        bsz, t = self.levels.shape
        gts, offsets = _gt_array(gt_boxes, bsz)
        by_level = np.zeros(bsz * 256)
        _best_iou_by_level(
            self.boxes.numpy(),
            self.image.numpy(),
            self.level.numpy(),
            gts,
            offsets,
            self.size[0],
            self.size[1],
            by_level,
        )
        largest, best = np.empty((bsz, t)), np.empty((bsz, t))
        _protocol_ious(
            self.largest.numpy(),
            self.levels.numpy(),
            np.bincount(self.image.numpy(), minlength=bsz),
            by_level.reshape(bsz, 256),
            gts,
            offsets,
            self.size[0],
            self.size[1],
            largest,
            best,
        )
        return torch.from_numpy(largest), torch.from_numpy(best)


def _gt_array(gt_boxes: Sequence[Tensor], bsz: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth boxes of B maps as one (sum n_b, 4) float64 array, map b's at ``offsets[b]:offsets[b + 1]``."""
    if len(gt_boxes) != bsz:
        raise CamlensError(f"got {len(gt_boxes)} ground-truth box lists for {bsz} maps")
    gts = [torch.as_tensor(g, dtype=torch.float64).reshape(-1, 4) for g in gt_boxes]
    offsets = np.zeros(bsz + 1, np.int64)
    np.cumsum([g.shape[0] for g in gts], out=offsets[1:])
    return (torch.cat(gts) if gts else torch.zeros(0, 4, dtype=torch.float64)).numpy(), offsets


@numba.njit(cache=True, nogil=True, inline="always")
def _protocol_iou(box, gts, g0, g1, height, width):
    """Best :func:`paired_iou` of the exact box ``box`` (4,), made the protocol's (:func:`wsol_protocol_boxes`),
    with ``gts[g0:g1]``; 0 if that is empty."""
    x0, y0 = np.float64(box[0]), np.float64(box[1])
    x1, y1 = min(box[2], width - 1) + 1.0, min(box[3], height - 1) + 1.0
    area = max(x1 - x0, 0.0) * max(y1 - y0, 0.0)
    best = 0.0
    for g in range(g0, g1):
        gx0, gy0, gx1, gy1 = gts[g, 0], gts[g, 1], gts[g, 2], gts[g, 3]
        inter = max(min(x1, gx1) - max(x0, gx0), 0.0) * max(min(y1, gy1) - max(y0, gy0), 0.0)
        union = area + max(gx1 - gx0, 0.0) * max(gy1 - gy0, 0.0) - inter
        iou = inter / max(union, 1e-300) if union > 0 else 0.0
        if iou > best:
            best = iou
    return best


@numba.njit(cache=True, nogil=True)
def _best_iou_by_level(boxes, image, level, gts, offsets, height, width, out):
    for e in range(boxes.shape[0]):
        b = image[e]
        best = _protocol_iou(boxes[e], gts, offsets[b], offsets[b + 1], height, width)
        k = b * 256 + level[e]
        if best > out[k]:
            out[k] = best


@numba.njit(cache=True, nogil=True)
def _protocol_ious(largest, levels, contours, by_level, gts, offsets, height, width, out_largest, out_best):
    for b in range(largest.shape[0]):
        for i in range(largest.shape[1]):
            if i > 0 and levels[b, i] == levels[b, i - 1]:  # same level, same contours
                out_largest[b, i], out_best[b, i] = out_largest[b, i - 1], out_best[b, i - 1]
                continue
            out_largest[b, i] = _protocol_iou(largest[b, i], gts, offsets[b], offsets[b + 1], height, width)
            out_best[b, i] = by_level[b, min(levels[b, i], 255)] if contours[b] else out_largest[b, i]


def wsol_sweep(maps: Tensor | np.ndarray, thresholds: Sequence[float] | np.ndarray | None = None) -> ContourSweep:
    """Contour boxes of maps in [0, 1], shape (H, W) or (B, H, W), at every threshold (default
    ``arange(0, 1, 0.001)``), as Choe et al.'s per-threshold OpenCV sweep finds them, computed in one pass.

    Each map is quantized as the protocol does (:func:`wsol_quantize`); maps are not renormalized here
    (min-max normalize raw maps first, e.g. :func:`camlens.normalize`)."""
    q = wsol_quantize(maps)
    if q.ndim == 2:
        q = q[None]
    if q.ndim != 3:
        raise boxes_are_2d(q.shape, "(H, W) or (B, H, W)")
    t = wsol_thresholds() if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    levels = threshold_levels(q, t)
    bsz, h, w = q.shape
    n = (h + 2) * (w + 2)
    if n > 1 << 23:  # keeps pixel and (contour, level) indices within int32
        raise CamlensError(f"maps of {h}x{w} pixels are too large for the sweep (at most 2**23); downsample them first")
    work = np.empty((_WORK_ROWS, n), np.int32)  # shared by the maps: fresh memory per map costs page faults
    largest = np.empty((bsz, t.shape[0], 4), np.int64)
    at = np.minimum(levels, NUM_LEVELS - 1)  # an all-zero map cuts at level 0 and has no contour there
    parts = [_sweep_map(m, work, at[b], largest[b]) for b, m in enumerate(q)]
    return ContourSweep(
        thresholds=torch.from_numpy(t),
        size=(h, w),
        levels=torch.from_numpy(levels),
        largest=torch.from_numpy(largest),
        boxes=torch.from_numpy(np.concatenate([p[1] for p in parts])),
        image=torch.from_numpy(np.repeat(np.arange(bsz), [p[0].shape[0] for p in parts])),
        level=torch.from_numpy(np.concatenate([p[0] for p in parts])),
    )
