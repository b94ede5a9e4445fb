"""HaS: Hide-and-Seek (Singh & Lee, ICCV 2017, "Hide-and-Seek: Forcing a Network to be Meticulous for
Weakly-supervised Object and Action Localization")."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
from torch import Tensor

from ...errors import CamlensError
from .base import Param, TrainingMethod, check_fraction


def hidden_pixels(
    batch: int, height: int, width: int, patch_size: int, drop_rate: float, generator: torch.Generator
) -> Tensor:
    """The (B, H, W) boolean mask of hidden pixels: the image is cut into a grid of ``patch_size`` x
    ``patch_size`` patches from its top-left corner (the last row and column of patches may be cut short) and
    each patch of each image is hidden independently with probability ``drop_rate``: patch (i, j) of image b
    is hidden iff u[b, i, j] < drop_rate, for u = torch.rand(B, ceil(H / p), ceil(W / p), generator)."""
    rows, cols = -(-height // patch_size), -(-width // patch_size)
    hide = torch.rand(batch, rows, cols, generator=generator) < drop_rate
    return hide.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)[:, :height, :width]


def reference_hidden_pixels(
    batch: int, height: int, width: int, patch_size: int, drop_rate: float, generator: torch.Generator
) -> Tensor:
    """The hidden pixels as wsolevaluation's ``has.py`` draws them: its loop runs ``x`` over the width and ``y``
    over the height in steps of ``patch_size`` and hides ``image[b, :, x:x_end, y:y_end]`` when
    ``random() <= drop_rate``, with ``x_end``, ``y_end`` both clipped to the height, so rows are indexed by ``x``
    and columns by ``y``.  On a square image this is :func:`hidden_pixels`'s grid; on a wider one only the first H
    columns are ever hidden (at 64 x 96 and rate 0.5, a third of the pixels instead of a half).  Patch (x, y) of
    image b is hidden iff u[b, x, y] <= drop_rate for u = torch.rand(B, ceil(W / p), ceil(H / p), generator)."""
    steps_x, steps_y = -(-width // patch_size), -(-height // patch_size)
    hide = torch.rand(batch, steps_x, steps_y, generator=generator) <= drop_rate
    grid = hide.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)
    rows, cols = min(grid.shape[1], height), min(grid.shape[2], height, width)
    out = torch.zeros(batch, height, width, dtype=torch.bool)
    out[:, :rows, :cols] = grid[:, :rows, :cols]
    return out


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
    search_space: ClassVar[dict[str, Param]] = {
        "patch_size": Param("choice", values=(2, 4, 8, 16)),
        "drop_rate": Param("uniform", 0.0, 1.0),
    }
    patch_size: int = 4
    drop_rate: float = 0.5
    reference_grid: bool = False  # the grid of Choe et al.'s loop (:func:`reference_hidden_pixels`)

    def __post_init__(self) -> None:
        if int(self.patch_size) != self.patch_size or self.patch_size < 1:
            raise CamlensError(f"HaS: patch_size={self.patch_size} must be a positive number of pixels")
        self.patch_size = int(self.patch_size)
        check_fraction("HaS", "drop_rate", self.drop_rate)

    def reference(self) -> "HaS":
        return dataclasses.replace(self, reference_grid=True)

    def check_input(self, size: Sequence[int]) -> None:
        if self.patch_size > min(size[-2:]):
            raise CamlensError(f"HaS: patch_size={self.patch_size} is larger than the {size[-2]}x{size[-1]} input")

    def batch(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        b, _, h, w = images.shape
        self.check_input((h, w))
        draw = reference_hidden_pixels if self.reference_grid else hidden_pixels
        hide = draw(b, h, w, self.patch_size, self.drop_rate, generator).to(images.device)
        return images.masked_fill(hide[:, None], 0.0), labels
