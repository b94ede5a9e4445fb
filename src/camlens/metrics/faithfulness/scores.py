"""All the faithfulness metrics at once over a dataset: the config, per-image scores and reducible totals.

Conventions: :mod:`camlens.metrics.faithfulness`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import torch
from torch import Tensor

from ...capture import ModelLike
from ...errors import CamlensError
from ._common import BoxSpec, Score, Ties, _as_classes, _as_maps, _check_model, class_scores
from .confidence import confidence_change
from .curves import deletion_curve, insertion_curve
from .pointing import pointing_game
from .road import ROAD_PERCENTAGES, road

METRICS: tuple[str, ...] = (
    "average_drop",
    "increase_in_confidence",
    "deletion_auc",
    "insertion_auc",
    "road",
    "pointing_game",
)


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
    model: ModelLike,
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
    model = _check_model(model)
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
            model,
            images,
            maps,
            classes,
            percentages=config.road_percentages,
            noise=config.road_noise,
            seed=config.seed,
            **common,
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
            add(self.sums, other.sums),
            add(self.counts, other.counts),
            add(self.class_hits, other.class_hits),
            add(self.class_trials, other.class_trials),
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
