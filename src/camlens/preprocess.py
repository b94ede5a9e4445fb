"""Preprocessing of images for a model: resize the whole image and normalize, as one small JSON-able record that
checkpoints carry."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import CamlensError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


MAX_INPUT_SIDE = 4096  # pixels per side of a model's input, at most (torchvision's detectors use 800 to 1333)


@dataclass(frozen=True)
class Preprocess:
    """Resize to ``size`` (whole image, no crop, so maps align with the original image) and normalize.

    Takes float images in [0, 1], (3, H, W) or (B, 3, H, W); returns (B, 3, h, w) float32.  The resize is never
    off: a model runs at its input size whatever the upload's (or a checkpoint's metadata) says, so its cost is
    fixed.  ``size`` must be two sides of 1 to :data:`MAX_INPUT_SIDE` pixels.

    Attributes:
        size: the model input (height, width).
        mean: the normalization mean, per channel.
        std: the normalization standard deviation, per channel.
    """

    size: tuple[int, int] = (224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        size = self.size
        if (
            not isinstance(size, (tuple, list))
            or len(size) != 2
            or not all(isinstance(v, int) and 1 <= v <= MAX_INPUT_SIDE for v in size)
        ):
            raise CamlensError(
                f"the model's input size must be (height, width), each 1 to {MAX_INPUT_SIDE} pixels; "
                f"got {size!r} (pass --size N)"
            )
        object.__setattr__(self, "size", (int(size[0]), int(size[1])))

    def __call__(self, images: Tensor) -> Tensor:
        x = images if images.ndim == 4 else images[None]
        x = x.float()
        if tuple(x.shape[-2:]) != tuple(self.size):
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Preprocess":
        """A checkpoint's preprocessing; one without a size (null or missing) gets the default 224 x 224, never
        the upload's own resolution."""
        size = data.get("size")
        return cls(tuple(size) if size else cls.size, tuple(data["mean"]), tuple(data["std"]))
