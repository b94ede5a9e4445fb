"""Post-processing of raw maps: explicit, named steps that never modify their input."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def normalize(maps: Tensor, eps: float = 0.0) -> Tensor:
    """Min-max scale every map (over its last two dims) into [0, 1]: (M - min M) / (max M - min M).

    A constant map gives zeros, never NaN.  Works on any shape (..., h, w) and returns a new tensor.
    """
    flat = maps.flatten(-2)
    low = flat.amin(-1, keepdim=True)
    span = flat.amax(-1, keepdim=True) - low
    scaled = torch.where(span > eps, (flat - low) / span.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return scaled.view_as(maps)


def upsample(maps: Tensor, size: int | Sequence[int], mode: str = "bilinear") -> Tensor:
    """Resize maps (..., h, w) to ``size`` (an int for square, or (H, W)) by bilinear interpolation with
    ``align_corners=False`` (pixel centres aligned, as PIL and OpenCV resize)."""
    if isinstance(size, int):
        size = (size, size)
    size = (int(size[0]), int(size[1]))
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    dtype = flat.dtype
    if dtype in (torch.float16, torch.bfloat16) and flat.device.type == "cpu":
        flat = flat.float()
    align = False if mode in ("bilinear", "bicubic") else None
    out = F.interpolate(flat, size=size, mode=mode, align_corners=align)
    return out.to(dtype).reshape(*lead, *size)


def fuse(maps: Sequence[Tensor], mode: str = "max", size: int | Sequence[int] | None = None) -> Tensor:
    """Combine maps of the same images from several layers, each (..., h_i, w_i), into one (..., H, W).

    Rule: each map is min-max normalized (:func:`normalize`), bilinearly upsampled to ``size`` (default: the
    largest height and the largest width among them), and the results are combined elementwise by ``"max"``
    (as torchcam's ``fuse_cams``) or ``"mean"`` (as pytorch-grad-cam's multi-layer aggregation).  The result is
    in [0, 1]; a single map is only normalized.
    """
    if not maps:
        raise ValueError("fuse needs at least one map")
    if mode not in ("max", "mean"):
        raise ValueError(f"fuse mode {mode!r}: use 'max' or 'mean'")
    if size is None:
        size = (max(m.shape[-2] for m in maps), max(m.shape[-1] for m in maps))
    elif isinstance(size, int):
        size = (size, size)
    scaled = [normalize(m) if tuple(m.shape[-2:]) == tuple(size) else upsample(normalize(m), size) for m in maps]
    stacked = torch.stack(scaled)
    return stacked.amax(0) if mode == "max" else stacked.mean(0)
