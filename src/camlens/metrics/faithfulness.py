"""Faithfulness and sanity metrics for maps: does the map point at what the model actually uses?

Every metric takes the model, the images exactly as the model receives them (B, C, H, W) (already preprocessed:
"zeros" below means zeros of that tensor, i.e. the dataset mean colour under the usual normalization), maps
(B, H, W) or (B, 1, H, W) (resized bilinearly to (H, W) by :func:`camlens.upsample` when smaller) and one
explained class per image.  Average Drop / Increase, deletion, insertion and the pointing game take 1-D signals
(B, C, L) with maps (B, L) and 3-D volumes (B, C, D, H, W) with maps (B, D, H, W) alike ("pixels" are then the
signal's samples or the volume's voxels); ROAD's imputation is defined on the image plane and stays 2-D.  The
class score is the softmax probability (``score="softmax"``, the default, as in the papers) or the raw logit
(``score="logit"``).  Forward passes run under ``torch.no_grad`` in batches of ``batch_size`` perturbed images,
mixing images and perturbation steps; the model must be in eval mode.

Every function returns per-image values, so a dataset-level number is a sum and a count (see
:class:`FaithfulnessTotals`), reducible across processes.  :func:`faithfulness_scores` runs them all at once.

Pixel rankings break ties deterministically: by the row-major pixel index, lower first, in both the
most-relevant-first and the least-relevant-first orders.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence, Union

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..capture import output_logits, resolve_module
from ..errors import CamlensError
from ..maps import normalize, upsample

Score = Literal["softmax", "logit"]
Baseline = Union[Literal["zeros", "mean", "blur"], Tensor]
Ties = Literal["all", "any", "first"]
BoxSpec = Union[Tensor, Sequence[Tensor]]

# ROAD's noisy linear imputation (Rong et al., ICML 2022): each removed pixel is the weighted mean of its
# in-image 8-neighbours, direct neighbours weighing 1/6 and diagonal ones 1/12.
ROAD_NEIGHBOUR_WEIGHTS: tuple[tuple[int, int, float], ...] = (
    (-1, -1, 1 / 12), (-1, 0, 1 / 6), (-1, 1, 1 / 12),
    (0, -1, 1 / 6), (0, 1, 1 / 6),
    (1, -1, 1 / 12), (1, 0, 1 / 6), (1, 1, 1 / 12),
)
ROAD_PERCENTAGES: tuple[float, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)
METRICS: tuple[str, ...] = (
    "average_drop", "increase_in_confidence", "deletion_auc", "insertion_auc", "road", "pointing_game",
)


# --------------------------------------------------------------------------------------------------- helpers


def _check_model(model: nn.Module) -> None:
    if model.training:
        raise CamlensError(
            f"{type(model).__name__} is in training mode: call model.eval() before computing faithfulness "
            "metrics (dropout changes the scores and batch norm would update its statistics)"
        )


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
    model: nn.Module, images: Tensor, classes: Tensor | Sequence[int] | int, *, score: Score = "softmax",
    batch_size: int = 64,
) -> Tensor:
    """The score (softmax probability or logit) of ``classes`` (B,) on ``images`` (B, C, H, W), on the CPU."""
    _check_model(model)
    classes = _as_classes(classes, images.shape[0], images.device)
    return _batched_scores(model, images.shape[0], lambda i: (images[i], classes[i]), score, batch_size)


def _relevance_rank(maps: Tensor, most_relevant_first: bool = True) -> Tensor:
    """(B, N) position of every pixel in the relevance order (0 = first removed); ties by row-major index."""
    flat = maps.flatten(1)
    order = torch.sort(flat, dim=1, descending=most_relevant_first, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return rank


# ------------------------------------------------------------------------------ Average Drop / Increase


@dataclass
class ConfidenceChange:
    """Per-image results of :func:`confidence_change` (all (B,), on the CPU)."""

    original: Tensor  # Y: score on the image
    masked: Tensor  # O: score on the image multiplied by the map
    average_drop: Tensor  # 100 * max(0, Y - O) / Y, in %; NaN where Y <= 0
    increase_in_confidence: Tensor  # 100 * 1[O > Y]: 0 or 100


def confidence_change(
    model: nn.Module,
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
    _check_model(model)
    batch = images.shape[0]
    classes = _as_classes(classes, batch, images.device)
    maps = _as_maps(maps, images.shape[2:], batch)
    if normalize_maps:
        maps = normalize(maps, spatial_dims=images.ndim - 2)
    weights = maps.to(images.dtype)[:, None]
    masked = _batched_scores(model, batch, lambda i: (images[i] * weights[i], classes[i]), score, batch_size)
    original = (
        class_scores(model, images, classes, score=score, batch_size=batch_size)
        if original_scores is None else original_scores.float().cpu()
    )
    drop = torch.where(original > 0, 100 * (original - masked).clamp_min(0) / original, float("nan"))
    return ConfidenceChange(original, masked, drop, 100 * (masked > original).float())


# -------------------------------------------------------------------------------- Deletion / Insertion


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
    model: nn.Module,
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
    _check_model(model)
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


def deletion_curve(model: nn.Module, images: Tensor, maps: Tensor, classes: Tensor | Sequence[int] | int,
                   **options: Any) -> PerturbationCurve:
    """Deletion AUC (lower is better): :func:`perturbation_curve` with ``mode="deletion"`` (baseline "zeros")."""
    return perturbation_curve(model, images, maps, classes, mode="deletion", **options)


def insertion_curve(model: nn.Module, images: Tensor, maps: Tensor, classes: Tensor | Sequence[int] | int,
                    **options: Any) -> PerturbationCurve:
    """Insertion AUC (higher is better): :func:`perturbation_curve` with ``mode="insertion"`` (baseline "blur")."""
    return perturbation_curve(model, images, maps, classes, mode="insertion", **options)


# ------------------------------------------------------------------------------------------------- ROAD


@functools.lru_cache(maxsize=8)
def _dissection_rank(height: int, width: int) -> np.ndarray:
    """Position of every row-major pixel in a nested-dissection order of the grid (George, SIAM J. Numer. Anal.
    1973): each rectangle lists its two halves, then the middle line that separates them (across the longer side;
    no 8-neighbour edge crosses a full line).  Eliminating in this order keeps the Cholesky fill at
    O(n log n), for any subset of pixels too, since a line still separates whatever pixels remain."""
    order: list[np.ndarray] = []

    def dissect(r0: int, r1: int, c0: int, c1: int) -> None:
        if (r1 - r0) * (c1 - c0) <= 16 or min(r1 - r0, c1 - c0) < 3:
            order.append((np.arange(r0, r1)[:, None] * width + np.arange(c0, c1)).ravel())
        elif r1 - r0 >= c1 - c0:
            mid = (r0 + r1) // 2
            dissect(r0, mid, c0, c1)
            dissect(mid + 1, r1, c0, c1)
            order.append(mid * width + np.arange(c0, c1))
        else:
            mid = (c0 + c1) // 2
            dissect(r0, r1, c0, mid)
            dissect(r0, r1, mid + 1, c1)
            order.append(np.arange(r0, r1) * width + mid)

    dissect(0, height, 0, width)
    rank = np.empty(height * width, dtype=np.int64)
    rank[np.concatenate(order)] = np.arange(height * width)
    rank.flags.writeable = False
    return rank


def _imputation_system(
    missing: np.ndarray, image: np.ndarray
) -> tuple[scipy.sparse.csc_matrix, np.ndarray, np.ndarray]:
    """For the missing pixels u of one image: s_i u_i − Σ_{j missing} w_ij u_j = Σ_{j kept} w_ij x_j, with s_i
    the sum of the weights of pixel i's in-image neighbours.  Returns (A, right-hand sides (n, C), pixel ids), the
    unknowns numbered in :func:`_dissection_rank` order."""
    height, width = missing.shape
    flat_missing = missing.ravel()
    ids = np.flatnonzero(flat_missing)
    ids = ids[np.argsort(_dissection_rank(height, width)[ids])]
    var = np.full(height * width, -1, dtype=np.int64)
    var[ids] = np.arange(ids.size)
    rows, cols = np.divmod(ids, width)
    values = image.reshape(image.shape[0], -1)
    diag = np.zeros(ids.size)
    rhs = np.zeros((ids.size, image.shape[0]))
    a_rows, a_cols, a_vals = [], [], []
    for dr, dc, weight in ROAD_NEIGHBOUR_WEIGHTS:
        r, c = rows + dr, cols + dc
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        neighbour = np.where(inside, r * width + c, 0)
        diag += weight * inside
        unknown = inside & flat_missing[neighbour]
        kept = inside & ~flat_missing[neighbour]
        rhs[kept] += weight * values[:, neighbour[kept]].T
        a_rows.append(np.flatnonzero(unknown))
        a_cols.append(var[neighbour[unknown]])
        a_vals.append(np.full(a_rows[-1].size, -weight))
    everyone = np.arange(ids.size)
    matrix = scipy.sparse.csc_matrix(
        (np.concatenate([diag, *a_vals]), (np.concatenate([everyone, *a_rows]), np.concatenate([everyone, *a_cols]))),
        shape=(ids.size, ids.size),
    )
    return matrix, rhs, ids


def noisy_linear_imputation(
    images: Tensor, missing: Tensor, noise: float = 0.01, generator: torch.Generator | None = None
) -> Tensor:
    """ROAD's noisy linear imputation (Rong et al., ICML 2022): every missing pixel (``missing`` (N, H, W) bool)
    of ``images`` (N, C, H, W) becomes the weighted mean of its in-image 8-neighbours (direct 1/6, diagonal 1/12,
    renormalized by the weight of the neighbours that exist), missing or not, per channel; then Gaussian noise of
    standard deviation ``noise`` (absolute, in the units of ``images``) is added to the imputed pixels only.

    The coupled equations form a sparse symmetric positive definite system per image (non-singular as long as one
    pixel is kept: every removed region then borders a kept pixel), solved exactly in float64 on the CPU by scipy's
    sparse LU, all channels at once, in nested-dissection order without pivoting (stable for SPD matrices).
    Returns a new tensor.  ROAD's reference code adds noise 0.01 to images in [0, 1] before normalization; for
    inputs normalized by a standard deviation s, noise 0.01 / s is the same perturbation.
    """
    _road_is_2d(images)
    if missing.shape != (images.shape[0], *images.shape[-2:]):
        expected = (images.shape[0], *images.shape[-2:])
        raise CamlensError(f"missing has shape {tuple(missing.shape)}; expected {expected} (True = removed pixel)")
    out = images.detach().to("cpu", torch.float64).clone(memory_format=torch.contiguous_format)
    pixels = out.numpy().reshape(*out.shape[:2], -1)  # shares memory with out; numpy scatters ~10x faster here
    holes = missing.detach().cpu().bool().numpy()
    for n in range(out.shape[0]):
        if not holes[n].any():
            continue
        if holes[n].all():
            raise CamlensError("noisy linear imputation needs at least one kept pixel; remove less than 100 %")
        matrix, rhs, ids = _imputation_system(holes[n], pixels[n].reshape(out.shape[1:]))
        factors = scipy.sparse.linalg.splu(
            matrix, permc_spec="NATURAL", diag_pivot_thresh=0.0, options={"SymmetricMode": True}
        )
        back = np.argsort(ids)  # row-major again, so that noise draws land on the same pixels whatever the order
        ids, solution = ids[back], factors.solve(rhs)[back]
        if noise:
            solution += noise * torch.randn(solution.shape, generator=generator, dtype=torch.float64).numpy()
        pixels[n][:, ids] = solution.T
    return out.to(images.device, images.dtype)


def _road_is_2d(images: Tensor) -> None:
    if images.ndim != 4:
        raise CamlensError(
            f"ROAD is defined for 2-D images (B, C, H, W) only (its imputation averages the 8 neighbours of a "
            f"pixel), got inputs of shape {tuple(images.shape)}; use deletion/insertion for 1-D signals and 3-D volumes"
        )


@dataclass
class RoadResult:
    """Per-image ROAD scores (on the CPU): ``morf`` and ``lerf`` (B, P) at ``percentages`` (P,) of pixels
    removed, and ``combined`` (B,) = mean_p (LeRF_p − MoRF_p) / 2; higher is better."""

    percentages: Tensor
    morf: Tensor
    lerf: Tensor
    combined: Tensor


def road(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    classes: Tensor | Sequence[int] | int,
    *,
    percentages: Sequence[float] = ROAD_PERCENTAGES,
    noise: float = 0.01,
    score: Score = "softmax",
    seed: int = 0,
    batch_size: int = 64,
) -> RoadResult:
    """ROAD, Remove And Debias (Rong et al., ICML 2022, "A Consistent and Efficient Evaluation Strategy for
    Attribution Methods"), without retraining.

    For each p in ``percentages`` (in %), MoRF removes the round(p·N / 100) most relevant pixels and LeRF the
    round(p·N / 100) least relevant ones (ties by row-major index in both orders), fills them with
    :func:`noisy_linear_imputation` (noise drawn from a generator seeded with ``seed``) and scores the class.
    ``combined`` = mean over p of (LeRF_p − MoRF_p) / 2: a faithful map keeps the score when its least relevant
    pixels go and loses it when its most relevant ones go.  This is pytorch_grad_cam's ``ROADCombined``
    (whose ``ROADMostRelevantFirst(q)`` / ``ROADLeastRelevantFirst(q)`` are our MoRF / LeRF at 100 − q %, q being
    the percentile kept); the paper reports the MoRF and LeRF curves (as accuracies), which are ``morf``/``lerf``.
    2P forward passes per image plus 2P sparse solves.  2-D images only.
    """
    _check_model(model)
    _road_is_2d(images)
    batch, _, height, width = images.shape
    classes = _as_classes(classes, batch, images.device)
    maps = _as_maps(maps, (height, width), batch)
    pct = torch.tensor([float(p) for p in percentages], dtype=torch.float64)
    if pct.numel() == 0 or bool((pct <= 0).any() or (pct >= 100).any()):
        raise CamlensError(f"percentages={list(percentages)}: give values strictly between 0 and 100")
    counts = torch.round(pct * height * width / 100).long().to(images.device)
    ranks = torch.stack([_relevance_rank(maps, True), _relevance_rank(maps, False)], 1)  # (B, 2, N)
    generator = torch.Generator().manual_seed(seed)
    per_image = 2 * len(counts)

    def build(items: Tensor) -> tuple[Tensor, Tensor]:
        items = items.to(images.device)
        b, rest = items // per_image, items % per_image
        order, p = rest // len(counts), rest % len(counts)
        missing = (ranks[b, order] < counts[p][:, None]).view(-1, height, width)
        return noisy_linear_imputation(images[b], missing, noise, generator), classes[b]

    scores = _batched_scores(model, batch * per_image, build, score, batch_size).view(batch, 2, len(counts))
    morf, lerf = scores[:, 0], scores[:, 1]
    return RoadResult(pct.float(), morf, lerf, ((lerf - morf) / 2).mean(-1))


# -------------------------------------------------------------------------------------------- pointing game


def boxes_to_masks(boxes: BoxSpec, size: Sequence[int], batch: int | None = None) -> Tensor:
    """Rasterize boxes [x0, y0, x1, y1] (pixel coordinates, exclusive right/bottom edges) into (B, H, W) bool
    masks: pixel (row r, column c) is inside when its centre (c + ½, r + ½) lies in [x0, x1) × [y0, y1).
    ``boxes``: (B, 4), (B, K, 4), or a list of (K_i, 4) tensors (several objects per image; K_i may be 0).
    Boxes are 2-D: for 1-D signals and 3-D volumes give the ground truth as masks."""
    if len(size) != 2:
        raise CamlensError(
            f"boxes are 2-D only, but the maps are {len(size)}-D (size {tuple(size)}); give the ground truth of "
            "1-D signals and 3-D volumes as masks= (B, *size) bool"
        )
    if isinstance(boxes, Tensor):
        boxes = boxes[:, None] if boxes.ndim == 2 else boxes
        if boxes.ndim != 3 or boxes.shape[-1] != 4:
            raise CamlensError(f"boxes have shape {tuple(boxes.shape)}; expected (B, 4), (B, K, 4) or a list of (K, 4)")
        boxes = list(boxes)
    if batch is not None and len(boxes) != batch:
        raise CamlensError(f"{len(boxes)} box sets for {batch} images; give one (K, 4) set per image")
    height, width = int(size[0]), int(size[1])
    ys = torch.arange(height, dtype=torch.float32) + 0.5
    xs = torch.arange(width, dtype=torch.float32) + 0.5
    masks = torch.zeros(len(boxes), height, width, dtype=torch.bool)
    for i, image_boxes in enumerate(boxes):
        image_boxes = torch.as_tensor(image_boxes, dtype=torch.float32).reshape(-1, 4).cpu()
        for x0, y0, x1, y1 in image_boxes.tolist():
            masks[i] |= ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
    return masks


def pointing_game(
    maps: Tensor,
    *,
    boxes: BoxSpec | None = None,
    masks: Tensor | None = None,
    size: Sequence[int] | None = None,
    tolerance: int = 15,
    ties: Ties = "all",
) -> Tensor:
    """Pointing game (Zhang et al., ECCV 2016, "Top-down Neural Attention by Excitation Backprop"): a hit when the
    map's maximum lies within ``tolerance`` pixels of the ground truth of the explained class.

    The ground truth is ``masks`` (B, H, W) bool or ``boxes`` (see :func:`boxes_to_masks`), at ``size`` (default:
    the masks' size, else the maps' size); maps are upsampled to it first.  A point hits when some ground-truth
    pixel lies at Euclidean distance < ``tolerance`` (strict, as TorchRay's reference benchmark) or the point is
    inside.  1-D signals and 3-D volumes: masks (B, L) or (B, D, H, W) (or ``size`` of that rank), distances
    between samples or voxels; (B, 1, H, W) masks without ``size`` are read as 2-D.  Tied maxima: ``"all"``
    (default) hits only when every tied maximum hits, so a flat map is not rewarded; ``"any"`` when one of them
    does; ``"first"`` uses the first maximum in row-major order.  Returns
    (B,) float on the CPU: 1 hit, 0 miss, NaN where the image has no ground truth (skipped, as TorchRay).
    Per-class and mean accuracy: :class:`FaithfulnessTotals`.
    """
    if (boxes is None) == (masks is None):
        raise CamlensError("pointing_game needs the ground truth as exactly one of boxes= or masks=")
    if ties not in ("all", "any", "first"):
        raise CamlensError(f"ties={ties!r}: use 'all', 'any' or 'first'")
    if tolerance < 0:
        raise CamlensError(f"tolerance={tolerance} must be >= 0 pixels")
    batch = maps.shape[0]
    if masks is not None:
        if size is None:
            size = masks.shape[2:] if masks.ndim == 4 and masks.shape[1] == 1 else masks.shape[1:]
        if masks.ndim == len(size) + 2 and masks.shape[1] == 1:
            masks = masks[:, 0]
        truth = masks.detach().cpu().bool()
        if tuple(truth.shape) != (batch, *map(int, size)):
            raise CamlensError(f"masks have shape {tuple(masks.shape)}; expected {(batch, *map(int, size))}")
    else:
        size = maps.shape[-2:] if size is None else size
        truth = boxes_to_masks(boxes, size, batch)  # type: ignore[arg-type]  # boxes is given when masks is not (checked above)
    maps = _as_maps(maps.detach(), size, batch).cpu()
    near = _near(truth, tolerance).flatten(1)
    flat = maps.flatten(1)
    peak = flat == flat.amax(1, keepdim=True)
    if ties == "first":
        hit = near.gather(1, flat.argmax(1, keepdim=True))[:, 0]
    elif ties == "any":
        hit = (peak & near).any(1)
    else:
        hit = ~(peak & ~near).any(1)
    return torch.where(truth.flatten(1).any(1), hit.float(), float("nan"))


def _near(truth: Tensor, tolerance: int) -> Tensor:
    """Where a point hits: inside the ground truth or at Euclidean distance < tolerance of it (any rank), from the
    exact distance transform to the nearest ground-truth point (scipy.ndimage.distance_transform_edt)."""
    from scipy.ndimage import distance_transform_edt

    near = torch.zeros_like(truth)
    for i, image in enumerate(truth.numpy()):
        if image.any():
            near[i] = torch.from_numpy(distance_transform_edt(~image) < max(tolerance, 1))
    return near


# ----------------------------------------------------------------------------- model randomization check


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
    model: nn.Module,
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
    _check_model(model)
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


# ------------------------------------------------------------------------------------------- all at once


@dataclass(frozen=True)
class FaithfulnessConfig:
    """Options of :func:`faithfulness_scores`; every convention is a field (see each metric's docstring)."""

    metrics: tuple[str, ...] = METRICS
    score: Score = "softmax"
    normalize_maps: bool = True
    steps: int = 100
    deletion_baseline: Literal["zeros", "mean", "blur"] = "zeros"
    insertion_baseline: Literal["zeros", "mean", "blur"] = "blur"
    blur_kernel: int = 11
    blur_sigma: float = 5.0
    road_percentages: tuple[float, ...] = ROAD_PERCENTAGES
    road_noise: float = 0.01
    tolerance: int = 15
    ties: Ties = "all"
    batch_size: int = 64
    seed: int = 0


def faithfulness_scores(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    classes: Tensor | Sequence[int] | int,
    *,
    boxes: BoxSpec | None = None,
    masks: Tensor | None = None,
    config: FaithfulnessConfig = FaithfulnessConfig(),
) -> dict[str, Tensor]:
    """Per-image values (B,) on the CPU of every metric in ``config.metrics``, sharing the unperturbed forward pass:

    - ``average_drop`` (%), ``increase_in_confidence`` (0 or 100): :func:`confidence_change`;
    - ``deletion_auc``, ``insertion_auc``: :func:`deletion_curve`, :func:`insertion_curve`;
    - ``road`` (combined), ``road_morf`` and ``road_lerf`` (means over the percentages): :func:`road`;
    - ``pointing_game`` (1 hit, 0 miss, NaN without ground truth): :func:`pointing_game`, only when ``boxes`` or
      ``masks`` are given.

    Dataset values are means over images (:class:`FaithfulnessTotals`).  Forward passes per image:
    1 + 1 (Average Drop / Increase) + S (deletion) + S (insertion) + 2P (ROAD).
    """
    unknown = set(config.metrics) - set(METRICS)
    if unknown:
        raise CamlensError(f"unknown metrics {sorted(unknown)}; choose from {', '.join(METRICS)}")
    _check_model(model)
    batch = images.shape[0]
    classes = _as_classes(classes, batch, images.device)
    maps = _as_maps(maps, images.shape[2:], batch)
    wanted = set(config.metrics)
    if "road" in wanted and images.ndim != 4:
        raise CamlensError(
            f"ROAD is 2-D only and the inputs have shape {tuple(images.shape)}: leave 'road' out of "
            "FaithfulnessConfig(metrics=...) for 1-D signals and 3-D volumes"
        )
    out: dict[str, Tensor] = {}
    common: dict[str, Any] = dict(score=config.score, batch_size=config.batch_size)
    needs_original = wanted & {"average_drop", "increase_in_confidence", "deletion_auc", "insertion_auc"}
    original = class_scores(model, images, classes, **common) if needs_original else None
    if wanted & {"average_drop", "increase_in_confidence"}:
        change = confidence_change(
            model, images, maps, classes, normalize_maps=config.normalize_maps, original_scores=original, **common
        )
        for key in ("average_drop", "increase_in_confidence"):
            if key in wanted:
                out[key] = getattr(change, key)
    blur = dict(blur_kernel=config.blur_kernel, blur_sigma=config.blur_sigma, steps=config.steps)
    if "deletion_auc" in wanted:
        out["deletion_auc"] = deletion_curve(
            model, images, maps, classes, baseline=config.deletion_baseline, original_scores=original, **blur, **common
        ).auc
    if "insertion_auc" in wanted:
        out["insertion_auc"] = insertion_curve(
            model, images, maps, classes, baseline=config.insertion_baseline, original_scores=original, **blur, **common
        ).auc
    if "road" in wanted:
        result = road(
            model, images, maps, classes, percentages=config.road_percentages, noise=config.road_noise,
            seed=config.seed, **common,
        )
        out.update(road=result.combined, road_morf=result.morf.mean(1), road_lerf=result.lerf.mean(1))
    if "pointing_game" in wanted and (boxes is not None or masks is not None):
        out["pointing_game"] = pointing_game(
            maps, boxes=boxes, masks=masks, size=images.shape[2:], tolerance=config.tolerance, ties=config.ties
        )
    return out


@dataclass
class FaithfulnessTotals:
    """Running sums of per-image metric values, reducible across processes by adding them (``a + b``).

    ``sums``/``counts`` per metric skip NaN values; the pointing game also keeps hits and trials per class, since
    its reported accuracy is the mean over classes of the per-class accuracy (Zhang et al.).
    """

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    class_hits: dict[int, int] = field(default_factory=dict)
    class_trials: dict[int, int] = field(default_factory=dict)

    def update(self, scores: Mapping[str, Tensor], classes: Tensor | Sequence[int] | None = None) -> None:
        """Add a batch of :func:`faithfulness_scores` output; ``classes`` (B,) are needed for the pointing game."""
        for key, values in scores.items():
            values = values.detach().double().cpu().reshape(-1)
            finite = values[torch.isfinite(values)]
            self.sums[key] = self.sums.get(key, 0.0) + float(finite.sum())
            self.counts[key] = self.counts.get(key, 0) + finite.numel()
        if "pointing_game" in scores and classes is not None:
            hits = scores["pointing_game"].detach().cpu().reshape(-1)
            for c, h in zip(torch.as_tensor(classes).reshape(-1).tolist(), hits.tolist()):
                if not math.isnan(h):
                    self.class_hits[c] = self.class_hits.get(c, 0) + int(h)
                    self.class_trials[c] = self.class_trials.get(c, 0) + 1

    def __add__(self, other: "FaithfulnessTotals") -> "FaithfulnessTotals":
        add = lambda a, b: {k: a.get(k, 0) + b.get(k, 0) for k in {*a, *b}}  # noqa: E731
        return FaithfulnessTotals(
            add(self.sums, other.sums), add(self.counts, other.counts),
            add(self.class_hits, other.class_hits), add(self.class_trials, other.class_trials),
        )

    def pointing_game_per_class(self) -> dict[int, float]:
        """Hits / trials for every class seen with ground truth."""
        return {c: self.class_hits.get(c, 0) / n for c, n in sorted(self.class_trials.items())}

    def summary(self) -> dict[str, float]:
        """Mean of every metric over the images where it is defined (NaN when none); ``pointing_game`` is the
        mean per-class accuracy when classes were given (``pointing_game_overall`` the plain hit rate)."""
        out = {k: (self.sums[k] / self.counts[k] if self.counts.get(k) else float("nan")) for k in sorted(self.sums)}
        per_class = self.pointing_game_per_class()
        if per_class:
            out["pointing_game_overall"] = out["pointing_game"]
            out["pointing_game"] = sum(per_class.values()) / len(per_class)
        return out


__all__ = [
    "ConfidenceChange",
    "FaithfulnessConfig",
    "FaithfulnessTotals",
    "PerturbationCurve",
    "RandomizationResult",
    "RoadResult",
    "boxes_to_masks",
    "class_scores",
    "confidence_change",
    "deletion_curve",
    "faithfulness_scores",
    "insertion_curve",
    "noisy_linear_imputation",
    "perturbation_curve",
    "pointing_game",
    "randomization_check",
    "rank_correlation",
    "rise_blur",
    "road",
    "ssim",
]
