"""Post-processing of raw maps: explicit, named steps that never modify their input.

Maps of 1-D signals, 2-D images and 3-D volumes alike: the last ``spatial_dims`` dimensions (1, 2 or 3) form one
map, every leading dimension indexes maps.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import CamlensError

INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _spatial_dims(maps: Tensor, spatial_dims: int) -> int:
    if spatial_dims not in INTERPOLATION:
        raise CamlensError(f"spatial_dims={spatial_dims}: maps are 1-D (signals), 2-D (images) or 3-D (volumes)")
    if maps.ndim < spatial_dims:
        raise CamlensError(f"maps of shape {tuple(maps.shape)} have fewer than spatial_dims={spatial_dims} dimensions")
    return spatial_dims


def normalize(maps: Tensor, eps: float = 0.0, *, spatial_dims: int = 2) -> Tensor:
    """Min-max scale every map into [0, 1]: (M - min M) / (max M - min M), min and max taken over the map's last
    ``spatial_dims`` dimensions (2: (..., h, w) images; 1: (..., L) signals; 3: (..., d, h, w) volumes; for a
    :class:`camlens.CAMResult`, ``result.spatial_dims``).

    A constant map gives zeros, never NaN.

    Args:
        maps: maps (..., *S), S the last ``spatial_dims`` dimensions.
        eps: spans at most ``eps`` count as constant (zeros).
        spatial_dims: how many trailing dimensions make one map.

    Returns:
        A new tensor of the input's shape, each map in [0, 1].
    """
    flat = maps.flatten(-_spatial_dims(maps, spatial_dims))
    low = flat.amin(-1, keepdim=True)
    span = flat.amax(-1, keepdim=True) - low
    scaled = torch.where(
        span > eps, (flat - low) / span.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat)
    )
    return scaled.view_as(maps)


def upsample(maps: Tensor, size: int | Sequence[int], mode: str | None = None) -> Tensor:
    """Resize maps to ``size``: the last len(size) dimensions of ``maps`` are resized, (L,) for signals, (H, W)
    for images (an int: square), (D, H, W) for volumes.  The default ``mode`` interpolates linearly along each
    resized dimension (linear, bilinear, trilinear) with ``align_corners=False`` (sample centres aligned, as PIL
    and OpenCV resize); any mode of ``torch.nn.functional.interpolate`` of that rank may be given.

    Args:
        maps: maps (..., *S) with len(S) == len(size).
        size: the new spatial size; an int is a square (H, W).
        mode: an interpolation mode of ``torch.nn.functional.interpolate``; None for (bi/tri)linear.

    Returns:
        The maps (..., *size), in the input's dtype.
    """
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    rank = _spatial_dims(maps, len(size))
    mode = INTERPOLATION[rank] if mode is None else mode
    lead = maps.shape[: maps.ndim - rank]
    flat = maps.reshape(-1, 1, *maps.shape[maps.ndim - rank :])
    dtype = flat.dtype
    if dtype in (torch.float16, torch.bfloat16) and flat.device.type == "cpu":
        flat = flat.float()
    align = False if mode in ("linear", "bilinear", "bicubic", "trilinear") else None
    try:
        out = F.interpolate(flat, size=size, mode=mode, align_corners=align)
    except (NotImplementedError, ValueError) as err:
        raise CamlensError(f"upsample mode={mode!r} does not resize {rank}-D maps: {err}".splitlines()[0]) from None
    return out.to(dtype).reshape(*lead, *size)


def fuse(
    maps: Sequence[Tensor], mode: str = "max", size: int | Sequence[int] | None = None, *, spatial_dims: int = 2
) -> Tensor:
    """Combine maps of the same images from several layers, each (..., *S_i) with S_i of ``spatial_dims``
    sizes, into one (..., *S).

    Rule: each map is min-max normalized (:func:`normalize`), upsampled to ``size`` (default: the largest size
    along each dimension among them; :func:`upsample`), and the results are combined elementwise by ``"max"``
    (as torchcam's ``fuse_cams``) or ``"mean"`` (as pytorch-grad-cam's multi-layer aggregation).  The result is
    in [0, 1]; a single map is only normalized.

    Args:
        maps: the maps, one tensor per layer, of the same leading shape.
        mode: ``"max"`` or ``"mean"``.
        size: the spatial size of the result; None for the largest along each dimension.
        spatial_dims: how many trailing dimensions make one map.

    Returns:
        The fused maps (..., *size) in [0, 1].
    """
    if not maps:
        raise ValueError("fuse needs at least one map")
    if mode not in ("max", "mean"):
        raise ValueError(f"fuse mode {mode!r}: use 'max' or 'mean'")
    if size is None:
        size = tuple(max(m.shape[d] for m in maps) for d in range(-spatial_dims, 0))
    elif isinstance(size, int):
        size = (size,) * spatial_dims
    if len(size) != spatial_dims:
        raise CamlensError(f"fuse size {tuple(size)} has {len(size)} dimensions for {spatial_dims}-D maps")
    scaled = [
        normalize(m, spatial_dims=spatial_dims)
        if tuple(m.shape[-spatial_dims:]) == tuple(size)
        else upsample(normalize(m, spatial_dims=spatial_dims), size)
        for m in maps
    ]
    stacked = torch.stack(scaled)
    return stacked.amax(0) if mode == "max" else stacked.mean(0)
