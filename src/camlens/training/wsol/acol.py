"""ACoL: adversarial complementary learning (Zhang et al., CVPR 2018, "Adversarial Complementary Learning for
Weakly Supervised Object Localization")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...capture import CamlensError, GapHead, LayerCapture, output_logits
from ...maps import normalize
from ...methods.base import CAMResult, ClassSpec, Explainer, select_classes
from .base import Param, TrainingMethod, check_fraction, unwrap
from .placement import Taps, live_class_maps, probe, require_linear_head

BRANCH_B = "acol_classifier"  # the second classifier's module name on the network


def has_reference_heads(model: nn.Module) -> bool:
    """Whether ``model`` is one of Choe et al.'s ACoL networks (:class:`camlens.networks.wsolref.ACoLNet`: its own
    ``classifier_A``, ``classifier_B`` and ``trunk``), told by its modules so this side needs no import of them."""
    return isinstance(getattr(model, "classifier_B", None), nn.Sequential) and callable(getattr(model, "trunk", None))


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
    (:class:`ACoLCAM`).

    On Choe et al.'s ACoL networks (``wsol-vgg16-acol``, ``wsol-resnet50-acol``, ``wsol-inceptionv3-acol``:
    :class:`camlens.networks.wsolref.ACoLNet`) the branches are theirs: each has its own two 3x3 convolutions
    before a 1x1 classifier, A reads the backbone's features f and B reads f erased, and nothing is added.  On any
    other GAP network (camlens's shared-head form) the branches share the network up to its CAM layer and differ
    in their linear classifiers (a 1x1 classifier before GAP equals a linear layer after it).

    Default from Choe et al.'s wsolevaluation ``config.py``: ``acol_threshold=0.7``.
    """

    name: ClassVar[str] = "acol"
    search_space: ClassVar[dict[str, Param]] = {"threshold": Param("uniform", 0.0, 1.0)}
    threshold: float = 0.7
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
        head = probe(model).head
        require_linear_head("ACoL", head)
        num_classes, channels = head.weight.shape
        ref = next(model.parameters())
        model.add_module(BRANCH_B, nn.Linear(channels, num_classes).to(ref.device))
        self.head, self.taps = head, Taps(model, [head.layer_name])
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

    def explainer(self, model: nn.Module) -> Explainer:
        return ACoLCAM(model, threshold=self.threshold)


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


class ACoLCAM(Explainer):
    """ACoL's localization map (Zhang et al., CVPR 2018): M_c = max(normalize(M^A_c), normalize(M^B_c)), where
    M^A_c = sum_k w^A_kc f_k + b^A_c is the CAM of the network's classifier and M^B_c the same with the second
    classifier (``acol_classifier``) on f erased where normalize(M^A_c) >= ``threshold``.  Maps are in [0, 1]
    (the formula normalizes); one forward pass per batch, no gradients.  Same call and result as ``camlens.CAM``.

    On Choe et al.'s ACoL networks (:class:`camlens.networks.wsolref.ACoLNet`) it is their ``return_cam`` map:
    M^A_c = classifier_A(f)_c, M^B_c = classifier_B(f erased where normalize(M^A_c) >= ``threshold``)_c.
    """

    name = "acol"

    def __init__(self, model: nn.Module, layer: None = None, threshold: float = 0.7) -> None:
        super().__init__(model, layer)
        check_fraction("ACoL", "threshold", threshold)
        if not has_reference_heads(self.model) and not isinstance(getattr(self.model, BRANCH_B, None), nn.Linear):
            raise CamlensError(f"{type(model).__name__} has no {BRANCH_B!r}: it was not trained with ACoL")
        self.threshold = threshold
        self.head: GapHead | None = None
        self._capture: LayerCapture | None = None

    def __call__(self, x: Tensor, classes: ClassSpec = None, *, topk: int = 1) -> CAMResult:
        if has_reference_heads(self.model):
            return self._reference(self.model, x, classes, topk)
        with torch.no_grad() if not torch.is_inference_mode_enabled() else torch.inference_mode():
            with self._setup_lock:
                if self._capture is None:
                    self.head = probe(self.model).head
                    self._capture = LayerCapture(self.head.layer, where=self.head.capture)
                    self._captures.append(self._capture)
            head = self.head
            assert head is not None
            logits = output_logits(self.model(x))
            features = self._capture.pop()
            chosen = select_classes(logits, classes, topk)
            maps_a = live_class_maps(self.model, head, features, chosen)  # (B, N, h, w)
            f = F.relu(features) if head.feature_act == "relu" else features
            branch_b: nn.Linear = getattr(self.model, BRANCH_B)
            bias_b = branch_b.bias if branch_b.bias is not None else branch_b.weight.new_zeros(branch_b.out_features)
            keep = (normalize(maps_a) < self.threshold).to(f.dtype)  # (B, N, h, w)
            maps_b = torch.einsum("bnk,bkhw,bnhw->bnhw", branch_b.weight[chosen], f, keep) + bias_b[chosen][..., None, None]
            maps = torch.maximum(normalize(maps_a), normalize(maps_b))
        return CAMResult(logits=logits, classes=chosen, maps=maps, layer=head.layer_name)

    def _reference(self, model: Any, x: Tensor, classes: ClassSpec, topk: int) -> CAMResult:
        with torch.no_grad() if not torch.is_inference_mode_enabled() else torch.inference_mode():
            features = model.trunk(x)
            all_a = model.classifier_A(features)  # (B, C, h, w)
            logits = model.avgpool(all_a).flatten(1)
            chosen = select_classes(logits, classes, topk)
            rows = torch.arange(len(x), device=x.device)
            maps_a = torch.stack([all_a[rows, c] for c in chosen.unbind(1)], 1)
            maps_b = torch.stack([model.classifier_B(erased_features(features, maps_a[:, n], self.threshold))[rows, c]
                                  for n, c in enumerate(chosen.unbind(1))], 1)
            maps = torch.maximum(normalize(maps_a), normalize(maps_b))
        return CAMResult(logits=logits, classes=chosen, maps=maps, layer="classifier_A")
