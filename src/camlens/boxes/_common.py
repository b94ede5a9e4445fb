"""The input checks the box modules share: maps as a numeric numpy array of shape (..., H, W), and the one-line
error for maps that are not 2-D."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from torch import Tensor

from ..errors import CamlensError


def boxes_are_2d(shape: Sequence[int], expected: str, what: str = "maps") -> CamlensError:
    """The one-line error for maps that are not 2-D where boxes (paper boxes, the WSOL sweep) need them."""
    return CamlensError(
        f"boxes are 2-D only: {what} must be {expected}, got shape {tuple(shape)}; 1-D signals and 3-D volumes "
        "have no boxes (use deletion, insertion or the pointing game with masks)"
    )


def as_numpy_maps(maps: Tensor | np.ndarray, what: str = "maps", finite: bool = True) -> np.ndarray:
    arr = maps.detach().cpu().numpy() if isinstance(maps, Tensor) else np.asarray(maps)
    if arr.ndim < 2:
        raise CamlensError(f"{what} must have shape (..., H, W); got shape {tuple(arr.shape)}")
    if arr.dtype.kind not in "fiub":
        raise CamlensError(f"{what} must be numeric; got dtype {arr.dtype}")
    if finite and arr.size and not np.isfinite(arr).all():
        raise CamlensError(
            f"{what} contain NaN or infinite values; fix the map (e.g. torch.nan_to_num) before boxing it"
        )
    if 0 in arr.shape[-2:]:
        raise CamlensError(f"{what} have an empty spatial size {tuple(arr.shape[-2:])}")
    return arr
