"""Precomputed score maps (Choe et al.'s layout: one ``<image_id>.npy`` per image) scored as given, in [0, 1],
against annotations, with ground-truth boxes mapped onto each map's grid as Choe et al. do
(:func:`camlens.boxes.wsol_resize_boxes`)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..boxes import wsol_resize_boxes
from ..constants import PAPER_THRESHOLD
from ..data.annotations import Annotations, MaskFiles, load_mask
from ..errors import CamlensError
from .accumulators import Accumulators
from .baselines import box_baselines


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
    from ..data.images import ImageError, open_image

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
