"""Methods that decompose the activations themselves, without gradients or class scores: Eigen-CAM."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

from ..capture import LayerSpec, ModelLike, output_logits
from ..errors import CamlensError
from .base import ClassSpec
from .layered import LayerExplainer, LayerOptions, Scorer, TargetSpec, no_autocast

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+
    from typing_extensions import Unpack


class EigenCAM(LayerExplainer):
    """Eigen-CAM (Muhammad & Yeasin, IJCNN 2020, "Eigen-CAM: Class Activation Map using Principal Components").

    With A the activations of one image as a P x K matrix (P positions: L, h*w or d*h*w) and A = U S V^T its SVD,
    M = A v_1 (the projection on the first right singular vector), laid back on the layer's grid.
    ``center=True`` subtracts each channel's spatial mean from A first (pytorch-grad-cam's version; the paper
    projects A as is).  The sign of v_1 is arbitrary: it is chosen so that the value of largest magnitude is
    positive (kept when |min| == |max|).
    No ReLU in the formula.  The map does not depend on the class: every explained class gets the same map.
    One forward pass, no backward: the gradient-free choice for detectors and other models without class scores
    (no target needed; torchvision's detectors at ``camlens.targets.default_layer(model)``).
    """

    name = "eigencam"
    thread_safe = True

    def __init__(
        self,
        model: ModelLike,
        layer: LayerSpec | Sequence[LayerSpec] | None = None,
        *,
        center: bool = False,
        **options: Unpack[LayerOptions],
    ) -> None:
        """Args:
        model: the model (wrappers looked through, see :class:`~camlens.methods.base.Explainer`).
        layer: None (automatic), a layer name or module, or a list of them (maps fused).
        center: subtract each channel's spatial mean before the SVD (pytorch-grad-cam's version).
        **options: the options of every layer method: ``reshape`` (a layer output -> (B, K, h, w), e.g.
            :func:`camlens.tokens_to_grid`) and ``fuse`` (``"max"`` or ``"mean"``, for several layers).
        """
        super().__init__(model, layer, **options)
        self.center = center

    def _select(
        self, x: Tensor, output: Any, classes: ClassSpec, topk: int, target: TargetSpec
    ) -> tuple[Tensor, Tensor, Scorer]:
        """As for every layer method; a model without class scores (a detector's list of boxes) and no target
        gets one map per image, class -1, and empty (B, 0) logits: Eigen-CAM reads no score."""
        if target is None and classes is None:
            try:
                output_logits(output)
            except CamlensError:
                none = torch.full((x.shape[0], 1), -1, dtype=torch.long, device=x.device)
                return x.new_zeros(x.shape[0], 0), none, Scorer(classes=none)
        return super()._select(x, output, classes, topk, target)

    def _explain(self, x: Tensor, output: Any, acts: list[Tensor], scorer: Scorer) -> list[Tensor]:
        with no_autocast(x):
            maps = [self._project(self._spatial(act, x)).unsqueeze(1) for act in acts]
        return [m.expand(-1, scorer.count, *m.shape[2:]) for m in maps]

    def _project(self, a: Tensor) -> Tensor:
        flat = a.float().flatten(2).transpose(1, 2)  # (B, P, K)
        if self.center:
            flat = flat - flat.mean(1, keepdim=True)
        _, _, vh = torch.linalg.svd(flat, full_matrices=False)
        proj = flat @ vh[:, 0, :, None]  # (B, P, 1)
        proj = proj.squeeze(-1)
        flip = proj.amin(1).abs() > proj.amax(1).abs()
        proj = torch.where(flip[:, None], -proj, proj)
        return proj.view(a.shape[0], *a.shape[2:])


__all__: Sequence[str] = ["EigenCAM"]
