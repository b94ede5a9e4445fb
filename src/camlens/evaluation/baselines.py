"""Box baselines: input-independent boxes (the centered box, the best fixed box) scored on the same ground truth as
the model, the floor a localization result should clear."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..boxes import box_iou
from ..metrics.localization import DEFAULT_IOUS, _iou_key


def box_baselines(
    boxes: Sequence[Tensor],
    sizes: Sequence[tuple[int, int]],
    ious: Sequence[float] = DEFAULT_IOUS,
    center_fraction: float = 0.5,
    grid: int = 16,
) -> dict[str, dict]:
    """Input-independent boxes scored on the same ground truth: the centered box covering ``center_fraction`` of
    the width and height, and the best fixed box (in coordinates relative to the image size, on a ``grid``-step
    lattice, chosen on this very data by its accuracy at IoU 0.5, so an upper bound for any box that ignores the
    image).  For each: the
    accuracy at every IoU and at 0.5 (GT-known Loc).  IoU is unchanged by scaling both boxes, so everything is
    computed in relative coordinates."""
    ticks = torch.arange(grid + 1, dtype=torch.float64) / grid
    lo, hi = torch.meshgrid(ticks, ticks, indexing="ij")
    spans = torch.stack([lo[lo < hi], hi[lo < hi]], 1)  # (S, 2) with x0 < x1
    ax, ay = torch.meshgrid(torch.arange(spans.shape[0]), torch.arange(spans.shape[0]), indexing="ij")
    grid_boxes = torch.stack(
        [spans[ax.ravel(), 0], spans[ay.ravel(), 0], spans[ax.ravel(), 1], spans[ay.ravel(), 1]], 1
    )
    c0, c1 = (1 - center_fraction) / 2, (1 + center_fraction) / 2
    candidates = torch.cat([torch.tensor([[c0, c0, c1, c1]], dtype=torch.float64), grid_boxes])
    gts = torch.cat(
        [b.double().reshape(-1, 4) / torch.tensor([w, h, w, h], dtype=torch.float64) for b, (w, h) in zip(boxes, sizes)]
    )
    owner = torch.cat([torch.full((b.reshape(-1, 4).shape[0],), i) for i, b in enumerate(boxes)])
    best = torch.zeros(len(boxes), candidates.shape[0], dtype=torch.float64)
    for start in range(0, gts.shape[0], 64):
        iou = box_iou(gts[start : start + 64], candidates)  # (g, C)
        index = owner[start : start + 64, None].expand_as(iou)
        best.scatter_reduce_(0, index, iou, "amax")
    thr = torch.tensor(ious, dtype=torch.float64)
    hits = (best[None] >= thr[:, None, None]).sum(1)  # (K, C)
    n = max(len(boxes), 1)
    k50 = list(ious).index(0.5)
    # the best fixed box: most hits at IoU 0.5, ties broken by the hits at all IoUs
    pick = 1 + int(torch.argmax(hits[k50, 1:] * (hits.shape[0] * n + 1) + hits[:, 1:].sum(0)))

    def summary(column: int) -> dict:
        acc = {_iou_key(i): float(h) * 100.0 / n for i, h in zip(ious, hits[:, column])}
        return {
            "gt_known_loc": acc[_iou_key(0.5)],
            "maxboxacc": acc[_iou_key(0.5)],
            "maxboxacc_v2": float(np.mean(list(acc.values()))),
            "per_iou": acc,
            "box": [round(float(v), 4) for v in candidates[column]],
        }

    return {"center_box": summary(0), "best_fixed_box": summary(pick)}
