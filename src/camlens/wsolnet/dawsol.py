"""The module DA-WSOL (Zhu et al., CVPR 2022) adds to a network: the target sampling assigner's cache, which a
checkpoint holds."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..capture import GapHead
from .placement import probe, require_linear_head

CACHE = "dawsol_cache"  # the module holding the TSA's cache matrix as buffers (checkpoints and resumes keep it)


class TSACache(nn.Module):
    """The TSA's cache matrix M: the running mean of the universum (background) centre, ``universe`` (K,) over
    ``universe_count`` updates, and one per class, ``centers`` (C, K) over ``counts`` (C,) updates."""

    centers: Tensor
    counts: Tensor
    universe: Tensor
    universe_count: Tensor

    def __init__(self, num_classes: int, channels: int) -> None:
        super().__init__()
        self.register_buffer("centers", torch.zeros(num_classes, channels))
        self.register_buffer("counts", torch.zeros(num_classes))
        self.register_buffer("universe", torch.zeros(channels))
        self.register_buffer("universe_count", torch.zeros(()))


def add_cache(model: nn.Module) -> GapHead:
    """Add DA-WSOL's :class:`TSACache` (:data:`CACHE`, as wide as the network's classifier) to ``model`` in place,
    and return the network's GAP head found by one probing pass."""
    head = probe(model).head
    require_linear_head("DA-WSOL", head)
    num_classes, channels = head.weight.shape
    ref = next(model.parameters())
    model.add_module(CACHE, TSACache(num_classes, channels).to(ref.device))
    return head
