"""ADL: the attention-based dropout layer (Choe & Shim, CVPR 2019, "Attention-based Dropout Layer for Weakly
Supervised Object Localization").  The layer itself is :class:`camlens.wsolnet.adl.ADL` (a checkpoint's network
needs it); this is the training method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import torch
from torch import Tensor, nn

from ...wsolnet import ADL_DROP_RATE, ADL_THRESHOLD
from ...wsolnet.adl import ADL, add_layers
from .base import Param, TrainingMethod, check_fraction


@dataclass
class ADLMethod(TrainingMethod):
    """ADL (Choe & Shim, CVPR 2019): :class:`ADL` layers at the positions of Choe et al.'s code (see
    :func:`camlens.wsolnet.placement.adl_positions`; ``positions`` names other modules), identity at
    evaluation, so the map is the CAM of the network's own classifier.

    Defaults from Choe et al.'s wsolevaluation ``config.py``: ``adl_drop_rate=0.75``, ``adl_threshold=0.9``.
    """

    name: ClassVar[str] = "adl"
    search_space: ClassVar[dict[str, Param]] = {
        "drop_rate": Param("uniform", 0.0, 1.0),
        "threshold": Param("uniform", 0.0, 1.0),
    }
    drop_rate: float = ADL_DROP_RATE
    threshold: float = ADL_THRESHOLD
    positions: Sequence[str] | None = None
    layers: list[ADL] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        check_fraction("ADL", "drop_rate", self.drop_rate)
        check_fraction("ADL", "threshold", self.threshold)
        if self.positions is not None:
            self.positions = tuple(self.positions)

    def attach(self, model: nn.Module) -> tuple[str, ...]:
        super().attach(model)
        self.layers = add_layers(model, self.positions, self.drop_rate, self.threshold)
        return ()

    def batch(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        for layer in self.layers:
            layer.generator = generator
        return images, labels
