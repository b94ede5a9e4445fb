"""Localization evaluation: a model and a CAM method over a dataset, or precomputed score maps, fed to every
WSOL metric (:mod:`camlens.metrics.localization`), with box baselines on the same data; and boxes for files.

Maps from a model are computed for the ground-truth class, upsampled (bilinear) to the original image size and
min-max normalized, so every box and metric lives in the original pixel grid of the annotations.  Precomputed
maps (Choe et al.'s layout: one ``<image_id>.npy`` per image) are scored as given, in [0, 1], with ground-truth
boxes mapped onto the map's grid as Choe et al. do (:func:`camlens.boxes.wsol_resize_boxes`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from .boxes import box_iou, paper_boxes, wsol_resize_boxes, wsol_sweep
from .capture import CamlensError
from .data.annotations import AnnotationError, Annotations, MaskFiles, load_mask
from .maps import normalize, upsample
from .metrics.localization import DEFAULT_IOUS, BoxAccuracy, ClassLocalization, PixelAP, _iou_key

METRIC_ROWS = (
    ("Top-1 Loc", "top1_loc"),
    ("Top-5 Loc", "top5_loc"),
    ("GT-known Loc", "gt_known_loc"),
    ("MaxBoxAcc", "maxboxacc"),
    ("MaxBoxAccV2", "maxboxacc_v2"),
    ("PxAP", "pxap"),
)


@dataclass
class Accumulators:
    """All localization accumulators of one evaluation; ``merge`` adds another run's counts."""

    loc: ClassLocalization
    box: BoxAccuracy
    pixel: PixelAP

    @classmethod
    def create(cls, thresholds: np.ndarray | None = None, paper_threshold: float = 0.2,
               ious: Sequence[float] = DEFAULT_IOUS) -> "Accumulators":
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
        out.update(self.loc.compute() if int(self.loc.count) else {"top1_loc": None, "top5_loc": None, "gt_known_loc": None})
        out.update(self.box.compute())
        out.update(self.pixel.compute())
        out["paper_threshold"] = self.loc.threshold
        return out


# --------------------------------------------------------------------------------------------- baselines


def box_baselines(boxes: Sequence[Tensor], sizes: Sequence[tuple[int, int]], ious: Sequence[float] = DEFAULT_IOUS,
                  center_fraction: float = 0.5, grid: int = 16) -> dict[str, dict]:
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
    grid_boxes = torch.stack([spans[ax.ravel(), 0], spans[ay.ravel(), 0], spans[ax.ravel(), 1], spans[ay.ravel(), 1]], 1)
    c0, c1 = (1 - center_fraction) / 2, (1 + center_fraction) / 2
    candidates = torch.cat([torch.tensor([[c0, c0, c1, c1]], dtype=torch.float64), grid_boxes])
    gts = torch.cat([b.double().reshape(-1, 4) / torch.tensor([w, h, w, h], dtype=torch.float64)
                     for b, (w, h) in zip(boxes, sizes)])
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
        return {"gt_known_loc": acc[_iou_key(0.5)], "maxboxacc": acc[_iou_key(0.5)],
                "maxboxacc_v2": float(np.mean(list(acc.values()))), "per_iou": acc,
                "box": [round(float(v), 4) for v in candidates[column]]}

    return {"center_box": summary(0), "best_fixed_box": summary(pick)}


# --------------------------------------------------------------------------------------------- model evaluation


@dataclass
class Sample:
    """One evaluation image: (3, H, W) float in [0, 1], label, ground-truth boxes (n, 4) and optional masks."""

    image_id: str
    image: Tensor
    label: int
    boxes: Tensor
    mask: Tensor | None = None
    ignore: Tensor | None = None


def annotation_samples(ann: Annotations, max_pixels: int | None = None) -> Iterator[Sample]:
    """Images of an :class:`Annotations` set read from ``ann.root`` (or its in-memory masks), one by one."""
    from .data.images import DEFAULT_MAX_PIXELS, load_image

    if ann.root is None:
        raise CamlensError("these annotations have no image folder; pass the images' root folder (--images DIR)")
    for i, image_id in enumerate(ann.ids):
        path = ann.root / image_id
        image = load_image(path, max_pixels or DEFAULT_MAX_PIXELS)
        h, w = image.shape[-2:]
        if ann.sizes[i] is not None and tuple(ann.sizes[i]) != (w, h):
            raise AnnotationError(f"{path}: the image is {w}x{h} but the annotations say {ann.sizes[i][0]}x{ann.sizes[i][1]}")
        for box in ann.boxes[i].tolist():
            if box[2] > w or box[3] > h:
                raise AnnotationError(f"{image_id}: box {box} lies outside the {w}x{h} image")
        mask = ignore = None
        spec = ann.masks[i] if ann.masks else None
        if isinstance(spec, MaskFiles):
            mask, ignore = load_mask(spec, (h, w))
        elif isinstance(spec, Tensor):
            mask = spec.bool()
        yield Sample(image_id, image, int(ann.labels[i]), ann.boxes[i], mask, ignore)


def builtin_samples(dataset) -> Iterator[Sample]:
    """Samples of a :class:`camlens.data.builtin.BuiltinDataset`."""
    for i in range(len(dataset)):
        item = dataset[i]
        yield Sample(item["id"], item["image"], int(item["label"]), item["box"].double().reshape(1, 4), item["mask"])


def dataset_samples(
    data: str,
    split: str = "test",
    *,
    num_images: int | None = None,
    images: str | Path | None = None,
    mask_root: str | Path | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[Iterator[Sample], int]:
    """Samples and their count for ``data``: ``builtin`` (the built-in dataset's ``split``) or a folder that
    :func:`camlens.data.annotations.find_annotations` reads (images under ``images`` where the layout does not
    say).  ``num_images`` keeps the first n."""
    if data == "builtin":
        from .data.builtin import BuiltinDataset

        dataset = BuiltinDataset(split, num_images=num_images)  # type: ignore[arg-type]
        return builtin_samples(dataset), len(dataset)
    from .data.annotations import find_annotations

    ann = find_annotations(data, split, class_names, image_root=images, mask_root=mask_root)
    if images is not None:
        ann.root = Path(images)
    if num_images is not None:
        keep = slice(0, num_images)
        ann = Annotations(ann.ids[keep], ann.labels[keep], ann.boxes[keep], ann.sizes[keep], ann.masks[keep],
                          ann.root, ann.class_names)
    if class_names is not None and len(ann) and int(ann.labels.max()) >= len(class_names):
        raise CamlensError(f"{data}: class label {int(ann.labels.max())} is out of range for a model with {len(class_names)} classes")
    return annotation_samples(ann), len(ann)


def _batches(samples: Iterator[Sample], size: int) -> Iterator[list[Sample]]:
    batch: list[Sample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def class_maps(loaded, explainer, images: Sequence[Tensor], classes: Sequence[int] | None, topk: int = 1) -> tuple[list[Tensor], Tensor, Tensor]:
    """Maps (N, h_i, w_i) per image, upsampled to each image's size and min-max normalized, for ``classes``
    (one per image) or the top-``topk`` predictions; also the logits (B, C) and the explained classes (B, N)."""
    device = next(loaded.model.parameters()).device
    x = torch.cat([loaded.preprocess(img.to(device)) for img in images])
    res = explainer(x, None if classes is None else list(classes), topk=topk)
    maps = []
    for i, img in enumerate(images):
        maps.append(normalize(upsample(res.maps[i].float(), img.shape[-2:])).cpu())
    return maps, res.logits.detach().cpu(), res.classes.cpu()


def evaluate_model(
    loaded,
    explainer,
    samples: Iterator[Sample],
    *,
    batch_size: int = 32,
    thresholds: np.ndarray | None = None,
    paper_threshold: float = 0.2,
    progress: Callable[[int], None] = lambda n: None,
) -> dict:
    """Every localization metric of ``explainer`` (a CAM method on ``loaded.model``) on ``samples``, with the
    box baselines on the same ground truth.  Maps are those of the ground-truth class."""
    acc = Accumulators.create(thresholds, paper_threshold)
    gt_boxes: list[Tensor] = []
    sizes: list[tuple[int, int]] = []
    with torch.inference_mode(not explainer.needs_gradients):
        for batch in _batches(samples, batch_size):
            maps, logits, _ = class_maps(loaded, explainer, [s.image for s in batch], [s.label for s in batch])
            labels = torch.tensor([s.label for s in batch])
            same_size = len({tuple(m.shape) for m in maps}) == 1
            groups = [list(range(len(batch)))] if same_size else [[i] for i in range(len(batch))]
            for group in groups:
                stack = torch.cat([maps[i] for i in group])  # (g, H, W): one map per image
                boxes = [batch[i].boxes for i in group]
                acc.loc.update(stack, boxes, labels[group], logits[group])
                acc.box.update(stack, boxes)
                if all(batch[i].mask is not None for i in group):
                    ignore = [batch[i].ignore if batch[i].ignore is not None else torch.zeros_like(batch[i].mask) for i in group]
                    acc.pixel.update(stack, torch.stack([batch[i].mask for i in group]), torch.stack(ignore))
            for s in batch:
                gt_boxes.append(s.boxes)
                sizes.append((int(s.image.shape[-1]), int(s.image.shape[-2])))
            progress(len(batch))
    result = acc.compute()
    result["baselines"] = box_baselines(gt_boxes, sizes) if gt_boxes else {}
    return result


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
    from PIL import Image

    try:
        with Image.open(ann.root / image_id) as img:
            return img.size
    except OSError as err:
        raise CamlensError(f"{ann.root / image_id}: cannot read the image size ({err})") from err


def evaluate_maps(
    maps_dir: str | Path,
    ann: Annotations,
    *,
    thresholds: np.ndarray | None = None,
    paper_threshold: float = 0.2,
    progress: Callable[[int], None] = lambda n: None,
) -> dict:
    """Score precomputed maps ``<maps_dir>/<image_id>.npy`` against ``ann`` (e.g. a Choe et al. metadata
    folder): MaxBoxAcc, MaxBoxAccV2 and GT-known Loc where there are boxes, PxAP where there are masks.
    Top-1/Top-5 Loc need class predictions and are null.  Every image id needs a map and every map an id."""
    maps_dir = Path(maps_dir)
    if not maps_dir.is_dir():
        raise CamlensError(f"{maps_dir}: maps folder not found")
    found = _map_files(maps_dir)
    missing = [i for i in ann.ids if i not in found]
    extra = sorted(found - set(ann.ids))
    if missing:
        raise CamlensError(f"{maps_dir}: no map for {len(missing)} image id(s), e.g. {missing[0]}.npy")
    if extra:
        raise CamlensError(f"{maps_dir}: {len(extra)} map(s) for image ids not in the annotations, e.g. {extra[0]}.npy")
    acc = Accumulators.create(thresholds, paper_threshold)
    gt_boxes, sizes = [], []
    for i, image_id in enumerate(ann.ids):
        score = load_score_map(maps_dir / f"{image_id}.npy")
        h, w = score.shape
        if ann.has_boxes:
            size = ann.sizes[i] or _image_size(ann, image_id)
            boxes = ann.boxes[i] if size is None else wsol_resize_boxes(ann.boxes[i], size, (h, w))
            if (boxes[:, 2] > w).any() or (boxes[:, 3] > h).any():
                raise CamlensError(f"{image_id}: ground-truth box {ann.boxes[i].tolist()} lies outside its {w}x{h} map; "
                                   "give image sizes (image_sizes.txt) or the images (--images) so boxes are rescaled")
            acc.box.update(score[None], [boxes])
            hit = (box_iou(paper_boxes(score, paper_threshold), boxes) >= 0.5).any()
            acc.loc.gt_known += int(hit)
            acc.loc.count += 1
            gt_boxes.append(boxes)
            sizes.append((w, h))
        spec = ann.masks[i] if ann.masks else None
        if isinstance(spec, MaskFiles):
            mask, ignore = load_mask(spec, (h, w))
            acc.pixel.update(score[None], mask[None], ignore[None])
        progress(1)
    result = acc.compute()
    result["top1_loc"] = result["top5_loc"] = None
    if not gt_boxes:
        result["gt_known_loc"] = None
    result["baselines"] = box_baselines(gt_boxes, sizes) if gt_boxes else {}
    return result


# --------------------------------------------------------------------------------------------- reporting


def format_table(result: dict) -> str:
    """The metrics as a text table, model next to the box baselines (in percent; '-' where not computable)."""
    base = result.get("baselines") or {}
    cols = ["model"] + [name.replace("_", " ") for name in base]
    lines = [f"{'metric':<14}" + "".join(f"{c:>16}" for c in cols)]
    for label, key in METRIC_ROWS:
        cells = [result.get(key)] + [b.get(key) for b in base.values()]
        lines.append(f"{label:<14}" + "".join(f"{'-' if v is None else f'{v:.2f}':>16}" for v in cells))
    extra = [f"images: {result.get('num_images', 0)}"]
    if result.get("best_threshold") is not None:
        extra.append(f"best threshold (MaxBoxAcc): {result['best_threshold']:.3f}")
    extra.append(f"paper protocol threshold: {result.get('paper_threshold')}")
    return "\n".join(lines + ["; ".join(extra)])


def write_json(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return path


# --------------------------------------------------------------------------------------------- localize


def map_boxes(maps: Tensor, protocol: str = "paper", threshold: float = 0.2) -> Tensor:
    """Boxes (N, 4) for normalized maps (N, H, W): the paper protocol (``threshold`` of the max, largest
    connected component, exact box) or ``wsol`` (the largest contour at ``threshold`` as Choe et al. score it)."""
    if protocol == "paper":
        return paper_boxes(maps, threshold)
    if protocol == "wsol":
        if not 0 <= threshold < 1:
            raise CamlensError(f"--threshold {threshold} must be in [0, 1) for the wsol protocol")
        sweep = wsol_sweep(maps, [threshold])
        return sweep.protocol_largest()[:, 0].double()
    raise CamlensError(f"unknown protocol {protocol!r}; use paper or wsol")


def localize_files(
    loaded,
    explainer,
    paths: Sequence[Path],
    out_dir: Path,
    *,
    protocol: str = "paper",
    threshold: float = 0.2,
    topk: int = 1,
    progress: Callable[[int], None] = lambda n: None,
    on_error: Callable[[str], None] = lambda line: None,
) -> list[dict]:
    """Boxes for the top-``topk`` classes of each image, in original-image pixels: ``boxes.json`` in
    ``out_dir`` and one overlay per image with the boxes drawn (``<stem>_boxes.png``)."""
    from .data.images import ImageError, load_image
    from .pipeline import output_stems
    from .render import draw_boxes, overlay, save_image

    out_dir.mkdir(parents=True, exist_ok=True)
    stems = output_stems(paths)
    records = []
    with torch.inference_mode(not explainer.needs_gradients):
        for path in paths:
            try:
                image = load_image(path)
            except ImageError as err:
                on_error(str(err))
                records.append({"file": str(path), "error": str(err)})
                progress(1)
                continue
            maps, logits, classes = class_maps(loaded, explainer, [image], None, topk)
            boxes = map_boxes(maps[0], protocol, threshold)
            probs = logits.float().softmax(-1)[0]
            entries = []
            for rank, (cls, box) in enumerate(zip(classes[0].tolist(), boxes.tolist()), 1):
                entries.append({"rank": rank, "class": cls, "label": loaded.class_names[cls],
                                "score": float(probs[cls]), "box": [float(v) for v in box]})
            drawn = [e["box"] for e in entries if e["box"][2] > e["box"][0] and e["box"][3] > e["box"][1]]
            picture = overlay(image, maps[0][0]) if entries else image
            name = f"{stems[path]}_boxes.png"
            save_image(draw_boxes(picture, drawn, colors=("lime", "red", "yellow", "cyan", "magenta")), out_dir / name)
            records.append({"file": str(path), "size": [int(image.shape[-1]), int(image.shape[-2])],
                            "protocol": protocol, "threshold": threshold, "boxes": entries, "overlay": name})
            progress(1)
    write_json({"images": records}, out_dir / "boxes.json")
    return records


__all__ = [
    "Accumulators",
    "Sample",
    "annotation_samples",
    "box_baselines",
    "builtin_samples",
    "dataset_samples",
    "class_maps",
    "evaluate_maps",
    "evaluate_model",
    "format_table",
    "localize_files",
    "map_boxes",
]
