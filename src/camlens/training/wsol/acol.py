"""ACoL: adversarial complementary learning (Zhang et al., CVPR 2018, "Adversarial Complementary Learning for
Weakly Supervised Object Localization")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...capture import GapHead, output_logits
from ...errors import CamlensError
from ...wsolnet import ACOL_THRESHOLD
from ...wsolnet.acol import BRANCH_B, add_branch, erased_features, has_reference_heads
from ...wsolnet.placement import Taps, live_class_maps
from .base import Param, TrainingMethod, check_fraction, unwrap


@dataclass
class ACoL(TrainingMethod):
    """ACoL: two classifiers on the CAM feature map f.  Classifier A is the network's own GAP + linear head;
    classifier B (a new linear layer, ``acol_classifier``) classifies GAP(f') where f' is f erased where A's
    normalized map of the label reaches ``threshold``.  Loss: CE(A) + CE(B); the logits are A's.  The map is
    max(normalize(M^A_c), normalize(M^B_c)), M^B computed on the features erased by A's map of class c
    (:class:`camlens.wsolnet.acol.ACoLCAM`).

    On Choe et al.'s ACoL networks (``wsol-vgg16-acol``, ``wsol-resnet50-acol``, ``wsol-inceptionv3-acol``:
    :class:`camlens.networks.wsolref.ACoLNet`) the branches are theirs: each has its own two 3x3 convolutions
    before a 1x1 classifier, A reads the backbone's features f and B reads f erased, and nothing is added.  On any
    other GAP network (camlens's shared-head form) the branches share the network up to its CAM layer and differ
    in their linear classifiers (a 1x1 classifier before GAP equals a linear layer after it).

    Default from Choe et al.'s wsolevaluation ``config.py``: ``acol_threshold=0.7``.
    """

    name: ClassVar[str] = "acol"
    search_space: ClassVar[dict[str, Param]] = {"threshold": Param("uniform", 0.0, 1.0)}
    threshold: float = ACOL_THRESHOLD
    head: GapHead | None = field(default=None, init=False, repr=False)
    taps: Taps | None = field(default=None, init=False, repr=False)
    head_tap: "_HeadTap | None" = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_fraction("ACoL", "threshold", self.threshold)

    def attach(self, model: nn.Module) -> tuple[str, ...]:
        super().attach(model)
        if has_reference_heads(model):  # Choe et al.'s heads are part of the network
            self.head_tap = _HeadTap()
            model.get_submodule("classifier_A").register_forward_hook(self.head_tap)
            return ()
        self.head = add_branch(model)
        self.taps = Taps(model, [self.head.layer_name])
        return (BRANCH_B,)

    def loss(self, model: nn.Module, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        if self.head_tap is not None:
            return self._reference_loss(model, images, targets)
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

    def _reference_loss(self, model: nn.Module, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Their ``AcolBase._acol_logits`` + ``get_loss``: CE(A) + CE(B), B on f erased by A's map of the label."""
        assert self.head_tap is not None
        net: Any = unwrap(model)
        self.head_tap.on = True
        try:
            logits = output_logits(model(images))
        finally:
            self.head_tap.on = False
        features, maps_a = self.head_tap.take()
        label_maps = maps_a.detach()[torch.arange(len(targets), device=targets.device), targets]
        logits_b = net.avgpool(net.classifier_B(erased_features(features, label_maps, self.threshold))).flatten(1)
        return F.cross_entropy(logits, targets) + F.cross_entropy(logits_b, targets), logits


class _HeadTap:
    """Forward hook on their ``classifier_A``: keeps its input (the features f) and output (A's class maps) while
    ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.value: tuple[Tensor, Tensor] | None = None

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        if self.on:
            self.value = (args[0], output)

    def take(self) -> tuple[Tensor, Tensor]:
        if self.value is None:
            raise CamlensError("ACoL: classifier_A did not run in the forward pass")
        value, self.value = self.value, None
        return value
