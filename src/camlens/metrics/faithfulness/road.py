"""ROAD: remove and debias with noisy linear imputation (Rong et al., ICML 2022, "A Consistent and Efficient
Evaluation Strategy for Attribution Methods").

Conventions: :mod:`camlens.metrics.faithfulness`."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
from torch import Tensor

from ...capture import ModelLike
from ...errors import CamlensError
from ._common import Score, _as_classes, _as_maps, _batched_scores, _check_model, _relevance_rank

# ROAD's noisy linear imputation (Rong et al., ICML 2022): each removed pixel is the weighted mean of its
# in-image 8-neighbours, direct neighbours weighing 1/6 and diagonal ones 1/12.
ROAD_NEIGHBOUR_WEIGHTS: tuple[tuple[int, int, float], ...] = (
    (-1, -1, 1 / 12),
    (-1, 0, 1 / 6),
    (-1, 1, 1 / 12),
    (0, -1, 1 / 6),
    (0, 1, 1 / 6),
    (1, -1, 1 / 12),
    (1, 0, 1 / 6),
    (1, 1, 1 / 12),
)
ROAD_PERCENTAGES: tuple[float, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)


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
    model: ModelLike,
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
    model = _check_model(model)
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
