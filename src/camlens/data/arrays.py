"""NumPy ``.npy`` inputs: 2-D images and 3-D volumes for the file-based commands.

Files are untrusted: read with ``allow_pickle=False`` (object arrays are refused), under a size limit, and every
problem is one :class:`~camlens.data.images.ImageError` line naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .images import ImageError

VOLUME_SHAPES = "(D, H, W) or (C, D, H, W)"
IMAGE_SHAPES = "(H, W), (H, W, C) or (C, H, W) with C = 1 or 3"


def input_rank(model: nn.Module) -> int:
    """The spatial rank a model reads: that of its first convolution (1, 2 or 3); 2 when it has none."""
    for module in model.modules():
        for rank, conv in enumerate((nn.Conv1d, nn.Conv2d, nn.Conv3d), 1):
            if isinstance(module, conv):  # subclasses too (timm's Conv2dSame)
                return rank
    return 2


def _scaled(array: np.ndarray) -> Tensor:
    """Values in [0, 1]: integers by their type's range, floats as they are when already in [0, 1], else min-max."""
    if array.dtype == np.bool_:
        return torch.from_numpy(array.astype(np.float32))
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        return torch.from_numpy(((array.astype(np.float64) - info.min) / (info.max - info.min)).astype(np.float32))
    if not np.issubdtype(array.dtype, np.floating):
        raise ImageError(f"an array of {array.dtype} is not numeric")
    values = torch.from_numpy(array.astype(np.float32))
    if not torch.isfinite(values).all():
        raise ImageError("the array holds NaN or infinite values")
    low, high = values.min(), values.max()
    if low >= 0 and high <= 1:
        return values
    return (values - low) / (high - low) if high > low else torch.zeros_like(values)


def load_array(path: str | Path, rank: int, max_values: int) -> Tensor:
    """A ``.npy`` file as an image (3, H, W) for ``rank`` 2, or a volume (C, D, H, W) for ``rank`` 3, in [0, 1]."""
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{path}: is a folder")
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:  # object arrays need pickle: refused
        raise ImageError(f"{path}: not a readable .npy array ({str(err).splitlines()[0]})") from None
    if array.size == 0:
        raise ImageError(f"{path}: an empty array (shape {array.shape})")
    if array.size > max_values:
        raise ImageError(f"{path}: {array.size} values are over the limit of {max_values}")
    try:
        values = _scaled(np.asarray(array))
    except ImageError as err:
        raise ImageError(f"{path}: {err}") from None
    except (ValueError, OSError) as err:  # the data ends before the header's shape does
        raise ImageError(f"{path}: not a readable .npy array ({err})") from None
    shape = tuple(values.shape)
    if rank == 3:
        if values.ndim == 3:
            return values[None]
        if values.ndim == 4 and values.shape[0] <= 4:
            return values
        raise ImageError(
            f"{path}: an array of shape {shape} is not a volume; this model takes 3-D volumes {VOLUME_SHAPES}"
        )
    if rank == 2:
        if values.ndim == 2:
            return values.expand(3, *shape)
        if values.ndim == 3 and shape[0] in (1, 3):
            return values.expand(3, *shape[1:])
        if values.ndim == 3 and shape[-1] in (1, 3):
            return values.permute(2, 0, 1).expand(3, *shape[:2])
        raise ImageError(
            f"{path}: an array of shape {shape} is not an image; this model takes 2-D images {IMAGE_SHAPES}"
        )
    raise ImageError(f"{path}: this model reads {rank}-D inputs; .npy files are read as 2-D images or 3-D volumes")


def prepare_volume(
    volume: Tensor, size: tuple[int, int] | None, mean: tuple[float, ...], std: tuple[float, ...], channels: int
) -> Tensor:
    """A volume (C, D, H, W) as a model input (1, channels, D, h, w): each slice resized to ``size`` (h, w)
    (depth kept), single-channel volumes repeated to ``channels``, then normalized per channel."""
    x = volume[None].float()
    if x.shape[1] == 1 and channels > 1:
        x = x.expand(1, channels, *x.shape[2:])
    if x.shape[1] != channels:
        raise ImageError(f"a volume with {x.shape[1]} channels does not fit a model reading {channels}")
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=(x.shape[2], *size), mode="trilinear", align_corners=False)
    mean_t = torch.tensor(mean[:channels] if len(mean) >= channels else mean * channels, device=x.device)
    std_t = torch.tensor(std[:channels] if len(std) >= channels else std * channels, device=x.device)
    return (x - mean_t.view(1, -1, 1, 1, 1)) / std_t.view(1, -1, 1, 1, 1)


def input_channels(model: nn.Module) -> int:
    """In-channels of the model's first convolution (3 when it has none)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return int(module.in_channels)
    return 3
