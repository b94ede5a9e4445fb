"""Average Drop and Increase in Confidence (Chattopadhay et al., WACV 2018, "Grad-CAM++").

Conventions: :mod:`camlens.metrics.faithfulness`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ...capture import ModelLike
from ...maps import normalize
from ._common import Score, _as_classes, _as_maps, _batched_scores, _check_model, class_scores


@dataclass
class ConfidenceChange:
    """Per-image results of :func:`confidence_change` (all (B,), on the CPU)."""

    original: Tensor  # Y: score on the image
    masked: Tensor  # O: score on the image multiplied by the map
    average_drop: Tensor  # 100 * max(0, Y - O) / Y, in %; NaN where Y <= 0
    increase_in_confidence: Tensor  # 100 * 1[O > Y]: 0 or 100


def confidence_change(
    model: ModelLike,
    images: Tensor,
    maps: Tensor,
    classes: Tensor | Sequence[int] | int,
    *,
    score: Score = "softmax",
    normalize_maps: bool = True,
    batch_size: int = 64,
    original_scores: Tensor | None = None,
) -> ConfidenceChange:
    """Average Drop % and Increase in Confidence (Chattopadhyay et al., WACV 2018, "Grad-CAM++").

    O is the score of the explanation image E = M ∘ I, the image multiplied pixel-wise by the map M (min-max
    normalized to [0, 1] per image when ``normalize_maps``, see :func:`camlens.normalize`; used as given
    otherwise).  Per image: drop = 100 · max(0, Y − O) / Y and increase = 100 · 1[O > Y], so their dataset means
    are the paper's Average Drop % and Increase in Confidence %.  Y and O are softmax probabilities by default
    (``score="logit"`` uses logits; the drop is then NaN where Y <= 0, where the ratio means nothing).

    pytorch_grad_cam's ``DropInConfidence`` returns max(0, Y − O) without dividing by Y or scaling by 100, and
    its ``IncreaseInConfidence`` returns 1[O > Y] in {0, 1}.  One forward pass per image (two without
    ``original_scores``).
    """
    model = _check_model(model)
    batch = images.shape[0]
    classes = _as_classes(classes, batch, images.device)
    maps = _as_maps(maps, images.shape[2:], batch)
    if normalize_maps:
        maps = normalize(maps, spatial_dims=images.ndim - 2)
    weights = maps.to(images.dtype)[:, None]
    masked = _batched_scores(model, batch, lambda i: (images[i] * weights[i], classes[i]), score, batch_size)
    original = (
        class_scores(model, images, classes, score=score, batch_size=batch_size)
        if original_scores is None
        else original_scores.float().cpu()
    )
    drop = torch.where(original > 0, 100 * (original - masked).clamp_min(0) / original, float("nan"))
    return ConfidenceChange(original, masked, drop, 100 * (masked > original).float())
