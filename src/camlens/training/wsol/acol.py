"""ACoL: adversarial complementary learning (Zhang et al., CVPR 2018, "Adversarial Complementary Learning for
Weakly Supervised Object Localization")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...capture import GapHead, output_logits
from ...errors import CamlensError
from ...maps import normalize
from ...wsolnet.acol import BRANCH_B, add_branch
from ...wsolnet.placement import Taps, live_class_maps
from .base import Param, TrainingMethod, check_fraction, unwrap


def erased_features(features: Tensor, class_maps: Tensor, threshold: float) -> Tensor:
    """ACoL's erasure: f * [normalize(M_c) < threshold] for features f (B, K, h, w) and branch A's class maps
    M_c (B, h, w); the region where the min-max normalized map reaches ``threshold`` is set to zero."""
    keep = normalize(class_maps) < threshold
    return features * keep[:, None].to(features.dtype)


@dataclass
class ACoL(TrainingMethod):
    """ACoL: two classifiers on the CAM feature map f.  Classifier A is the network's own GAP + linear head;
    classifier B (a new linear layer, ``acol_classifier``) classifies GAP(f') where f' is f erased where A's
    normalized map of the label reaches ``threshold``.  Loss: CE(A) + CE(B); the logits are A's.  The map is
    max(normalize(M^A_c), normalize(M^B_c)), M^B computed on the features erased by A's map of class c
    (:class:`camlens.wsolnet.acol.ACoLCAM`).

    Choe et al.'s backbones give each branch its own two 3x3 convolutions before a 1x1 classifier; here the
    branches share the network up to its CAM layer and differ in their linear classifiers, which works on
    every GAP network (a 1x1 classifier before GAP equals a linear layer after it).

    Default from Choe et al.'s wsolevaluation ``config.py``: ``acol_threshold=0.7``.
    """

    name: ClassVar[str] = "acol"
    search_space: ClassVar[dict[str, Param]] = {"threshold": Param("uniform", 0.0, 1.0)}
    threshold: float = 0.7
    head: GapHead | None = field(default=None, init=False, repr=False)
    taps: Taps | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_fraction("ACoL", "threshold", self.threshold)

    def attach(self, model: nn.Module) -> tuple[str, ...]:
        super().attach(model)
        self.head = add_branch(model)
        self.taps = Taps(model, [self.head.layer_name])
        return (BRANCH_B,)

    def loss(self, model: nn.Module, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        if self.head is None or self.taps is None:
            raise CamlensError("ACoL: call attach(model) before training")
        net = unwrap(model)
        with self.taps.recording():
            logits = output_logits(model(images))
        (features,) = self.taps.take()
        f = F.relu(features) if self.head.feature_act == "relu" else features
        with torch.no_grad():
            maps_a = live_class_maps(net, self.head, features, targets[:, None])[:, 0]
        logits_b = net.get_submodule(BRANCH_B)(erased_features(f, maps_a, self.threshold).mean((-2, -1)))
        return F.cross_entropy(logits, targets) + F.cross_entropy(logits_b, targets), logits

