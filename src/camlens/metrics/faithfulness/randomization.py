"""The model randomization check (Adebayo et al., NeurIPS 2018, "Sanity Checks for Saliency Maps").

Conventions: :mod:`camlens.metrics.faithfulness`."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...capture import ModelLike, resolve_module
from ...errors import CamlensError
from ...maps import normalize
from ._common import _as_classes, _as_maps, _check_model


def rank_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation between maps ``a`` and ``b`` (B, ...), per row: the Pearson correlation of their
    ranks, tied values sharing their average rank (as scipy.stats.spearmanr).  NaN where a map is constant."""
    return _pearson(_average_ranks(a.flatten(1).double()), _average_ranks(b.flatten(1).double())).float()


def _average_ranks(x: Tensor) -> Tensor:
    rows, n = x.shape
    values, order = x.sort(dim=1, stable=True)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    group = starts.long().cumsum(1) - 1 + n * torch.arange(rows, device=x.device)[:, None]
    position = torch.arange(1, n + 1, dtype=x.dtype, device=x.device).expand(rows, n)
    mean = torch.zeros(rows * n, dtype=x.dtype, device=x.device).scatter_reduce(
        0, group.flatten(), position.flatten(), "mean", include_self=False
    )
    ranks = torch.empty_like(x)
    ranks.scatter_(1, order, mean[group].view(rows, n))
    return ranks


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    denom = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(denom > 0, (a * b).sum(1) / denom, float("nan"))


def ssim(a: Tensor, b: Tensor, data_range: float = 1.0, sigma: float = 1.5) -> Tensor:
    """Mean structural similarity (Wang et al., IEEE TIP 2004) of maps ``a`` and ``b`` (B, H, W), per map:
    Gaussian window σ = 1.5 truncated at 3.5 σ (11 taps), K1 = 0.01, K2 = 0.03, population covariances, averaged
    over the positions where the window fits: skimage's ``structural_similarity(gaussian_weights=True,
    use_sample_covariance=False, data_range=...)``."""
    radius = int(3.5 * sigma + 0.5)
    if min(a.shape[-2:]) < 2 * radius + 1:
        side = 2 * radius + 1
        raise CamlensError(f"ssim needs maps of at least {side}x{side} pixels, got {tuple(a.shape[-2:])}")
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (taps / sigma) ** 2)
    g = (g / g.sum()).to(a.device)
    window = torch.outer(g, g)[None, None]
    x, y = a.double()[:, None], b.double()[:, None]
    mean = lambda t: F.conv2d(t, window)  # noqa: E731
    mx, my = mean(x), mean(y)
    vx, vy, cxy = mean(x * x) - mx**2, mean(y * y) - my**2, mean(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean((1, 2, 3)).float()


def _resettable(module: nn.Module) -> list[Any]:  # modules with a reset_parameters method
    return [m for m in module.modules() if callable(getattr(m, "reset_parameters", None))]


def _top_down_layers(model: nn.Module, images: Tensor) -> list[str]:
    """Modules that own parameters and can reset them, from the last one to run to the first."""
    order: list[str] = []
    handles = []
    for name, module in model.named_modules():
        owns_parameters = next(module.parameters(recurse=False), None) is not None
        if name and owns_parameters and callable(getattr(module, "reset_parameters", None)):
            handles.append(module.register_forward_pre_hook(lambda m, a, name=name: order.append(name)))
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return list(dict.fromkeys(reversed(order)))


@dataclass
class RandomizationResult:
    """Per-image similarity between the trained model's maps and the maps after re-initializing ``layers[:i+1]``
    (column i): ``spearman`` (B, L), ``ssim`` (B, L) when asked for; ``classes`` (B,) explained throughout."""

    layers: list[str]
    spearman: Tensor
    ssim: Tensor | None
    classes: Tensor


def _explain(explainer: Callable[[nn.Module], Any], model: nn.Module, images: Tensor, classes: Tensor | None):
    method = explainer(model)
    try:
        result = method(images, classes) if classes is not None else method(images)
    finally:
        close = getattr(method, "close", None)
        if callable(close):
            close()
    maps = getattr(result, "maps", result)
    chosen = getattr(result, "classes", None)
    maps = maps[:, 0] if maps.ndim == 4 else maps
    return maps.detach(), (chosen[:, 0] if chosen is not None and chosen.ndim == 2 else chosen)


def randomization_check(
    model: ModelLike,
    explainer: Callable[[nn.Module], Any],
    images: Tensor,
    classes: Tensor | Sequence[int] | int | None = None,
    *,
    layers: Sequence[str] | None = None,
    absolute: bool = False,
    with_ssim: bool = False,
    seed: int = 0,
) -> RandomizationResult:
    """Cascading model-parameter randomization (Adebayo et al., NeurIPS 2018, "Sanity Checks for Saliency Maps").

    ``explainer(model)`` must build an explainer for a given model (e.g. ``camlens.CAM`` or
    ``lambda m: camlens.GradCAM(m, layer="layer4")``; give layers by name, not as modules of the original model)
    whose call ``(images, classes)`` returns a CAMResult or maps.  The model is deep-copied and never modified.
    ``layers`` (default: every module owning parameters that has ``reset_parameters``, from the last one to run
    in the forward pass to the first) are re-initialized cumulatively, top down: after step i, layers[:i+1] hold
    fresh PyTorch default initializations (``reset_parameters`` of every submodule, drawn after
    ``torch.manual_seed(seed + i)`` inside a forked RNG, so the global RNG is untouched).  The explained classes
    stay fixed (default: the trained model's top-1).  At every step, maps (upsampled to the image size; absolute
    values when ``absolute``) are compared with the trained model's by Spearman rank correlation and, when
    ``with_ssim``, by SSIM of the min-max normalized maps.  A map that survives randomization is not explaining
    the model.  One explanation per step and image.
    """
    model = _check_model(model)
    size, batch = images.shape[-2:], images.shape[0]
    randomized = copy.deepcopy(model)  # explained as trained first, then re-initialized step by step
    chosen = None if classes is None else _as_classes(classes, batch, images.device)
    reference, found = _explain(explainer, randomized, images, chosen)
    chosen = chosen if chosen is not None else found
    if chosen is None:
        raise CamlensError("the explainer did not report the explained classes; pass classes= explicitly")
    names = list(layers) if layers is not None else _top_down_layers(randomized, images)
    modules = [resolve_module(randomized, name)[1] for name in names]
    for name, module in zip(names, modules):
        if not _resettable(module):
            raise CamlensError(f"layer {name!r} has no submodule with reset_parameters(); leave it out of layers=")

    def prepare(maps: Tensor) -> Tensor:
        maps = _as_maps(maps, size, batch)
        return maps.abs() if absolute else maps

    reference = prepare(reference)
    spearman, similarity = [], []
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        for step, module in enumerate(modules):
            torch.manual_seed(seed + step)
            with torch.no_grad():
                for sub in _resettable(module):
                    sub.reset_parameters()
            maps = prepare(_explain(explainer, randomized, images, chosen)[0])
            spearman.append(rank_correlation(reference, maps).cpu())
            if with_ssim:
                similarity.append(ssim(normalize(reference), normalize(maps)).cpu())
    stack = lambda values: torch.stack(values, 1) if values else torch.zeros(batch, 0)  # noqa: E731
    return RandomizationResult(names, stack(spearman), stack(similarity) if with_ssim else None, chosen.cpu())
