"""CutMix (Yun et al., ICCV 2019, "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable
Features")."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import CamlensError
from .base import Param, TrainingMethod, check_fraction


@dataclass
class MixedTargets:
    """Labels of a CutMix batch: the loss is ``weight * CE(logits, labels) + (1 - weight) * CE(logits, pasted)``,
    ``weight`` being the share of each image left unpasted."""

    labels: Tensor
    pasted: Tensor
    weight: float


def cutmix_box(height: int, width: int, lam: float, cy: int, cx: int) -> tuple[int, int, int, int]:
    """The pasted box ``(y0, y1, x0, x1)`` (exclusive ends) of Yun et al.: sides r*H and r*W truncated to
    integers, with r = sqrt(1 - lam), centred on (cy, cx), each half side rounded down, clipped to the image."""
    r = math.sqrt(1.0 - lam)
    half_h, half_w = int(height * r) // 2, int(width * r) // 2
    return (
        min(max(cy - half_h, 0), height),
        min(max(cy + half_h, 0), height),
        min(max(cx - half_w, 0), width),
        min(max(cx + half_w, 0), width),
    )


@dataclass
class CutMix(TrainingMethod):
    """CutMix: with probability ``prob`` per batch, a box of area share about 1 - lam, lam ~ Beta(beta, beta),
    is cut from a shuffled copy of the batch and pasted into each image; labels are mixed by area, with
    weight = 1 - (box area) / (H W) exactly (the box clipped to the image) on the image's own label.  Nothing
    changes at inference: the map is the CAM of the network's classifier.

    Defaults from Choe et al.'s wsolevaluation ``config.py``: ``cutmix_beta=1.0``, ``cutmix_prob=1.0``.
    """

    name: ClassVar[str] = "cutmix"
    search_space: ClassVar[dict[str, Param]] = {"beta": Param("uniform", 0.0, 2.0), "prob": Param("uniform", 0.0, 1.0)}
    beta: float = 1.0
    prob: float = 1.0

    def __post_init__(self) -> None:
        if not self.beta >= 0:
            raise CamlensError(f"CutMix: beta={self.beta} must be >= 0 (0 turns CutMix off)")
        check_fraction("CutMix", "prob", self.prob)

    def batch(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Any]:
        b, _, h, w = images.shape
        if self.beta <= 0 or not float(torch.rand((), generator=generator)) < self.prob:
            return images, labels
        # torch's Beta sampler takes no generator: numpy's, seeded from the loop's generator, keeps runs reproducible
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        lam = float(np.random.default_rng(seed).beta(self.beta, self.beta))
        order = torch.randperm(b, generator=generator).to(images.device)
        cy, cx = int(torch.randint(h, (), generator=generator)), int(torch.randint(w, (), generator=generator))
        y0, y1, x0, x1 = cutmix_box(h, w, lam, cy, cx)
        mixed = images.clone()
        mixed[:, :, y0:y1, x0:x1] = images[order, :, y0:y1, x0:x1]
        weight = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
        return mixed, MixedTargets(labels, labels[order], weight)

    def loss(self, model: nn.Module, images: Tensor, targets: Any) -> tuple[Tensor, Tensor]:
        logits = model(images)
        if isinstance(targets, MixedTargets):
            loss = targets.weight * F.cross_entropy(logits, targets.labels) + (1.0 - targets.weight) * F.cross_entropy(
                logits, targets.pasted
            )
            return loss, logits
        return F.cross_entropy(logits, targets), logits
