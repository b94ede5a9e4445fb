"""What the faithfulness metrics share: input checks, class scores in batches, pixel rankings."""

from __future__ import annotations

from typing import Any, Callable, Literal, Sequence, Union

import torch
from torch import Tensor, nn

from ...capture import ModelLike, as_module, output_logits
from ...errors import CamlensError
from ...maps import upsample

Score = Literal["softmax", "logit"]
Baseline = Union[Literal["zeros", "mean", "blur"], Tensor]
Ties = Literal["all", "any", "first"]
BoxSpec = Union[Tensor, Sequence[Tensor]]


def _check_model(model: ModelLike) -> nn.Module:
    """The network of ``model`` (a module or a :func:`camlens.load_model` result), in eval mode."""
    model = as_module(model)
    if model.training:
        raise CamlensError(
            f"{type(model).__name__} is in training mode: call model.eval() before computing faithfulness "
            "metrics (dropout changes the scores and batch norm would update its statistics)"
        )
    return model


def _as_classes(classes: Tensor | Sequence[int] | int, batch: int, device: torch.device) -> Tensor:
    if isinstance(classes, int):
        return torch.full((batch,), classes, dtype=torch.long, device=device)
    out = torch.as_tensor(classes, dtype=torch.long, device=device).reshape(-1)
    if out.numel() != batch:
        raise CamlensError(f"classes has {out.numel()} entries for {batch} images; give one class per image")
    return out


def _as_maps(maps: Tensor, size: Sequence[int], batch: int | None = None) -> Tensor:
    """Maps as float (B, *size) (size: (L,), (H, W) or (D, H, W)): (B, 1, *s) is squeezed, other sizes are
    resized by :func:`camlens.upsample` (linear, bilinear, trilinear)."""
    rank = len(size)
    if maps.ndim == rank + 2 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.ndim != rank + 1:
        shape = {1: "(B, L) or (B, 1, L)", 2: "(B, H, W) or (B, 1, H, W)", 3: "(B, D, H, W) or (B, 1, D, H, W)"}
        raise CamlensError(
            f"maps have shape {tuple(maps.shape)} for {rank}-D inputs of size {tuple(size)}; give one map per image "
            f"as {shape.get(rank, f'(B, {rank} sizes)')} (for a CAMResult pass result.maps[:, 0])"
        )
    if batch is not None and maps.shape[0] != batch:
        raise CamlensError(f"{maps.shape[0]} maps for {batch} images; give one map per image")
    maps = maps.float()
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = upsample(maps, tuple(size))
    if not bool(torch.isfinite(maps).all()):
        raise CamlensError("maps contain NaN or infinite values; fix the method output before evaluating it")
    return maps


def _class_scores(output: Any, classes: Tensor, score: Score) -> Tensor:
    logits = output_logits(output).float()
    if score == "softmax":
        logits = logits.softmax(-1)
    elif score != "logit":
        raise CamlensError(f"score={score!r}: use 'softmax' (probability) or 'logit'")
    if int(classes.max()) >= logits.shape[1] or int(classes.min()) < 0:
        raise CamlensError(f"class index out of range: the model has {logits.shape[1]} classes")
    return logits.gather(1, classes[:, None].to(logits.device))[:, 0]


def _batched_scores(
    model: nn.Module,
    count: int,
    build: Callable[[Tensor], tuple[Tensor, Tensor]],
    score: Score,
    batch_size: int,
) -> Tensor:
    """Scores of ``count`` perturbed images made ``batch_size`` at a time: ``build(item indices)`` returns the
    images and their classes."""
    if batch_size < 1:
        raise CamlensError(f"batch_size={batch_size} must be at least 1")
    out = []
    with torch.no_grad():
        for start in range(0, count, batch_size):
            images, classes = build(torch.arange(start, min(count, start + batch_size)))
            out.append(_class_scores(model(images), classes, score).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def class_scores(
    model: ModelLike,
    images: Tensor,
    classes: Tensor | Sequence[int] | int,
    *,
    score: Score = "softmax",
    batch_size: int = 64,
) -> Tensor:
    """The score (softmax probability or logit) of ``classes`` (B,) on ``images`` (B, C, H, W), on the CPU."""
    model = _check_model(model)
    classes = _as_classes(classes, images.shape[0], images.device)
    return _batched_scores(model, images.shape[0], lambda i: (images[i], classes[i]), score, batch_size)


def _relevance_rank(maps: Tensor, most_relevant_first: bool = True) -> Tensor:
    """(B, N) position of every pixel in the relevance order (0 = first removed); ties by row-major index."""
    flat = maps.flatten(1)
    order = torch.sort(flat, dim=1, descending=most_relevant_first, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return rank
