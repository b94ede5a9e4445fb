"""Weakly supervised localization metrics, each reducible from sufficient statistics.

Every accumulator keeps only counts (int64 tensors): ``update`` adds a batch, ``merge`` adds another
accumulator's counts (so per-rank statistics of a distributed run are summed with one all-reduce of
``state_dict()``), and ``compute`` turns counts into percentages.

* Top-1 / Top-5 Loc (ILSVRC; Zhou et al. CVPR 2016): the class is among the top-1 / top-5 predictions and the
  box of the ground-truth class's map has IoU >= 0.5 with a ground-truth box.  (For top-5 this equals ILSVRC's
  "best of five guesses", since a guess of the wrong class is wrong whatever its box.)  GT-known Loc: the box
  alone.  Boxes from the CAM paper's protocol (:func:`camlens.boxes.paper_boxes`, 20% of the max by default).
* MaxBoxAcc (Choe et al. CVPR 2020): box accuracy at IoU >= 0.5 of the largest contour, at the best threshold of
  the sweep.  MaxBoxAccV2: for IoU 0.3, 0.5 and 0.7, the best-threshold accuracy of the best-matching contour
  among all contours, averaged.  Their box and IoU conventions (:mod:`camlens.boxes`).
* PxAP (Choe et al.): area under the pixel precision-recall curve of the map against ground-truth masks, ignored
  pixels left out; histograms over the sweep's thresholds, with Choe et al.'s bins and summation.

IoU is the area IoU of exclusive-edge boxes (:func:`camlens.boxes.box_iou`).  A map with several ground-truth
boxes is right if its box matches any of them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..boxes import box_iou, boxes_are_2d, paper_boxes, wsol_sweep, wsol_thresholds
from ..constants import PAPER_THRESHOLD
from ..errors import CamlensError

DEFAULT_IOUS = (0.3, 0.5, 0.7)


def _pct(count: Tensor, total: Tensor) -> float | None:
    return None if int(total) == 0 else float(count) * 100.0 / float(total)


def _check_boxes(gt_boxes: Sequence[Tensor], batch: int) -> list[Tensor]:
    if len(gt_boxes) != batch:
        raise CamlensError(f"got {len(gt_boxes)} ground-truth box lists for {batch} maps")
    out = []
    for i, boxes in enumerate(gt_boxes):
        b = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
        if b.shape[0] == 0:
            raise CamlensError(f"map {i} has no ground-truth box; every scored image needs at least one")
        out.append(b)
    return out


def _batch_maps(maps: Tensor | np.ndarray) -> Tensor | np.ndarray:
    if maps.ndim == 2:
        return maps[None]
    if maps.ndim != 3:
        raise boxes_are_2d(maps.shape, "(H, W) or (B, H, W)")
    return maps


class _Counts:
    """Shared state handling: named int64 count tensors that add up."""

    _names: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, Tensor]:
        return {name: getattr(self, name).clone() for name in self._names}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name in self._names:
            mine = getattr(self, name)
            if state[name].shape != mine.shape:
                raise CamlensError(f"state {name!r} has shape {tuple(state[name].shape)}, expected {tuple(mine.shape)}")
            setattr(self, name, state[name].to(torch.int64).clone())

    def merge(self, other: "_Counts") -> "_Counts":
        """Add another accumulator's counts (same settings) to this one; returns self."""
        if type(other) is not type(self):
            raise CamlensError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        state = other.state_dict()
        for name in self._names:
            mine = getattr(self, name)
            if state[name].shape != mine.shape:
                raise CamlensError(f"cannot merge {type(self).__name__}s with different thresholds")
            setattr(self, name, mine + state[name])
        return self


class ClassLocalization(_Counts):
    """Top-1 Loc, Top-5 Loc and GT-known Loc with the CAM paper's boxes (``threshold`` of the map's max, largest
    connected component), at IoU >= ``iou``; and Top-1 Cls, the classification accuracy of the same images, which
    WSOL papers report beside them."""

    _names = ("top1", "top5", "gt_known", "count", "classified", "top1_cls")

    def __init__(self, threshold: float = PAPER_THRESHOLD, iou: float = 0.5) -> None:
        self.threshold, self.iou = threshold, iou
        self.top1 = torch.zeros((), dtype=torch.int64)
        self.top5 = torch.zeros((), dtype=torch.int64)
        self.gt_known = torch.zeros((), dtype=torch.int64)
        self.count = torch.zeros((), dtype=torch.int64)
        self.classified = torch.zeros((), dtype=torch.int64)  # the maps that came with predictions
        self.top1_cls = torch.zeros((), dtype=torch.int64)

    def update(
        self,
        maps: Tensor | np.ndarray,
        gt_boxes: Sequence[Tensor],
        labels: Tensor | None = None,
        logits: Tensor | None = None,
    ) -> Tensor:
        """``maps`` (B, H, W): the ground-truth class's map of each image, in the pixel grid of ``gt_boxes``;
        ``labels`` (B,) and ``logits`` (B, C) for Top-1/Top-5 Loc and Top-1 Cls (without them, e.g. for
        precomputed maps, only GT-known Loc is counted).  Returns the predicted boxes (B, 4)."""
        maps = _batch_maps(maps)
        boxes = paper_boxes(maps, self.threshold)
        gts = _check_boxes(gt_boxes, boxes.shape[0])
        hit = torch.tensor([bool((box_iou(box, gt) >= self.iou).any()) for box, gt in zip(boxes, gts)])
        self.gt_known += int(hit.sum())
        self.count += boxes.shape[0]
        if logits is not None:
            labels = torch.as_tensor(labels).reshape(-1).cpu()
            top = logits.detach().float().cpu().topk(min(5, logits.shape[1]), dim=1).indices
            self.top1 += int((hit & (top[:, 0] == labels)).sum())
            self.top5 += int((hit & (top == labels[:, None]).any(1)).sum())
            self.top1_cls += int((top[:, 0] == labels).sum())
            self.classified += boxes.shape[0]
        return boxes

    def compute(self) -> dict[str, float | None]:
        return {
            "top1_loc": _pct(self.top1, self.classified),
            "top5_loc": _pct(self.top5, self.classified),
            "gt_known_loc": _pct(self.gt_known, self.count),
            "top1_cls": _pct(self.top1_cls, self.classified),
        }


class BoxAccuracy(_Counts):
    """MaxBoxAcc and MaxBoxAccV2 (Choe et al., CVPR 2020) from per-threshold hit counts.

    ``correct_largest[k, i]`` / ``correct_any[k, i]``: maps whose largest contour / best contour at threshold i
    has IoU >= ``ious[k]`` with a ground-truth box.
    """

    _names = ("correct_largest", "correct_any", "count")

    def __init__(self, thresholds: Sequence[float] | np.ndarray | None = None, ious: Sequence[float] = DEFAULT_IOUS):
        self.thresholds = torch.from_numpy(
            wsol_thresholds() if thresholds is None else np.asarray(thresholds, np.float64)
        )
        self.ious = tuple(float(i) for i in ious)
        if 0.5 not in self.ious:
            raise CamlensError(f"ious {self.ious} must include 0.5 (MaxBoxAcc's IoU)")
        k, t = len(self.ious), self.thresholds.shape[0]
        self.correct_largest = torch.zeros(k, t, dtype=torch.int64)
        self.correct_any = torch.zeros(k, t, dtype=torch.int64)
        self.count = torch.zeros((), dtype=torch.int64)

    def update(self, maps: Tensor | np.ndarray, gt_boxes: Sequence[Tensor]) -> None:
        """``maps`` (B, H, W) in [0, 1] (normalized: the protocol does not rescale); ``gt_boxes``: per map, an
        (n, 4) tensor of ground-truth boxes in the maps' pixel grid, camlens convention."""
        maps = _batch_maps(maps)
        sweep = wsol_sweep(maps, self.thresholds.numpy())
        self.add_sweep(sweep, gt_boxes)

    def add_sweep(self, sweep, gt_boxes: Sequence[Tensor]) -> None:
        """Count a precomputed :class:`camlens.boxes.ContourSweep` (same thresholds)."""
        bsz = sweep.levels.shape[0]
        best_largest, best_any = sweep.protocol_ious(_check_boxes(gt_boxes, bsz))  # (B, T) each
        ious = torch.tensor(self.ious, dtype=torch.float64)[:, None, None]
        self.correct_largest += (best_largest[None] >= ious).sum(1)
        self.correct_any += (best_any[None] >= ious).sum(1)
        self.count += bsz

    def compute(self) -> dict[str, object]:
        if int(self.count) == 0:
            return {
                "maxboxacc": None,
                "maxboxacc_v2": None,
                "best_threshold": None,
                "maxboxacc_per_iou": {},
                "maxboxacc_v2_per_iou": {},
            }
        acc_largest = self.correct_largest.double() * 100.0 / float(self.count)
        acc_any = self.correct_any.double() * 100.0 / float(self.count)
        k50 = self.ious.index(0.5)
        best_v2 = acc_any.amax(1)
        return {
            "maxboxacc": float(acc_largest[k50].max()),
            "maxboxacc_v2": float(best_v2.mean()),
            "best_threshold": float(self.thresholds[int(torch.argmax(acc_largest[k50]))]),
            "maxboxacc_per_iou": {_iou_key(i): float(a) for i, a in zip(self.ious, acc_largest.amax(1))},
            "maxboxacc_v2_per_iou": {_iou_key(i): float(a) for i, a in zip(self.ious, best_v2)},
        }

    def accuracy_at(self, threshold: float, iou: float = 0.5) -> float | None:
        """Box accuracy (largest contour, IoU >= ``iou``) at the sweep threshold nearest ``threshold``: the
        score of a threshold fixed beforehand, e.g. chosen on another split as Choe et al. choose it."""
        if int(self.count) == 0:
            return None
        index = int(torch.argmin((self.thresholds - threshold).abs()))
        return float(self.correct_largest[self.ious.index(iou), index]) * 100.0 / float(self.count)


def _iou_key(iou: float) -> str:
    return f"iou{round(iou * 100)}"


class PixelAP(_Counts):
    """PxAP (Choe et al., CVPR 2020): average precision of map values as pixel scores for ground-truth masks.

    Score histograms over the bins ``[t_0, t_1), ..., [t_{T-1}, 1), [1, 2), [2, 3]`` for foreground and background
    pixels (ignored pixels left out); AP = sum_j precision_j (recall_j - recall_{j-1}) over thresholds from the top,
    skipping thresholds with no positive prediction, in percent."""

    _names = ("hist_fg", "hist_bg")

    def __init__(self, thresholds: Sequence[float] | np.ndarray | None = None) -> None:
        t = wsol_thresholds() if thresholds is None else np.asarray(thresholds, np.float64)
        self.edges = torch.from_numpy(np.append(t, [1.0, 2.0, 3.0]))
        self.hist_fg = torch.zeros(t.shape[0] + 2, dtype=torch.int64)
        self.hist_bg = torch.zeros(t.shape[0] + 2, dtype=torch.int64)

    def update(self, maps: Tensor | np.ndarray, masks: Tensor, ignore: Tensor | None = None) -> None:
        """``maps`` (B, H, W) in [0, 1]; ``masks`` (B, H, W) bool foreground; ``ignore`` (B, H, W) bool or None."""
        maps = torch.as_tensor(_batch_maps(maps)).double().cpu()
        masks = torch.as_tensor(masks).bool().cpu().reshape(maps.shape)
        if not torch.isfinite(maps).all():
            raise CamlensError("maps contain NaN or infinite values")
        if maps.numel() and (maps.min() < 0 or maps.max() > 1):
            raise CamlensError("maps must lie in [0, 1] for PxAP; min-max normalize each map first")
        keep = torch.ones_like(masks) if ignore is None else ~torch.as_tensor(ignore).bool().cpu().reshape(maps.shape)
        nbins = self.hist_fg.shape[0]
        bins = (torch.bucketize(maps, self.edges, right=True) - 1).clamp(0, nbins - 1)
        self.hist_fg += torch.bincount(bins[masks & keep], minlength=nbins)
        self.hist_bg += torch.bincount(bins[~masks & keep], minlength=nbins)

    def compute(self) -> dict[str, float | None]:
        tp = self.hist_fg.flip(0).cumsum(0).double()
        fp = self.hist_bg.flip(0).cumsum(0).double()
        positives = float(self.hist_fg.sum())
        predicted = tp + fp
        if positives == 0 or not (predicted > 0).any():
            return {"pxap": None}
        precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
        recall = tp / positives
        terms = precision[1:] * (recall[1:] - recall[:-1])
        return {"pxap": float(terms[predicted[1:] > 0].sum() * 100.0)}
