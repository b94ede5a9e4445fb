"""BagCAMs (Zhu et al., ECCV 2022, "Bagging Regional Classification Activation Maps for Weakly Supervised
Object Localization"): an inference-only map for any trained GAP classifier."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..capture import CamlensError, NotAGapClassifierError, locate_gap_head
from .gradient import _GradientMethod, _positions


class _RectifiedGradient(torch.autograd.Function):
    """Identity forward; the backward passes ReLU(gradient)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return F.relu(grad)


def _rectify(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
    return _RectifiedGradient.apply(output) if torch.is_grad_enabled() and output.requires_grad else output


class BagCAMs(_GradientMethod):
    """BagCAMs (Zhu et al., ECCV 2022): each position m of the feature map f (B, K, h, w) gives a regional
    localizer, the gradient-weighted features g_k(m) f_k(m), and the map bags them:

        M(x) = sum_k ReLU( (1 + (1/Z) sum_m g_k(m) f_k(m)) * g_k(x) f_k(x) ),

    with g = d log(s_c) / d f the gradient of the log of the class score (the logit, as the authors' code takes
    it) and Z = h * w.  As in the authors' code (``libs/cams/bagcams.py``), the backward pass rectifies the
    gradient at every ``nn.ReLU`` module between the layer and the output (ReLU(grad) before each ReLU's own
    backward), which matters at an intermediate layer: the authors evaluate ResNet50 at ``layer3``
    (``layer="layer3"``).  The default layer is the GAP head's feature layer.

    The map needs a GAP classifier (the regional localizers are the classifier applied per position): on any
    other network it is an error.  Where a class score is not positive, log(s_c) is undefined (the authors'
    map is NaN there and their normalization turns it to zeros): the map is 0.
    """

    name = "bagcams"
    thread_safe = False  # the ReLU hooks are installed for each forward pass

    def prepare(self, x: Tensor) -> None:
        if self._hooks is None:
            head = self._gap_head(x)
            if self.layer is None:
                self.layer_names = [head.layer_name]
        super().prepare(x)

    def _gap_head(self, x: Tensor) -> Any:
        """The model's GAP head, found from the input alone or, on inputs so small that the search passes the
        feature layer by, from the layer given."""
        tries = [None] + ([self.layer] if isinstance(self.layer, str) else [])
        with torch.no_grad():
            for layer in tries:
                try:
                    return locate_gap_head(self.model, x, layer=layer)[0]
                except NotAGapClassifierError as err:
                    reason = err
        raise CamlensError(
            f"BagCAMs bags the regional localizers of a GAP classifier, and this model has none "
            f"({reason}); use gradcam or layercam"
        )

    def _forward(self, x: Tensor, grad: bool) -> tuple[Any, list[Tensor]]:
        self.prepare(x)
        handles = [m.register_forward_hook(_rectify) for m in self.model.modules() if isinstance(m, nn.ReLU)]
        try:
            return super()._forward(x, grad)
        finally:
            for handle in handles:
                handle.remove()

    def _maps(self, a: Tensor, g: Tensor, scores: Tensor) -> Tensor:
        positive = scores > 0
        safe = torch.where(positive, scores, torch.ones_like(scores)).to(g.dtype)
        maps = self._combine(a, g / safe.view(*safe.shape, *[1] * (g.ndim - 2)))  # d log s = ds / s
        return torch.where(positive.view(*positive.shape, *[1] * (maps.ndim - 2)), maps, torch.zeros_like(maps))

    def _combine(self, a: Tensor, g: Tensor) -> Tensor:
        local = g * a[:, None]  # (B, N, K, *S): every position's localizer
        bag = 1 + local.mean(_positions(local, 3), keepdim=True)
        return F.relu(bag * local).sum(2)
