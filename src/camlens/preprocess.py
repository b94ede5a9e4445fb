"""Preprocessing of images for a model: resize the whole image and normalize, as one small JSON-able record that
checkpoints carry."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Resize to ``size`` (whole image, no crop, so maps align with the original image) and normalize.

    Takes float images in [0, 1], (3, H, W) or (B, 3, H, W); returns (B, 3, h, w) float32.
    """

    size: tuple[int, int] | None = (224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __call__(self, images: Tensor) -> Tensor:
        x = images if images.ndim == 4 else images[None]
        x = x.float()
        if self.size is not None and tuple(x.shape[-2:]) != tuple(self.size):
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Preprocess":
        size = data.get("size")
        return cls(tuple(size) if size else None, tuple(data["mean"]), tuple(data["std"]))
