"""The modules ADL (Choe & Shim, CVPR 2019) adds to a network: attention-based dropout layers, identity at
evaluation and without parameters, hooked on the outputs of the modules at its positions."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..capture import resolve_module
from .base import check_fraction
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


def add_layers(model: nn.Module, positions: Sequence[str] | None, drop_rate: float, threshold: float) -> list[ADL]:
    """Add one :class:`ADL` layer after each module of ``positions`` (or
    :func:`~camlens.wsolnet.placement.adl_positions`), registered under :data:`MODULES` and applied by forward
    hooks on those modules; returns the layers."""
    names = list(positions) if positions is not None else adl_positions(model)
    targets = [resolve_module(model, n)[1] for n in names]
    layers = [ADL(drop_rate, threshold) for _ in names]
    model.add_module(MODULES, nn.ModuleList(layers))
    for target, layer in zip(targets, layers):
        target.register_forward_hook(ReplaceOutput(layer))
    return layers
