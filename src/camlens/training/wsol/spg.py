"""SPG: self-produced guidance (Zhang et al., ECCV 2018, "Self-produced Guidance for Weakly-supervised Object
Localization")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...capture import GapHead, output_logits
from ...errors import CamlensError
from ...maps import normalize
from ...wsolnet.placement import Taps, live_class_maps
from ...wsolnet.spg import BRANCHES, add_branches, has_reference_branches
from .base import Param, TrainingMethod, check_fraction, unwrap

IGNORE = -1  # pseudo-mask value of the uncertain pixels, left out of the loss
MIN_FOREGROUND = 30  # Choe et al.'s code: fewer foreground pixels than this and the threshold drops to 0.7 * max


def pseudo_mask(attention: Tensor, high: float, low: float, min_foreground: int = MIN_FOREGROUND) -> Tensor:
    """SPG's pseudo mask (B, H, W) int64 from attention maps (B, H, W): 1 where attention > ``high`` (or, for a
    map with fewer than ``min_foreground`` such pixels, where it exceeds 0.7 times its maximum), 0 where
    attention < ``low``, and :data:`IGNORE` for the uncertain pixels in between."""
    fg = attention > high
    few = fg.flatten(1).sum(1) < min_foreground
    fallback = attention > 0.7 * attention.flatten(1).amax(1)[:, None, None]
    fg = torch.where(few[:, None, None], fallback, fg)
    mask = torch.full_like(attention, IGNORE, dtype=torch.long)
    mask[fg] = 1
    mask[attention < low] = 0
    return mask


def masked_bce(logits: Tensor, mask: Tensor) -> Tensor:
    """Mean binary cross-entropy with logits over the pixels whose mask is not :data:`IGNORE` (0 if none is)."""
    valid = mask != IGNORE
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[valid], mask[valid].to(logits.dtype))


@dataclass
class SPG(TrainingMethod):
    """SPG: side branches trained against pseudo masks the network produces itself.  B1 and B2 read two
    intermediate feature maps (:func:`camlens.wsolnet.placement.spg_branch_points`, or ``branches``),
    each through its own 3x3 conv + ReLU and then a shared 3x3 conv + ReLU + 1x1 conv to one channel; C reads
    the CAM feature map through a 3x3 conv + ReLU + 1x1 conv.  All side outputs are upsampled (bilinear) to the
    input size.  Loss, with the thresholds (high, low) of each stage:

        CE(logits, y)
        + BCE(B2, mask(normalize(up(M_y)), t1))          M_y: the classifier's map of the label
        + BCE(B1, mask(sigmoid(B2), t2))
        + BCE(C, mask((sigmoid(B1) + sigmoid(B2)) / 2, t3))

    with :func:`pseudo_mask` ignoring the uncertain pixels and the guidance detached.  The map at inference is
    the CAM of the network's classifier.  Branch widths follow Choe et al. (the B channels equal those of the B2
    input, C's hidden width min(512, K)).

    On Choe et al.'s SPG networks (``wsol-vgg16-spg``, ``wsol-resnet50-spg``, ``wsol-inceptionv3-spg``:
    :class:`camlens.networks.wsolref.SPGNet`) the branches are theirs (their widths and taps) and nothing is added;
    M_y is then their class map ``feat_map`` of the label, upsampled before it is normalized, as their
    ``compute_attention`` does.

    Defaults from Choe et al.'s wsolevaluation ``config.py``: ``spg_threshold_1h=0.7``, ``spg_threshold_1l=0.01``,
    ``spg_threshold_2h=0.5``, ``spg_threshold_2l=0.05``, ``spg_threshold_3h=0.7``, ``spg_threshold_3l=0.1``.
    """

    name: ClassVar[str] = "spg"
    search_space: ClassVar[dict[str, Param]] = {
        **{f"threshold_{i}h": Param("uniform", 0.5, 1.0) for i in (1, 2, 3)},
        **{f"threshold_{i}l": Param("uniform", 0.0, 0.5) for i in (1, 2, 3)},
    }
    threshold_1h: float = 0.7
    threshold_1l: float = 0.01
    threshold_2h: float = 0.5
    threshold_2l: float = 0.05
    threshold_3h: float = 0.7
    threshold_3l: float = 0.1
    branches: Sequence[str] | None = None
    head: GapHead | None = field(default=None, init=False, repr=False)
    taps: Taps | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        for i in (1, 2, 3):
            high, low = getattr(self, f"threshold_{i}h"), getattr(self, f"threshold_{i}l")
            check_fraction("SPG", f"threshold_{i}h", high)
            check_fraction("SPG", f"threshold_{i}l", low)
            if low > high:
                raise CamlensError(f"SPG: threshold_{i}l={low} is above threshold_{i}h={high}")
        if self.branches is not None:
            if len(self.branches) != 2:
                raise CamlensError(f"SPG: branches={list(self.branches)} must name two layers (B1, B2)")
            self.branches = tuple(self.branches)

    def thresholds(self) -> tuple[tuple[float, float], ...]:
        return tuple((getattr(self, f"threshold_{i}h"), getattr(self, f"threshold_{i}l")) for i in (1, 2, 3))

    def attach(self, model: nn.Module) -> tuple[str, ...]:
        super().attach(model)
        if has_reference_branches(model):  # Choe et al.'s branches are part of the network
            setattr(model, "keep_outputs", True)
            return ()
        head, b1, b2 = add_branches(model, self.branches)
        self.head, self.taps = head, Taps(model, [b1, b2, head.layer_name])
        return BRANCHES

    def loss(self, model: nn.Module, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        net = unwrap(model)
        size = images.shape[-2:]
        up = lambda t: F.interpolate(t, size=size, mode="bilinear", align_corners=False)[:, 0]  # noqa: E731
        if has_reference_branches(net):  # their network keeps every output its loss reads
            logits = output_logits(model(images))
            out: dict[str, Tensor] | None = getattr(net, "last_outputs", None)
            if out is None:
                raise CamlensError("SPG: the network did not keep its side outputs (is it in training mode?)")
            setattr(net, "last_outputs", None)
            side1, side2, side_c = up(out["logits_b1"]), up(out["logits_b2"]), up(out["logits_c"])
            with torch.no_grad():
                rows = torch.arange(len(targets), device=targets.device)
                label_maps = F.interpolate(out["feat_map"], size=size, mode="bilinear", align_corners=False)
                attention = normalize(label_maps[rows, targets])
            return self._loss(logits, targets, side1, side2, side_c, attention), logits
        if self.head is None or self.taps is None:
            raise CamlensError("SPG: call attach(model) before training")
        with self.taps.recording():
            logits = output_logits(model(images))
        x1, x2, features = self.taps.take()
        shared = net.get_submodule("spg_shared")
        side1 = up(shared(net.get_submodule("spg_b1")(x1)))
        side2 = up(shared(net.get_submodule("spg_b2")(x2)))
        side_c = up(net.get_submodule("spg_c")(features))
        with torch.no_grad():
            attention = normalize(up(live_class_maps(net, self.head, features, targets[:, None])))
        return self._loss(logits, targets, side1, side2, side_c, attention), logits

    def _loss(
        self, logits: Tensor, targets: Tensor, side1: Tensor, side2: Tensor, side_c: Tensor, attention: Tensor
    ) -> Tensor:
        """The loss of the class docstring from the logits, the three side outputs and the label's attention map,
        all at the input size."""
        (h1, l1), (h2, l2), (h3, l3) = self.thresholds()
        with torch.no_grad():
            guide2 = torch.sigmoid(side2)
            fused = (torch.sigmoid(side1) + guide2) / 2
        return (
            F.cross_entropy(logits, targets)
            + masked_bce(side2, pseudo_mask(attention, h1, l1))
            + masked_bce(side1, pseudo_mask(guide2, h2, l2))
            + masked_bce(side_c, pseudo_mask(fused, h3, l3))
        )
