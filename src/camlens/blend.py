"""Overlays as bytes by table lookup, pixel for pixel what :func:`camlens.render.overlay` then
:func:`camlens.render.to_pil` give, for the file pipeline's many images.

``overlay`` blends in float32: out_c = round(255 * clamp((1 - alpha) * v_c / 255 + alpha * lut_c[j], 0, 1)), with
v_c the image's byte in channel c and j = round(255 * clamp(Up(normalize(cam)), 0, 1)) the colormap index
(``classic``: 0.3 * lut_c[j] + 0.5 * v_c / 255).  Both v and j take 256 values, so the output byte is a function
of (c, v, j): a 3 x 256 x 256 byte table, computed once per colormap and blend by the same float32 tensor
operations as ``overlay``, then one lookup per pixel and channel in numpy.  numpy runs these on the calling
thread alone, so render threads beside the model do not compete for its intra-op threads.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from .errors import CamlensError
from .maps import normalize, upsample
from .render import _lut, to_bytes

# matplotlib's "jet" (its _cm.py segment data, as published in matplotlib): x -> channel value, piecewise linear
_JET = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}


@lru_cache(maxsize=8)
def colormap_table(colormap: str) -> Tensor:
    """(256, 3) float32 RGB, equal to ``camlens.render`` colormap tables; "jet" without importing matplotlib.

    For jet, entry i is the linear interpolation of the segment data at x = i / 255 in float64, as matplotlib
    builds its 256-entry lookup table (its ``Colormap.__call__`` at i / 255 reads entry i).
    """
    if colormap != "jet":
        return _lut(colormap)
    x = np.linspace(0.0, 1.0, 256)
    channels = []
    for name in ("red", "green", "blue"):
        xs, ys = (np.array(v) for v in zip(*_JET[name]))
        ind = np.searchsorted(xs, x)[1:-1]
        inner = (x[1:-1] - xs[ind - 1]) / (xs[ind] - xs[ind - 1]) * (ys[ind] - ys[ind - 1]) + ys[ind - 1]
        channels.append(np.clip(np.concatenate([ys[:1], inner, ys[-1:]]), 0.0, 1.0))
    return torch.from_numpy(np.stack(channels, 1).astype(np.float32))


@lru_cache(maxsize=16)
def blend_table(colormap: str, alpha: float, classic: bool) -> np.ndarray:
    """(3, 256 * 256) uint8: entry [c, v * 256 + j] is overlay's output byte for image byte v and colormap index j."""
    if not 0.0 <= alpha <= 1.0:
        raise CamlensError(f"alpha={alpha} must be between 0 and 1")
    heat = colormap_table(colormap).T[:, None, :]  # (3, 1, 256): channel, -, j
    img = torch.arange(256).to(torch.uint8).float().div_(255)[None, :, None]  # (1, 256, 1): v / 255 as to_tensor
    blended = (0.3 * heat + 0.5 * img if classic else (1 - alpha) * img + alpha * heat).clamp(0, 1)
    return to_bytes(blended).reshape(3, -1).numpy()


def colormap_index(cam: Tensor, size: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 j = round(255 * clamp(Up(normalize(cam)), 0, 1)) at ``size``, as ``render.colorize`` indexes."""
    return to_bytes(upsample(normalize(cam.float()), size)).cpu().numpy()


def blend(
    image: np.ndarray, index: np.ndarray, colormap: str = "jet", alpha: float = 0.5, classic: bool = False
) -> np.ndarray:
    """The overlay of an (H, W, 3) uint8 image with colormap indices (H, W) uint8, as (H, W, 3) uint8."""
    table = blend_table(colormap, float(alpha), classic)
    key = (image.astype(np.uint16) << 8) | index[..., None]
    out = np.empty_like(image)
    for c in range(3):
        np.take(table[c], key[..., c], out=out[..., c], mode="clip")  # indices are < 65536: no check needed
    return out
