"""ADL: the attention-based dropout layer (Choe & Shim, CVPR 2019, "Attention-based Dropout Layer for Weakly
Supervised Object Localization")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import torch
from torch import Tensor, nn

from ...capture import resolve_module
from .base import Param, TrainingMethod, check_fraction
from .placement import ReplaceOutput, adl_positions

MODULES = "wsol_adl"  # the ModuleList the layers are registered under (no parameters: checkpoints are unchanged)


class ADL(nn.Module):
    """The attention-based dropout layer.  For features f (B, K, h, w), the self-attention map is the channel mean
    a = mean_k f_k (B, 1, h, w); each training pass draws one of two maps for the whole batch:

    - the drop mask, with probability ``drop_rate``: 1 where a < ``threshold`` * max_xy a, else 0 (hides the most
      discriminative region);
    - the importance map sigmoid(a), otherwise (highlights it);

    and returns f times that map.  At evaluation it is the identity (returns its input).  The draw uses
    ``generator`` when set (the training loop's, so a resumed run draws the same), else torch's global one.
    """

    def __init__(self, drop_rate: float = 0.75, threshold: float = 0.9) -> None:
        super().__init__()
        check_fraction("ADL", "drop_rate", drop_rate)
        check_fraction("ADL", "threshold", threshold)
        self.drop_rate = float(drop_rate)
        self.threshold = float(threshold)
        self.generator: torch.Generator | None = None

    def attention(self, x: Tensor) -> Tensor:
        return x.mean(1, keepdim=True)

    def drop_mask(self, attention: Tensor) -> Tensor:
        peak = attention.amax((-2, -1), keepdim=True)
        return (attention < self.threshold * peak).to(attention.dtype)

    def importance_map(self, attention: Tensor) -> Tensor:
        return torch.sigmoid(attention)

    def draws_drop_mask(self) -> bool:
        return bool(torch.rand((), generator=self.generator) < self.drop_rate)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        a = self.attention(x)
        return x * (self.drop_mask(a) if self.draws_drop_mask() else self.importance_map(a))

    def extra_repr(self) -> str:
        return f"drop_rate={self.drop_rate}, threshold={self.threshold}"


@dataclass
class ADLMethod(TrainingMethod):
    """ADL (Choe & Shim, CVPR 2019): :class:`ADL` layers at the positions of Choe et al.'s code (see
    :func:`camlens.training.wsol.placement.adl_positions`; ``positions`` names other modules), identity at
    evaluation, so the map is the CAM of the network's own classifier.

    Defaults from Choe et al.'s wsolevaluation ``config.py``: ``adl_drop_rate=0.75``, ``adl_threshold=0.9``.
    """

    name: ClassVar[str] = "adl"
    search_space: ClassVar[dict[str, Param]] = {"drop_rate": Param("uniform", 0.0, 1.0),
                                                "threshold": Param("uniform", 0.0, 1.0)}
    drop_rate: float = 0.75
    threshold: float = 0.9
    positions: Sequence[str] | None = None
    layers: list[ADL] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        check_fraction("ADL", "drop_rate", self.drop_rate)
        check_fraction("ADL", "threshold", self.threshold)
        if self.positions is not None:
            self.positions = tuple(self.positions)

    def attach(self, model: nn.Module) -> tuple[str, ...]:
        super().attach(model)
        names = list(self.positions) if self.positions is not None else adl_positions(model)
        targets = [resolve_module(model, n)[1] for n in names]
        self.layers = [ADL(self.drop_rate, self.threshold) for _ in names]
        model.add_module(MODULES, nn.ModuleList(self.layers))
        for target, layer in zip(targets, self.layers):
            target.register_forward_hook(ReplaceOutput(layer))
        return ()

    def batch(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        for layer in self.layers:
            layer.generator = generator
        return images, labels
