"""Box geometry in camlens' convention: ``[x0, y0, x1, y1]`` in pixel units with exclusive right/bottom edges;
the area IoU of those rectangles, and boxes moved between grids that cover the same image."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """Area IoU of boxes ``a`` (..., 4) and ``b`` (..., 4) paired by broadcasting, exclusive edges:
    |A ∩ B| / |A ∪ B|; boxes with zero area give IoU 0 (also with themselves).  float64."""
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp_min(0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp_min(0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]).clamp_min(0) * (a[..., 3] - a[..., 1]).clamp_min(0)
    area_b = (b[..., 2] - b[..., 0]).clamp_min(0) * (b[..., 3] - b[..., 1]).clamp_min(0)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-300), torch.zeros_like(union))


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Area IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), exclusive edges: (N, M)."""
    a = torch.as_tensor(a, dtype=torch.float64).reshape(-1, 4)
    b = torch.as_tensor(b, dtype=torch.float64).reshape(-1, 4)
    return paired_iou(a[:, None], b[None])


def scale_boxes(boxes: Tensor, from_size: Sequence[int], to_size: Sequence[int]) -> Tensor:
    """Boxes measured on an (H, W) grid, mapped onto an (H', W') grid covering the same image (a resize without
    crop): x * W' / W and y * H' / H.  Exact for exclusive edges: pixel columns [x0, x1) of the small grid cover
    [x0 W'/W, x1 W'/W) of the large one."""
    h, w = from_size
    h2, w2 = to_size
    scale = torch.tensor([w2 / w, h2 / h, w2 / w, h2 / h], dtype=torch.float64)
    return torch.as_tensor(boxes, dtype=torch.float64) * scale
