"""The pointing game (Zhang et al., ECCV 2016, "Top-down Neural Attention by Excitation Backprop").

Conventions: :mod:`camlens.metrics.faithfulness`."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ...errors import CamlensError
from ._common import BoxSpec, Ties, _as_maps


def boxes_to_masks(boxes: BoxSpec, size: Sequence[int], batch: int | None = None) -> Tensor:
    """Rasterize boxes [x0, y0, x1, y1] (pixel coordinates, exclusive right/bottom edges) into (B, H, W) bool
    masks: pixel (row r, column c) is inside when its centre (c + ½, r + ½) lies in [x0, x1) × [y0, y1).
    ``boxes``: (B, 4), (B, K, 4), or a list of (K_i, 4) tensors (several objects per image; K_i may be 0).
    Boxes are 2-D: for 1-D signals and 3-D volumes give the ground truth as masks."""
    if len(size) != 2:
        raise CamlensError(
            f"boxes are 2-D only, but the maps are {len(size)}-D (size {tuple(size)}); give the ground truth of "
            "1-D signals and 3-D volumes as masks= (B, *size) bool"
        )
    if isinstance(boxes, Tensor):
        boxes = boxes[:, None] if boxes.ndim == 2 else boxes
        if boxes.ndim != 3 or boxes.shape[-1] != 4:
            raise CamlensError(f"boxes have shape {tuple(boxes.shape)}; expected (B, 4), (B, K, 4) or a list of (K, 4)")
        boxes = list(boxes)
    if batch is not None and len(boxes) != batch:
        raise CamlensError(f"{len(boxes)} box sets for {batch} images; give one (K, 4) set per image")
    height, width = int(size[0]), int(size[1])
    ys = torch.arange(height, dtype=torch.float32) + 0.5
    xs = torch.arange(width, dtype=torch.float32) + 0.5
    masks = torch.zeros(len(boxes), height, width, dtype=torch.bool)
    for i, image_boxes in enumerate(boxes):
        image_boxes = torch.as_tensor(image_boxes, dtype=torch.float32).reshape(-1, 4).cpu()
        for x0, y0, x1, y1 in image_boxes.tolist():
            masks[i] |= ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
    return masks


def pointing_game(
    maps: Tensor,
    *,
    boxes: BoxSpec | None = None,
    masks: Tensor | None = None,
    size: Sequence[int] | None = None,
    tolerance: int = 15,
    ties: Ties = "all",
) -> Tensor:
    """Pointing game (Zhang et al., ECCV 2016, "Top-down Neural Attention by Excitation Backprop"): a hit when the
    map's maximum lies within ``tolerance`` pixels of the ground truth of the explained class.

    The ground truth is ``masks`` (B, H, W) bool or ``boxes`` (see :func:`boxes_to_masks`), at ``size`` (default:
    the masks' size, else the maps' size); maps are upsampled to it first.  A point hits when some ground-truth
    pixel lies at Euclidean distance < ``tolerance`` (strict, as TorchRay's reference benchmark) or the point is
    inside.  1-D signals and 3-D volumes: masks (B, L) or (B, D, H, W) (or ``size`` of that rank), distances
    between samples or voxels; (B, 1, H, W) masks without ``size`` are read as 2-D.  Tied maxima: ``"all"``
    (default) hits only when every tied maximum hits, so a flat map is not rewarded; ``"any"`` when one of them
    does; ``"first"`` uses the first maximum in row-major order.  Returns
    (B,) float on the CPU: 1 hit, 0 miss, NaN where the image has no ground truth (skipped, as TorchRay).
    Per-class and mean accuracy: :class:`FaithfulnessTotals`.
    """
    if (boxes is None) == (masks is None):
        raise CamlensError("pointing_game needs the ground truth as exactly one of boxes= or masks=")
    if ties not in ("all", "any", "first"):
        raise CamlensError(f"ties={ties!r}: use 'all', 'any' or 'first'")
    if tolerance < 0:
        raise CamlensError(f"tolerance={tolerance} must be >= 0 pixels")
    batch = maps.shape[0]
    if masks is not None:
        if size is None:
            size = masks.shape[2:] if masks.ndim == 4 and masks.shape[1] == 1 else masks.shape[1:]
        if masks.ndim == len(size) + 2 and masks.shape[1] == 1:
            masks = masks[:, 0]
        truth = masks.detach().cpu().bool()
        if tuple(truth.shape) != (batch, *map(int, size)):
            raise CamlensError(f"masks have shape {tuple(masks.shape)}; expected {(batch, *map(int, size))}")
    else:
        size = maps.shape[-2:] if size is None else size
        truth = boxes_to_masks(boxes, size, batch)  # type: ignore[arg-type]  # boxes is given when masks is not (checked above)
    maps = _as_maps(maps.detach(), size, batch).cpu()
    near = _near(truth, tolerance).flatten(1)
    flat = maps.flatten(1)
    peak = flat == flat.amax(1, keepdim=True)
    if ties == "first":
        hit = near.gather(1, flat.argmax(1, keepdim=True))[:, 0]
    elif ties == "any":
        hit = (peak & near).any(1)
    else:
        hit = ~(peak & ~near).any(1)
    return torch.where(truth.flatten(1).any(1), hit.float(), float("nan"))


def _near(truth: Tensor, tolerance: int) -> Tensor:
    """Where a point hits: inside the ground truth or at Euclidean distance < tolerance of it (any rank), from the
    exact distance transform to the nearest ground-truth point (scipy.ndimage.distance_transform_edt)."""
    from scipy.ndimage import distance_transform_edt

    near = torch.zeros_like(truth)
    for i, image in enumerate(truth.numpy()):
        if image.any():
            near[i] = torch.from_numpy(distance_transform_edt(~image) < max(tolerance, 1))
    return near
