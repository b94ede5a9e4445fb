"""HaS: Hide-and-Seek (Singh & Lee, ICCV 2017, "Hide-and-Seek: Forcing a Network to be Meticulous for
Weakly-supervised Object and Action Localization")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
from torch import Tensor

from ...errors import CamlensError
from .base import Param, TrainingMethod, check_fraction


def hidden_pixels(batch: int, height: int, width: int, patch_size: int, drop_rate: float,
                  generator: torch.Generator) -> Tensor:
    """The (B, H, W) boolean mask of hidden pixels: the image is cut into a grid of ``patch_size`` x
    ``patch_size`` patches from its top-left corner (the last row and column of patches may be cut short) and
    each patch of each image is hidden independently with probability ``drop_rate``: patch (i, j) of image b
    is hidden iff u[b, i, j] < drop_rate, for u = torch.rand(B, ceil(H / p), ceil(W / p), generator)."""
    rows, cols = -(-height // patch_size), -(-width // patch_size)
    hide = torch.rand(batch, rows, cols, generator=generator) < drop_rate
    return hide.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)[:, :height, :width]


@dataclass
class HaS(TrainingMethod):
    """Hide-and-Seek: during training, hide random grid patches of every input image so the network must find
    evidence beyond the most discriminative part.  Hidden pixels are set to 0 in the preprocessed input, i.e.
    to the dataset mean the normalization subtracts (the paper fills them with the mean pixel value).  Nothing
    changes at inference: the map is the CAM of the network's classifier.

    ``patch_size`` is the side of a patch in pixels, as Choe et al.'s ``has_grid_size`` (their loop steps
    over the image by it); ``drop_rate`` the probability that a patch is hidden.  Defaults from Choe et al.'s
    wsolevaluation ``config.py``: ``has_grid_size=4``, ``has_drop_rate=0.5``.
    """

    name: ClassVar[str] = "has"
    search_space: ClassVar[dict[str, Param]] = {"patch_size": Param("choice", values=(2, 4, 8, 16)),
                                                "drop_rate": Param("uniform", 0.0, 1.0)}
    patch_size: int = 4
    drop_rate: float = 0.5

    def __post_init__(self) -> None:
        if int(self.patch_size) != self.patch_size or self.patch_size < 1:
            raise CamlensError(f"HaS: patch_size={self.patch_size} must be a positive number of pixels")
        self.patch_size = int(self.patch_size)
        check_fraction("HaS", "drop_rate", self.drop_rate)

    def check_input(self, size: Sequence[int]) -> None:
        if self.patch_size > min(size[-2:]):
            raise CamlensError(f"HaS: patch_size={self.patch_size} is larger than the {size[-2]}x{size[-1]} input")

    def batch(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        b, _, h, w = images.shape
        self.check_input((h, w))
        hide = hidden_pixels(b, h, w, self.patch_size, self.drop_rate, generator).to(images.device)
        return images.masked_fill(hide[:, None], 0.0), labels
