"""Localization evaluation: a model and a CAM method over a dataset, or precomputed score maps, fed to every
WSOL metric (:mod:`camlens.metrics.localization`), with box baselines on the same data; and boxes for files.

Maps from a model are computed for the ground-truth class and upsampled (bilinear) to the original image size, so
every box and metric lives in the original pixel grid of the annotations.  The CAM paper's boxes (Top-1/Top-5/
GT-known Loc) threshold that raw map at 20% of its maximum, as the paper states; Choe et al.'s sweep and PxAP take
it min-max normalized, as their protocol states.  (Normalizing first would move the paper's threshold to 20% of
the way up from the map's minimum, which is a different rule for maps with negative values such as CAM.)  Precomputed
maps (Choe et al.'s layout: one ``<image_id>.npy`` per image) are scored as given, in [0, 1], with ground-truth
boxes mapped onto the map's grid as Choe et al. do (:func:`camlens.boxes.wsol_resize_boxes`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .boxes import box_iou, paper_boxes, scale_boxes, wsol_resize_boxes, wsol_sweep
from .constants import PAPER_THRESHOLD
from .data.annotations import Annotations, MaskFiles, load_mask
from .data.samples import Sample
from .distributed import (
    Context,
    ProgressLog,
    gather,
    pack_counts,
    resume_entries,
    shard_batches,
    sum_tensors,
    unpack_counts,
)
from .errors import CamlensError
from .files import output_folder, write_atomic
from .maps import normalize, upsample
from .metrics.faithfulness import FaithfulnessConfig, FaithfulnessTotals, faithfulness_scores
from .metrics.localization import DEFAULT_IOUS, BoxAccuracy, ClassLocalization, PixelAP, _iou_key
from .reference import REFERENCE, check_protocol, nearest_masks, reference_input, reference_score_maps

METRIC_ROWS = (
    ("Top-1 Cls", "top1_cls"),
    ("Top-1 Loc", "top1_loc"),
    ("Top-5 Loc", "top5_loc"),
    ("GT-known Loc", "gt_known_loc"),
    ("MaxBoxAcc", "maxboxacc"),
    ("MaxBoxAccV2", "maxboxacc_v2"),
    ("PxAP", "pxap"),
)

FAITHFULNESS_ROWS = (
    ("Average Drop %", "average_drop"),
    ("Increase in Conf. %", "increase_in_confidence"),
    ("Deletion AUC (lower)", "deletion_auc"),
    ("Insertion AUC", "insertion_auc"),
    ("ROAD (combined)", "road"),
    ("Pointing game", "pointing_game"),
)


@dataclass
class Accumulators:
    """All localization accumulators of one evaluation; ``merge`` adds another run's counts."""

    loc: ClassLocalization
    box: BoxAccuracy
    pixel: PixelAP

    @classmethod
    def create(
        cls,
        thresholds: np.ndarray | None = None,
        paper_threshold: float = PAPER_THRESHOLD,
        ious: Sequence[float] = DEFAULT_IOUS,
    ) -> "Accumulators":
        return cls(ClassLocalization(paper_threshold), BoxAccuracy(thresholds, ious), PixelAP(thresholds))

    def merge(self, other: "Accumulators") -> "Accumulators":
        self.loc.merge(other.loc)
        self.box.merge(other.box)
        self.pixel.merge(other.pixel)
        return self

    def state_dict(self) -> dict[str, Tensor]:
        """Every count tensor, named ``loc.*``, ``box.*``, ``pixel.*``: sum them across ranks to combine runs."""
        return {f"{k}.{n}": t for k in ("loc", "box", "pixel") for n, t in getattr(self, k).state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for k in ("loc", "box", "pixel"):
            part = getattr(self, k)
            part.load_state_dict({n: state[f"{k}.{n}"] for n in part._names})

    def compute(self) -> dict:
        out: dict = {"num_images": int(self.box.count) or int(self.loc.count)}
        out.update(self.loc.compute())
        out.update(self.box.compute())
        out.update(self.pixel.compute())
        out["paper_threshold"] = self.loc.threshold
        return out


# --------------------------------------------------------------------------------------------- baselines


def box_baselines(
    boxes: Sequence[Tensor],
    sizes: Sequence[tuple[int, int]],
    ious: Sequence[float] = DEFAULT_IOUS,
    center_fraction: float = 0.5,
    grid: int = 16,
) -> dict[str, dict]:
    """Input-independent boxes scored on the same ground truth: the centered box covering ``center_fraction`` of
    the width and height, and the best fixed box (in coordinates relative to the image size, on a ``grid``-step
    lattice, chosen on this very data by its accuracy at IoU 0.5, so an upper bound for any box that ignores the
    image).  For each: the
    accuracy at every IoU and at 0.5 (GT-known Loc).  IoU is unchanged by scaling both boxes, so everything is
    computed in relative coordinates."""
    ticks = torch.arange(grid + 1, dtype=torch.float64) / grid
    lo, hi = torch.meshgrid(ticks, ticks, indexing="ij")
    spans = torch.stack([lo[lo < hi], hi[lo < hi]], 1)  # (S, 2) with x0 < x1
    ax, ay = torch.meshgrid(torch.arange(spans.shape[0]), torch.arange(spans.shape[0]), indexing="ij")
    grid_boxes = torch.stack(
        [spans[ax.ravel(), 0], spans[ay.ravel(), 0], spans[ax.ravel(), 1], spans[ay.ravel(), 1]], 1
    )
    c0, c1 = (1 - center_fraction) / 2, (1 + center_fraction) / 2
    candidates = torch.cat([torch.tensor([[c0, c0, c1, c1]], dtype=torch.float64), grid_boxes])
    gts = torch.cat(
        [b.double().reshape(-1, 4) / torch.tensor([w, h, w, h], dtype=torch.float64) for b, (w, h) in zip(boxes, sizes)]
    )
    owner = torch.cat([torch.full((b.reshape(-1, 4).shape[0],), i) for i, b in enumerate(boxes)])
    best = torch.zeros(len(boxes), candidates.shape[0], dtype=torch.float64)
    for start in range(0, gts.shape[0], 64):
        iou = box_iou(gts[start : start + 64], candidates)  # (g, C)
        index = owner[start : start + 64, None].expand_as(iou)
        best.scatter_reduce_(0, index, iou, "amax")
    thr = torch.tensor(ious, dtype=torch.float64)
    hits = (best[None] >= thr[:, None, None]).sum(1)  # (K, C)
    n = max(len(boxes), 1)
    k50 = list(ious).index(0.5)
    # the best fixed box: most hits at IoU 0.5, ties broken by the hits at all IoUs
    pick = 1 + int(torch.argmax(hits[k50, 1:] * (hits.shape[0] * n + 1) + hits[:, 1:].sum(0)))

    def summary(column: int) -> dict:
        acc = {_iou_key(i): float(h) * 100.0 / n for i, h in zip(ious, hits[:, column])}
        return {
            "gt_known_loc": acc[_iou_key(0.5)],
            "maxboxacc": acc[_iou_key(0.5)],
            "maxboxacc_v2": float(np.mean(list(acc.values()))),
            "per_iou": acc,
            "box": [round(float(v), 4) for v in candidates[column]],
        }

    return {"center_box": summary(0), "best_fixed_box": summary(pick)}


# --------------------------------------------------------------------------------------------- model evaluation


def explain_batch(loaded, explainer, images: Sequence[Tensor], classes: Sequence[int] | None, topk: int = 1):
    """The model input (B, 3, h, w) and the explainer's result for ``images`` (each (3, H_i, W_i) in [0, 1]) and
    ``classes`` (one per image) or the top-``topk`` predictions."""
    device = next(loaded.model.parameters()).device
    x = torch.cat([loaded.preprocess(img.to(device, non_blocking=True)) for img in images])
    return x, explainer(x, None if classes is None else list(classes), topk=topk)


def image_maps(maps: Tensor, images: Sequence[Tensor], normalized: bool = True) -> list[Tensor]:
    """Raw maps (B, N, h, w) upsampled (bilinear) to each image's size, and min-max normalized unless not
    ``normalized``, on the maps' device and batched when the images share a size, then moved to the CPU: a list of
    (N, H_i, W_i)."""
    post = normalize if normalized else (lambda m: m)
    sizes = [tuple(img.shape[-2:]) for img in images]
    if len(set(sizes)) == 1:
        return list(post(upsample(maps.detach().float(), sizes[0])).cpu())
    return [post(upsample(m.detach().float(), size)).cpu() for m, size in zip(maps, sizes)]


def _reference_batch(loaded, explainer, samples: Sequence[Sample], labels: Tensor, acc: Accumulators):
    """Add a batch to ``acc`` as Choe et al.'s code evaluates it (:mod:`camlens.reference`): PIL-resized input,
    bicubic maps at the input size, boxes and masks mapped onto that grid.  Returns the input and the result."""
    size = loaded.preprocess.size
    if size is None:
        raise CamlensError("--protocol wsolevaluation evaluates at the model's input size; give --size")
    pre = loaded.preprocess
    x = reference_input([s.image for s in samples], size, pre.mean, pre.std).to(next(loaded.model.parameters()).device)
    res = explainer(x, labels.tolist())
    raw = upsample(res.maps[:, 0].detach().float(), tuple(size), mode="bicubic").cpu()
    maps = reference_score_maps(res.maps[:, 0], size).cpu()
    if all(len(s.boxes) for s in samples):
        boxes = [wsol_resize_boxes(s.boxes, (int(s.image.shape[-1]), int(s.image.shape[-2])), size) for s in samples]
        acc.loc.update(raw, boxes, labels, res.logits.detach().float().cpu())
        acc.box.update(maps, boxes)
    if all(s.mask is not None for s in samples):
        masks = torch.cat([nearest_masks(s.mask[None], size) for s in samples])  # type: ignore[index]
        ignore = torch.cat(
            [
                nearest_masks(s.ignore[None], size) if s.ignore is not None else torch.zeros(1, *size, dtype=torch.bool)
                for s in samples
            ]
        )
        acc.pixel.update(maps, masks, ignore)
    return x, res


def _evaluate_batch(
    loaded,
    explainer,
    batch: Sequence[tuple[int, Sample]],
    acc: Accumulators,
    faithfulness: FaithfulnessConfig | None,
    protocol: str = "camlens",
) -> list[dict]:
    """Add one batch to ``acc``; returns its per-image records (index, ground truth for the baselines, and the
    faithfulness values)."""
    samples = [s for _, s in batch]
    labels = torch.tensor([s.label for s in samples])
    if protocol == REFERENCE:
        x, res = _reference_batch(loaded, explainer, samples, labels, acc)
        return _records(loaded, batch, x, res, labels, faithfulness)
    x, res = explain_batch(loaded, explainer, [s.image for s in samples], labels.tolist())
    raw = image_maps(res.maps, [s.image for s in samples], normalized=False)
    logits = res.logits.detach().float().cpu()
    same_size = len({tuple(m.shape) for m in raw}) == 1
    for group in [list(range(len(samples)))] if same_size else [[i] for i in range(len(samples))]:
        raw_stack = torch.cat([raw[i] for i in group])  # (g, H, W): one map per image
        stack = normalize(raw_stack)
        boxes = [samples[i].boxes for i in group]
        if all(len(b) for b in boxes):  # OpenImages-style folders have masks and no boxes
            acc.loc.update(raw_stack, boxes, labels[group], logits[group])
            acc.box.update(stack, boxes)
        if all(samples[i].mask is not None for i in group):
            # every mask is set (checked above), which mypy cannot see through all()
            ignore = [
                samples[i].ignore if samples[i].ignore is not None else torch.zeros_like(samples[i].mask)  # type: ignore[arg-type]
                for i in group
            ]
            acc.pixel.update(stack, torch.stack([samples[i].mask for i in group]), torch.stack(ignore))  # type: ignore[arg-type, misc]
    return _records(loaded, batch, x, res, labels, faithfulness)


def _records(
    loaded, batch: Sequence[tuple[int, Sample]], x: Tensor, res, labels: Tensor, faithfulness: FaithfulnessConfig | None
) -> list[dict]:
    """Each image's record: index, ground truth for the baselines, and the faithfulness values."""
    samples = [s for _, s in batch]
    scores: dict[str, Tensor] = {}
    if faithfulness is not None:
        input_boxes = [scale_boxes(s.boxes, s.image.shape[-2:], x.shape[-2:]).to(x.device) for s in samples]
        with torch.no_grad():
            scores = faithfulness_scores(
                loaded.model, x, res.maps[:, 0].detach(), labels.to(x.device), boxes=input_boxes, config=faithfulness
            )
    return [
        {
            "index": index,
            "label": s.label,
            "boxes": s.boxes.tolist(),
            "size": [int(s.image.shape[-1]), int(s.image.shape[-2])],
            "faithfulness": {k: float(v[i]) for k, v in scores.items()},
        }
        for i, (index, s) in enumerate(batch)
    ]


def evaluate_model(
    loaded,
    explainer,
    samples: torch.utils.data.Dataset,
    *,
    batch_size: int = 32,
    thresholds: np.ndarray | None = None,
    paper_threshold: float = PAPER_THRESHOLD,
    faithfulness: FaithfulnessConfig | None = None,
    workers: int = 0,
    ctx: Context | None = None,
    progress_dir: str | Path | None = None,
    run_key: dict | None = None,
    resume: bool = True,
    progress: Callable[[int], None] = lambda n: None,
    fixed_threshold: float | None = None,
    protocol: str = "camlens",
    overwrite: bool = False,
) -> dict:
    """Every localization metric of ``explainer`` (a CAM method on ``loaded.model``) on ``samples`` (a dataset of
    :class:`Sample`), with the box baselines on the same ground truth; with ``faithfulness``, also the means of
    :func:`camlens.metrics.faithfulness_scores` (pointing game against the boxes, scaled to the model input).
    Maps are those of the ground-truth class, for the localization and faithfulness metrics alike.

    Under torchrun each rank runs its share of the batches (:func:`camlens.distributed.shard_batches`) and the
    ranks' integer counts are summed, so the metrics equal a single-process run's exactly.  With
    ``progress_dir``, every finished batch is logged there (counts and per-image values); a rerun with the same
    ``run_key`` and ``resume`` skips those batches and gives the same result as an uninterrupted run.
    ``fixed_threshold`` (e.g. the one a checkpoint was selected with) adds the box accuracy at that threshold
    (``box_acc_at_fixed_threshold``).  ``protocol="wsolevaluation"`` evaluates as Choe et al.'s code does
    (:mod:`camlens.reference`): at the model's input size, bicubic maps, their box and mask resizing.  The
    progress of a run with another ``run_key`` in ``progress_dir`` is kept (:class:`CamlensError`) unless
    ``overwrite``.
    """
    check_protocol(protocol)
    ctx = ctx or Context(0, 1, 0, next(loaded.model.parameters()).device)
    create = lambda: Accumulators.create(thresholds, paper_threshold)  # noqa: E731
    # samples are map-style datasets, which have __len__ (torch's Dataset type does not declare it)
    key = {**(run_key or {}), "batch_size": batch_size, "num_images": len(samples)}  # type: ignore[arg-type]
    previous = [] if progress_dir is None else resume_entries(output_folder(progress_dir), key, resume, ctx, overwrite)
    finished = {e["batch"] for e in previous}
    mine = shard_batches(len(samples), batch_size, ctx)  # type: ignore[arg-type]
    todo = [(j, batch) for j, batch in mine if j not in finished]
    progress(sum(len(b) for j, b in mine if j in finished))
    log = ProgressLog(Path(progress_dir), ctx) if progress_dir is not None else None
    total = create()
    records: list[dict] = []
    if ctx.is_main:  # earlier runs' batches are counted once, by the main rank
        for entry in {e["batch"]: e for e in previous}.values():
            part = create()
            part.load_state_dict(unpack_counts(entry["counts"]))
            total.merge(part)
            records.extend(entry["images"])
    loader = torch.utils.data.DataLoader(
        _Indexed(samples),
        batch_sampler=[batch for _, batch in todo],
        collate_fn=list,
        num_workers=workers,
        pin_memory=ctx.device.type == "cuda",
    )
    with torch.inference_mode(not explainer.needs_gradients):
        for (j, _), batch in zip(todo, loader):
            part = create()
            batch_records = _evaluate_batch(loaded, explainer, batch, part, faithfulness, protocol)
            total.merge(part)
            records.extend(batch_records)
            if log is not None:
                log.append([{"batch": j, "counts": pack_counts(part.state_dict()), "images": batch_records}])
            progress(len(batch))
    total.load_state_dict(sum_tensors(total.state_dict(), ctx))
    records = sorted((r for rank in gather(records, ctx) for r in rank), key=lambda r: r["index"])
    result = total.compute()
    result["protocol"] = protocol
    if fixed_threshold is not None:
        result["fixed_threshold"] = fixed_threshold
        result["box_acc_at_fixed_threshold"] = total.box.accuracy_at(fixed_threshold)
    result["num_images"] = len(records)
    boxed = [r for r in records if r["boxes"]]
    gt_boxes = [torch.tensor(r["boxes"], dtype=torch.float64) for r in boxed]
    result["baselines"] = box_baselines(gt_boxes, [tuple(r["size"]) for r in boxed]) if boxed else {}
    if faithfulness is not None:
        result.update(_faithfulness_means(records))
    return result


class _Indexed(torch.utils.data.Dataset):
    """(index, sample) pairs, so a batch knows which images it holds."""

    def __init__(self, samples: torch.utils.data.Dataset) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[int, Sample]:
        return i, self.samples[i]


def _faithfulness_means(records: Sequence[dict]) -> dict[str, float | None]:
    """Dataset values from per-image ones, summed in image order (so any sharding gives the same floats)."""
    totals = FaithfulnessTotals()
    for r in records:
        values = r["faithfulness"]
        totals.update({k: torch.tensor([v], dtype=torch.float64) for k, v in values.items()}, [r["label"]])
    return {k: (None if math.isnan(v) else v) for k, v in totals.summary().items()}


# --------------------------------------------------------------------------------------------- precomputed maps


def _map_files(maps_dir: Path) -> set[str]:
    return {str(p.relative_to(maps_dir))[: -len(".npy")] for p in maps_dir.rglob("*.npy")}


def load_score_map(path: Path) -> np.ndarray:
    """One precomputed score map: a 2-D float .npy with values in [0, 1] (never unpickled)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise CamlensError(f"{path}: not a readable .npy array ({err})") from err
    if arr.ndim != 2:
        raise CamlensError(f"{path}: score map must be 2-D (H, W), got shape {arr.shape}")
    if arr.dtype.kind != "f":
        raise CamlensError(f"{path}: score map must be floating point, got {arr.dtype}")
    if not np.isfinite(arr).all():
        raise CamlensError(f"{path}: score map contains NaN or infinite values")
    if arr.size == 0 or arr.min() < 0 or arr.max() > 1:
        raise CamlensError(f"{path}: score map values must lie in [0, 1] (min-max normalize it first)")
    return arr.astype(np.float64)


def _image_size(ann: Annotations, image_id: str) -> tuple[int, int] | None:
    """(W, H) read from the image file's header, where the annotations know the image folder."""
    if ann.root is None or not (ann.root / image_id).is_file():
        return None
    from .data.images import ImageError, open_image

    try:
        with open_image(ann.root / image_id) as img:
            return img.size
    except (OSError, ImageError) as err:
        raise CamlensError(f"{ann.root / image_id}: cannot read the image size ({err})") from err


def evaluate_maps(
    maps_dir: str | Path,
    ann: Annotations,
    *,
    thresholds: np.ndarray | None = None,
    paper_threshold: float = PAPER_THRESHOLD,
    progress: Callable[[int], None] = lambda n: None,
) -> dict:
    """Score precomputed maps ``<maps_dir>/<image_id>.npy`` against ``ann`` (e.g. a Choe et al. metadata
    folder): MaxBoxAcc, MaxBoxAccV2 and GT-known Loc where there are boxes, PxAP where there are masks.
    Top-1/Top-5 Loc need class predictions and are null.  Every image id needs a map and every map an id."""
    maps_dir = Path(maps_dir)
    if not maps_dir.is_dir():
        raise CamlensError(f"{maps_dir}: maps folder not found")
    names, naming = map_names(maps_dir, ann.ids)
    acc = Accumulators.create(thresholds, paper_threshold)
    gt_boxes, sizes = [], []
    for i, image_id in enumerate(ann.ids):
        score = load_score_map(maps_dir / f"{names[i]}.npy")
        h, w = score.shape
        if ann.has_boxes:
            size = ann.sizes[i] or _image_size(ann, image_id)
            boxes = ann.boxes[i] if size is None else wsol_resize_boxes(ann.boxes[i], size, (h, w))
            if (boxes[:, 2] > w).any() or (boxes[:, 3] > h).any():
                raise CamlensError(
                    f"{image_id}: ground-truth box {ann.boxes[i].tolist()} lies outside its {w}x{h} map; "
                    "give image sizes (image_sizes.txt) or the images (--images) so boxes are rescaled"
                )
            acc.box.update(score[None], [boxes])
            acc.loc.update(score[None], [boxes])  # no predictions: GT-known Loc only
            gt_boxes.append(boxes)
            sizes.append((w, h))
        spec = ann.masks[i] if ann.masks else None
        if isinstance(spec, MaskFiles):
            mask, ignore = load_mask(spec, (h, w))
            acc.pixel.update(score[None], mask[None], ignore[None])
        progress(1)
    result = acc.compute()
    result["baselines"] = box_baselines(gt_boxes, sizes) if gt_boxes else {}
    result["map_naming"] = naming
    return result


def map_names(maps_dir: Path, ids: Sequence[str]) -> tuple[list[str], str]:
    """The map file (without ``.npy``, relative to ``maps_dir``) of each image id, and the naming found:
    ``<image_id>.npy`` (what wsolevaluation's code loads) or, when every id's map is missing under that name,
    ``<stem>.npy`` in ``maps_dir`` itself (what its docstring describes), provided no two ids share a stem.
    Every image id needs a map and every map an id."""
    found = _map_files(maps_dir)
    candidates = [("<image_id>.npy", list(ids))]
    stems = [Path(i).stem for i in ids]
    if stems != list(ids) and len(set(stems)) == len(stems):
        candidates.append(("<stem>.npy", stems))
    for naming, names in candidates:
        if all(n in found for n in names):
            extra = sorted(found - set(names))
            if extra:
                raise CamlensError(
                    f"{maps_dir}: {len(extra)} map(s) for image ids not in the annotations, e.g. {extra[0]}.npy"
                )
            return names, naming
    missing = [i for i in ids if i not in found]
    stem_note = ""
    if stems != list(ids):
        shared = len(stems) - len(set(stems))
        stem_note = (
            f"; named by stem, {shared} id(s) share a stem, so that naming is ambiguous"
            if shared
            else f"; nor by stem, e.g. {stems[ids.index(missing[0])]}.npy"
        )
    raise CamlensError(f"{maps_dir}: no map for {len(missing)} image id(s), e.g. {missing[0]}.npy{stem_note}")


# --------------------------------------------------------------------------------------------- reporting


def format_table(result: dict) -> str:
    """The metrics as a text table, model next to the box baselines (in percent; '-' where not computable), then
    the faithfulness metrics where computed."""
    base = result.get("baselines") or {}
    cols = ["model"] + [name.replace("_", " ") for name in base]
    lines = [f"{'metric':<22}" + "".join(f"{c:>16}" for c in cols)]
    for label, key in METRIC_ROWS:
        cells = [result.get(key)] + [b.get(key) for b in base.values()]
        lines.append(f"{label:<22}" + "".join(f"{'-' if v is None else f'{v:.2f}':>16}" for v in cells))
    for label, key in FAITHFULNESS_ROWS:
        if key in result:
            value = result[key]
            lines.append(f"{label:<22}" + f"{'-' if value is None else f'{value:.4f}':>16}")
    extra = [f"images: {result.get('num_images', 0)}"]
    if result.get("best_threshold") is not None:
        extra.append(f"best threshold (MaxBoxAcc): {result['best_threshold']:.3f}")
    extra.append(f"paper protocol threshold: {result.get('paper_threshold')}")
    if result.get("box_acc_at_fixed_threshold") is not None:
        extra.append(
            f"box accuracy at the checkpoint's threshold {result['fixed_threshold']:.3f}: "
            f"{result['box_acc_at_fixed_threshold']:.2f}"
        )
    if result.get("map_naming"):
        extra.append(f"maps named {result['map_naming']}")
    return "\n".join(lines + ["; ".join(extra)])


def write_json(result: dict, path: str | Path, replace: bool = True) -> Path:
    """``result`` as JSON at ``path``, written atomically (a crash leaves the old file or none, never half); an
    existing file is kept (:class:`camlens.files.OutputError`) unless ``replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(result, indent=2), replace=replace)
    return path


# --------------------------------------------------------------------------------------------- localize


def map_boxes(maps: Tensor, protocol: str = "paper", threshold: float = PAPER_THRESHOLD) -> Tensor:
    """Boxes (N, 4) for maps (N, H, W): the paper protocol (``threshold`` of the max of the raw map, largest
    connected component, exact box) or ``wsol`` (the largest contour at ``threshold`` of the min-max normalized
    map, as Choe et al. score it)."""
    if protocol == "paper":
        return paper_boxes(maps, threshold)
    if protocol == "wsol":
        if not 0 <= threshold < 1:
            raise CamlensError(f"--threshold {threshold} must be in [0, 1) for the wsol protocol")
        sweep = wsol_sweep(maps, [threshold])
        return sweep.protocol_largest()[:, 0].double()
    raise CamlensError(f"unknown protocol {protocol!r}; use paper or wsol")


__all__ = [
    "Accumulators",
    "box_baselines",
    "explain_batch",
    "image_maps",
    "evaluate_maps",
    "evaluate_model",
    "format_table",
    "map_boxes",
    "map_names",
]
