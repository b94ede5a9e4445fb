"""The inference side of ACoL (Zhang et al., CVPR 2018): its second classifier and its localization map."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..capture import GapHead, LayerCapture, output_logits
from ..errors import CamlensError
from ..maps import normalize
from ..methods.base import CAMResult, ClassSpec, Explainer, select_classes
from .base import check_fraction
from .placement import live_class_maps, probe, require_linear_head

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


def attach_recorded_branch(model: nn.Module) -> None:
    """What an ACoL checkpoint needs before its weights load: nothing on Choe et al.'s ACoL networks (both heads
    are theirs), :func:`add_branch` on any other network."""
    if not has_reference_heads(model):
        add_branch(model)


def add_branch(model: nn.Module) -> GapHead:
    """Add ACoL's classifier B (a linear layer, :data:`BRANCH_B`, as wide as the network's own classifier) to
    ``model`` in place, and return the network's GAP head (classifier A) found by one probing pass."""
    head = probe(model).head
    require_linear_head("ACoL", head)
    num_classes, channels = head.weight.shape
    ref = next(model.parameters())
    model.add_module(BRANCH_B, nn.Linear(channels, num_classes).to(ref.device))
    return head


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
        """Args:
        model: a network that ACoL was attached to (it has :data:`BRANCH_B`), or one of Choe et al.'s ACoL
            networks.
        layer: always None: the layer is the network's CAM layer, found by a probing pass.
        threshold: ACoL's erasing threshold on A's normalized map (Choe et al.'s default 0.7).
        """
        super().__init__(model, layer)
        check_fraction("ACoL", "threshold", threshold)
        if not has_reference_heads(self.model) and not isinstance(getattr(self.model, BRANCH_B, None), nn.Linear):
            raise CamlensError(f"{type(model).__name__} has no {BRANCH_B!r}: it was not trained with ACoL")
        self.threshold = threshold
        self.head: GapHead | None = None
        self._capture: LayerCapture | None = None

    def __call__(self, x: Tensor, classes: ClassSpec = None, *, topk: int = 1) -> CAMResult:
        """ACoL's maps of ``classes`` for the batch ``x``.

        Args:
            x: the preprocessed batch (B, 3, H, W).
            classes: class indices (one for all, or one list per sample), or None for the top-k predictions.
            topk: how many top predictions when ``classes`` is None.

        Returns:
            The :class:`~camlens.methods.base.CAMResult`: logits, classes and maps (B, N, h, w) in [0, 1].
        """
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
            maps_b = (
                torch.einsum("bnk,bkhw,bnhw->bnhw", branch_b.weight[chosen], f, keep) + bias_b[chosen][..., None, None]
            )
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
            maps_b = torch.stack(
                [
                    model.classifier_B(erased_features(features, maps_a[:, n], self.threshold))[rows, c]
                    for n, c in enumerate(chosen.unbind(1))
                ],
                1,
            )
            maps = torch.maximum(normalize(maps_a), normalize(maps_b))
        return CAMResult(logits=logits, classes=chosen, maps=maps, layer="classifier_A")
