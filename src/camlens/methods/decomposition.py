"""Methods that decompose the activations themselves, without gradients or class scores: Eigen-CAM."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor, nn

from ..capture import LayerSpec
from .layered import LayerExplainer, LayerOptions, Scorer

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+
    from typing_extensions import Unpack


class EigenCAM(LayerExplainer):
    """Eigen-CAM (Muhammad & Yeasin, IJCNN 2020, "Eigen-CAM: Class Activation Map using Principal Components").

    With A the activations of one image as an (h*w) x K matrix and A = U S V^T its SVD, M = A v_1 (the projection
    on the first right singular vector), laid back on the h x w grid.  ``center=True`` subtracts each channel's
    spatial mean from A first (pytorch-grad-cam's version; the paper projects A as is).  The sign of v_1 is
    arbitrary: it is chosen so that the value of largest magnitude is positive (kept when |min| == |max|).
    No ReLU in the formula.  The map does not depend on the class: every explained class gets the same map.
    One forward pass, no backward.
    """

    name = "eigencam"
    thread_safe = True

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec | Sequence[LayerSpec] | None = None,
        *,
        center: bool = False,
        **options: Unpack[LayerOptions],
    ) -> None:
        super().__init__(model, layer, **options)
        self.center = center

    def _explain(self, x: Tensor, output: Any, acts: list[Tensor], scorer: Scorer) -> list[Tensor]:
        return [self._project(self._spatial(act, x)).unsqueeze(1).expand(-1, scorer.count, -1, -1) for act in acts]

    def _project(self, a: Tensor) -> Tensor:
        batch, _, height, width = a.shape
        flat = a.float().flatten(2).transpose(1, 2)  # (B, hw, K)
        if self.center:
            flat = flat - flat.mean(1, keepdim=True)
        _, _, vh = torch.linalg.svd(flat, full_matrices=False)
        proj = flat @ vh[:, 0, :, None]  # (B, hw, 1)
        proj = proj.squeeze(-1)
        flip = proj.amin(1).abs() > proj.amax(1).abs()
        proj = torch.where(flip[:, None], -proj, proj)
        return proj.view(batch, height, width)


__all__: Sequence[str] = ["EigenCAM"]
