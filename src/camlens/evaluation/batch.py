"""A batch of images through an explainer, as the model evaluation and ``camlens localize`` share it: the model
input, the maps at each image's size, and boxes from maps by protocol name."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..boxes import paper_boxes, wsol_sweep
from ..constants import PAPER_THRESHOLD
from ..errors import CamlensError
from ..maps import normalize, upsample


def explain_batch(loaded, explainer, images: Sequence[Tensor], classes: Sequence[int] | None, topk: int = 1):
    """The model input (B, 3, h, w) and the explainer's result for ``images`` (each (3, H_i, W_i) in [0, 1]) and
    ``classes`` (one per image) or the top-``topk`` predictions."""
    device = next(loaded.model.parameters()).device
    x = torch.cat([loaded.preprocess(img.to(device, non_blocking=True)) for img in images])
    return x, explainer(x, None if classes is None else list(classes), topk=topk)


def image_maps(maps: Tensor, images: Sequence[Tensor], normalized: bool = True) -> list[Tensor]:
    """Raw maps (B, N, h, w) upsampled (bilinear) to each image's size, and min-max normalized unless not
    ``normalized``, on the maps' device and batched when the images share a size, then moved to the CPU: a list of
    (N, H_i, W_i)."""
    post = normalize if normalized else (lambda m: m)
    sizes = [tuple(img.shape[-2:]) for img in images]
    if len(set(sizes)) == 1:
        return list(post(upsample(maps.detach().float(), sizes[0])).cpu())
    return [post(upsample(m.detach().float(), size)).cpu() for m, size in zip(maps, sizes)]


def map_boxes(maps: Tensor, protocol: str = "paper", threshold: float = PAPER_THRESHOLD) -> Tensor:
    """Boxes (N, 4) for maps (N, H, W): the paper protocol (``threshold`` of the max of the raw map, largest
    connected component, exact box) or ``wsol`` (the largest contour at ``threshold`` of the min-max normalized
    map, as Choe et al. score it)."""
    if protocol == "paper":
        return paper_boxes(maps, threshold)
    if protocol == "wsol":
        if not 0 <= threshold < 1:
            raise CamlensError(f"--threshold {threshold} must be in [0, 1) for the wsol protocol")
        sweep = wsol_sweep(maps, [threshold])
        return sweep.protocol_largest()[:, 0].double()
    raise CamlensError(f"unknown protocol {protocol!r}; use paper or wsol")
