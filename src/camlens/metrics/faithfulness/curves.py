"""Deletion and insertion curves (Petsiuk et al., BMVC 2018, "RISE").

Conventions: :mod:`camlens.metrics.faithfulness`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ...capture import ModelLike
from ...errors import CamlensError
from ._common import Baseline, Score, _as_classes, _as_maps, _batched_scores, _check_model, _relevance_rank


def rise_blur(images: Tensor, kernel_size: int = 11, sigma: float = 5.0) -> Tensor:
    """The blurred image that RISE (Petsiuk et al., BMVC 2018) inserts pixels into.

    RISE builds its kernel by Gaussian-filtering a centred delta in a ``kernel_size``² array with scipy's
    ``gaussian_filter(sigma)`` (boundary 'reflect', truncate 4 σ), so the Gaussian tails fold back into the
    window (for 11 px and σ = 5 the kernel is almost a box filter), and convolves each channel with zero padding.
    This reproduces that kernel exactly; 1-D signals (B, C, L) and 3-D volumes (B, C, D, H, W) are blurred with
    the same separable kernel along each of their dimensions (its 1-D factor, its outer cube).
    """
    radius = int(4.0 * sigma + 0.5)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    gauss = torch.exp(-0.5 * (taps / sigma) ** 2)
    gauss /= gauss.sum()
    centre = kernel_size // 2
    # Output position i of the filtered delta collects every tap t whose reflected source i + t is the centre.
    src = torch.arange(kernel_size)[:, None] + taps.long()[None, :]
    period = 2 * kernel_size
    src = src % period
    src = torch.where(src >= kernel_size, period - 1 - src, src)
    kernel1d = (gauss[None, :] * (src == centre)).sum(1)
    rank = images.ndim - 2
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(rank)
    if conv is None:
        raise CamlensError(f"rise_blur takes (B, C, *S) inputs with 1 to 3 spatial dims, got {tuple(images.shape)}")
    kernel = kernel1d
    for _ in range(rank - 1):
        kernel = kernel[..., None] * kernel1d
    channels = images.shape[1]
    weight = kernel.to(images.device, torch.float32).expand(channels, 1, *kernel.shape)
    out = conv(images.float(), weight, padding=kernel_size // 2, groups=channels)
    return out.to(images.dtype)


def _baseline(images: Tensor, baseline: Baseline, blur_kernel: int, blur_sigma: float) -> Tensor:
    if isinstance(baseline, Tensor):
        return baseline.to(images).expand_as(images)
    if baseline == "zeros":
        return torch.zeros_like(images)
    if baseline == "mean":
        return images.mean(tuple(range(2, images.ndim)), keepdim=True).expand_as(images)
    if baseline == "blur":
        return rise_blur(images, blur_kernel, blur_sigma)
    raise CamlensError(f"baseline={baseline!r}: use 'zeros', 'mean', 'blur' or a tensor shaped like the images")


@dataclass
class PerturbationCurve:
    """Per-image deletion or insertion curves: ``scores`` (B, S+1) at ``fractions`` (S+1,) of pixels changed,
    and their ``auc`` (B,) by the trapezoid rule over those fractions (all on the CPU)."""

    fractions: Tensor
    scores: Tensor
    auc: Tensor


def _step_counts(pixels: int, steps: int) -> Tensor:
    if steps < 1:
        raise CamlensError(f"steps={steps} must be at least 1")
    return torch.tensor([k * pixels // steps for k in range(steps + 1)])


def perturbation_curve(
    model: ModelLike,
    images: Tensor,
    maps: Tensor,
    classes: Tensor | Sequence[int] | int,
    *,
    mode: Literal["deletion", "insertion"],
    steps: int = 100,
    baseline: Baseline | None = None,
    score: Score = "softmax",
    blur_kernel: int = 11,
    blur_sigma: float = 5.0,
    batch_size: int = 64,
    original_scores: Tensor | None = None,
) -> PerturbationCurve:
    """Deletion or insertion (Petsiuk et al., BMVC 2018, "RISE").

    ``deletion``: pixels are replaced by ``baseline`` (default "zeros", RISE's deletion substrate) in order of
    decreasing map value; lower AUC is better.  ``insertion``: starting from ``baseline`` (default "blur", RISE's
    blurred image, :func:`rise_blur`), the original pixels are put back in that order; higher AUC is better.

    Step k = 0..S changes the first floor(k·N / S) pixels of the ranking (N = H·W, or the L samples of a signal,
    the D·H·W voxels of a volume; ties by row-major index), all
    channels of a pixel at once; the curve is the class score at each step and the AUC integrates it by the
    trapezoid rule over the fraction of pixels changed, from 0 to 1.  ``baseline``: "zeros" (zeros of the model
    input), "mean" (per-image channel means), "blur" or a tensor.  RISE changed 224 pixels per step at 224², i.e.
    ``steps=224``; the default 100 changes 1 % per step.  S forward passes per image (S + 1 without
    ``original_scores``, the score of the unperturbed image, which sits at one end of the curve).
    """
    if mode not in ("deletion", "insertion"):
        raise CamlensError(f"mode={mode!r}: use 'deletion' or 'insertion'")
    model = _check_model(model)
    deletion = mode == "deletion"
    batch, spatial = images.shape[0], images.shape[2:]
    pixels = spatial.numel()
    classes = _as_classes(classes, batch, images.device)
    rank = _relevance_rank(_as_maps(maps, spatial, batch))
    substrate = _baseline(images, baseline or ("zeros" if deletion else "blur"), blur_kernel, blur_sigma)
    start, finish = (images, substrate) if deletion else (substrate, images)
    counts = _step_counts(pixels, steps).to(images.device)
    known = 0 if deletion else steps
    todo = [k for k in range(steps + 1) if original_scores is None or k != known]
    todo_t = torch.tensor(todo, device=images.device)

    def build(items: Tensor) -> tuple[Tensor, Tensor]:
        items = items.to(images.device)
        b, k = items // len(todo), todo_t[items % len(todo)]
        changed = (rank[b] < counts[k][:, None]).view(-1, 1, *spatial)
        return torch.where(changed, finish[b], start[b]), classes[b]

    scores = torch.empty(batch, steps + 1)
    scores[:, todo] = _batched_scores(model, batch * len(todo), build, score, batch_size).view(batch, len(todo))
    if original_scores is not None:  # then step `known` is not in todo
        scores[:, known] = original_scores.float().cpu()
    fractions = counts.cpu().double() / pixels
    auc = torch.trapezoid(scores.double(), fractions, dim=-1).float()
    return PerturbationCurve(fractions.float(), scores, auc)


def deletion_curve(
    model: ModelLike, images: Tensor, maps: Tensor, classes: Tensor | Sequence[int] | int, **options: Any
) -> PerturbationCurve:
    """Deletion AUC (lower is better): :func:`perturbation_curve` with ``mode="deletion"`` (baseline "zeros")."""
    return perturbation_curve(model, images, maps, classes, mode="deletion", **options)


def insertion_curve(
    model: ModelLike, images: Tensor, maps: Tensor, classes: Tensor | Sequence[int] | int, **options: Any
) -> PerturbationCurve:
    """Insertion AUC (higher is better): :func:`perturbation_curve` with ``mode="insertion"`` (baseline "blur")."""
    return perturbation_curve(model, images, maps, classes, mode="insertion", **options)
