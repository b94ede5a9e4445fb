"""Choe et al.'s WSOL protocol (CVPR 2020, and their ``wsolevaluation`` code), all of it but the contour search:
the thresholds ``arange(0, 1, step)``, the quantization ``uint8(map * 255)``, the uint8 level each threshold cuts
at, and their box conventions (ground-truth boxes resized onto the map's grid; contour boxes as the protocol scores
them).  The protocol and how camlens' boxes express it: :mod:`camlens.boxes`."""

from __future__ import annotations

from typing import Sequence

import numba
import numpy as np
import torch
from torch import Tensor

from ..errors import CamlensError
from ._common import as_numpy_maps

NUM_LEVELS = 255  # the levels L = 0..254 a threshold can cut at (foreground q > L; L = 255 leaves nothing)


def wsol_thresholds(step: float = 0.001) -> np.ndarray:
    """The protocol's thresholds ``numpy.arange(0, 1, step)`` (float64; 1000 values for the default step)."""
    if not 0 < step < 1:
        raise CamlensError(f"threshold step {step} must be in (0, 1)")
    return np.arange(0, 1, step)


def wsol_quantize(maps: Tensor | np.ndarray, what: str = "maps") -> np.ndarray:
    """``uint8(map * 255)`` in float64, as the protocol does, after checking that the maps are finite and in
    [0, 1] (normalize them first, e.g. with :func:`camlens.normalize`).  Shape (..., H, W) is kept."""
    arr = as_numpy_maps(maps, what, finite=False)
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    arr = np.ascontiguousarray(arr)
    q = np.empty(arr.shape, np.uint8)
    if not _quantize_unit(arr.reshape(-1), q.reshape(-1)):
        as_numpy_maps(arr, what)  # names NaN or infinity
        raise CamlensError(
            f"{what} must lie in [0, 1] for the WSOL protocol (found min {arr.min():.4g}, max {arr.max():.4g}); "
            "min-max normalize each map first (camlens.normalize)"
        )
    return q


@numba.njit(cache=True, nogil=True)
def _quantize_unit(x, out):
    """``out = uint8(float64(x) * 255)`` in one pass; False if a value is not in [0, 1] (NaN included)."""
    ok = True
    for i in range(x.shape[0]):
        y = np.float64(x[i])
        ok &= (y >= 0.0) & (y <= 1.0)
        out[i] = np.uint8(y * 255.0)
    return ok


def threshold_levels(q: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The uint8 level ``int(t * max(q))`` that each threshold cuts at, per map: (B, T) int64 for q (B, H, W).

    Foreground at threshold ``t`` is ``q > level``.  Thresholds must lie in [0, 1)."""
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim != 1 or t.size == 0 or t.min() < 0 or t.max() >= 1:
        raise CamlensError("thresholds must be a non-empty 1-D sequence of values in [0, 1)")
    peak = q.reshape(q.shape[0], -1).max(1).astype(np.float64)
    return (t[None, :] * peak[:, None]).astype(np.int64)


def wsol_resize_boxes(boxes: Tensor, image_size: Sequence[int], map_size: Sequence[int]) -> Tensor:
    """Ground-truth boxes of an image of ``image_size=(W, H)`` mapped onto a map of ``map_size=(h, w)`` the
    way Choe et al. do (``int(x * w / W)`` on their inclusive corners), in camlens' convention: for exclusive
    boxes, ``[int(x0 w/W), int(y0 h/H), int((x1 - 1) w/W) + 1, int((y1 - 1) h/H) + 1]``."""
    big_w, big_h = (float(v) for v in image_size)
    h, w = (float(v) for v in map_size)
    b = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    out = torch.stack(
        [b[:, 0] * w / big_w, b[:, 1] * h / big_h, (b[:, 2] - 1) * w / big_w, (b[:, 3] - 1) * h / big_h], 1
    )
    out = out.trunc()
    out[:, 2:] += 1
    return out


def wsol_protocol_boxes(boxes: Tensor, size: Sequence[int]) -> Tensor:
    """Exact contour boxes ``[x, y, x + w, y + h]`` as the WSOL protocol scores them, in camlens' convention:
    ``[x, y, min(x + w, W - 1) + 1, min(y + h, H - 1) + 1]`` for maps of ``size=(H, W)``; the zero box (no
    contour) becomes the pixel ``[0, 0, 1, 1]``.  See :mod:`camlens.boxes`."""
    h, w = size
    boxes = torch.as_tensor(boxes).clone()
    boxes[..., 2] = boxes[..., 2].clamp(max=w - 1) + 1
    boxes[..., 3] = boxes[..., 3].clamp(max=h - 1) + 1
    return boxes
