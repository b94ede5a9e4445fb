"""Methods that weight activations without gradients: CAM."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..capture import GapHead, LayerCapture, LayerSpec, locate_gap_head, output_logits
from .base import CAMResult, ClassSpec, Explainer, select_classes


class CAM(Explainer):
    """Class Activation Mapping (Zhou et al., CVPR 2016, "Learning Deep Features for Discriminative Localization").

    For a network ending in global average pooling and a linear classifier,
    M_c(x, y) = sum_k w_k^c f_k(x, y), so that mean_xy M_c + b_c = logit_c exactly.

    The feature layer and classifier are found on the first call from that call's own forward pass and checked
    numerically (DenseNet's functional ReLU, ConvNeXt's LayerNorm after pooling and SqueezeNet's 1x1 conv
    classifier are folded in exactly); ``layer`` and ``classifier`` override the search.  One forward pass per
    batch, no gradients.
    """

    name = "cam"

    def __init__(self, model: nn.Module, layer: LayerSpec | None = None, classifier: LayerSpec | None = None) -> None:
        super().__init__(model, layer)
        self.classifier = classifier
        self.head: GapHead | None = None
        self._capture: LayerCapture | None = None

    def _locate(self, x: Tensor) -> tuple[Tensor, object]:
        head, features, output = locate_gap_head(self.model, x, self.layer, self.classifier)
        self.head = head
        self._capture = LayerCapture(head.layer, where=head.capture)
        self._captures.append(self._capture)
        return features, output

    def __call__(self, x: Tensor, classes: ClassSpec = None, *, topk: int = 1) -> CAMResult:
        grad_ctx = torch.no_grad() if not torch.is_inference_mode_enabled() else torch.inference_mode()
        with grad_ctx:
            if self._capture is None:
                with self._setup_lock:
                    if self._capture is None:
                        features, output = self._locate(x)
                    else:
                        output = self.model(x)
                        features = self._capture.pop()
            else:
                output = self.model(x)
                features = self._capture.pop()
            logits = output_logits(output)
            chosen = select_classes(logits, classes, topk)
            maps, bias = self.head.class_maps(features, chosen)
        return CAMResult(logits=logits, classes=chosen, maps=maps, layer=self.head.layer_name, bias=bias)


__all__: Sequence[str] = ["CAM"]
