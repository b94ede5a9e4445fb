"""Localization ground truth: Choe et al.'s metadata folders, PASCAL VOC / ImageNet XML, CUB-200-2011, built-in.

Every reader returns :class:`Annotations`: image ids (paths relative to ``root``), 0-based class labels, boxes in
camlens' convention (``[x0, y0, x1, y1]`` float pixels, exclusive right/bottom edges) in the original image's
pixel grid, and optionally image sizes and masks.  Annotation files are untrusted: a malformed line, an unknown
or missing image id, or a box outside its image raises :class:`AnnotationError` naming the file and line.

Box conventions of the sources, and how they are read:

* Choe et al. ``localization.txt`` ``id,x0,y0,x1,y1``: their IoU counts ``x1 - x0 + 1`` pixels, so ``x1, y1`` are
  inclusive: camlens ``[x0, y0, x1 + 1, y1 + 1]``.  Mask lines ``id,mask_path,ignore_path`` (OpenImages).
* VOC / ImageNet XML ``bndbox``: 1-based inclusive pixel indices: camlens ``[xmin - 1, ymin - 1, xmax, ymax]``.
* CUB-200-2011 ``bounding_boxes.txt`` ``id x y width height`` (0-based, continuous): ``[x, y, x + w, y + h]``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence
from xml.parsers import expat

import numpy as np
import torch
from torch import Tensor

from ..errors import CamlensError
from ..files import write_atomic
from .images import ImageError, open_image


class AnnotationError(CamlensError):
    """A problem in an annotation file, with the file and line."""


@dataclass(frozen=True)
class MaskFiles:
    """Choe et al.'s mask annotation of one image: foreground instance masks and an optional ignore mask."""

    masks: tuple[Path, ...]
    ignore: Path | None


@dataclass
class Annotations:
    """Ground truth for ``ids`` (in order): labels (N,), per-image boxes (n_i, 4) (empty for mask-only data),
    sizes ``(W, H)`` where known, masks (a (H, W) bool tensor, :class:`MaskFiles`, or None) where given."""

    ids: list[str]
    labels: Tensor
    boxes: list[Tensor]
    sizes: list[tuple[int, int] | None]
    masks: list[Tensor | MaskFiles | None] = field(default_factory=list)
    root: Path | None = None
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_boxes(self) -> bool:
        return bool(self.ids) and all(b.shape[0] > 0 for b in self.boxes)

    @property
    def has_masks(self) -> bool:
        return bool(self.masks) and all(m is not None for m in self.masks)


def _lines(path: Path) -> list[tuple[int, str]]:
    """Non-empty lines of a text file with their 1-based numbers."""
    if not path.is_file():
        raise AnnotationError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise AnnotationError(f"{path}: cannot read as UTF-8 text ({err})") from err
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def _ints(path: Path, lineno: int, fields: Sequence[str], what: str) -> list[int]:
    try:
        return [int(f) for f in fields]
    except ValueError:
        raise AnnotationError(f"{path}:{lineno}: {what} must be integers, got {','.join(fields)!r}") from None


def _floats(path: Path, lineno: int, fields: Sequence[str], what: str) -> list[float]:
    try:
        values = [float(f) for f in fields]
    except ValueError:
        raise AnnotationError(f"{path}:{lineno}: {what} must be numbers, got {' '.join(fields)!r}") from None
    if not all(np.isfinite(values)):
        raise AnnotationError(f"{path}:{lineno}: {what} must be finite, got {' '.join(fields)!r}")
    return values


def check_box(box: Sequence[float], size: tuple[int, int] | None, where: str) -> None:
    """Raise unless ``box`` (camlens convention) has positive area and lies inside a (W, H) image."""
    x0, y0, x1, y1 = box
    if not (x0 < x1 and y0 < y1):
        raise AnnotationError(f"{where}: box {list(box)} is empty or reversed (need x0 < x1 and y0 < y1)")
    if x0 < 0 or y0 < 0 or (size is not None and (x1 > size[0] or y1 > size[1])):
        bound = f"the {size[0]}x{size[1]} image" if size is not None else "the image (negative coordinate)"
        raise AnnotationError(f"{where}: box {list(box)} lies outside {bound}")


# --------------------------------------------------------------------------------------------- Choe et al.


def _wsol_ids_and_labels(folder: Path) -> tuple[list[str], dict[str, int], dict[str, int]]:
    """``image_ids.txt`` (ids in order, and the line of each) and ``class_labels.txt`` of a metadata folder."""
    if not (folder / "image_ids.txt").is_file():
        raise AnnotationError(f"{folder}: not a WSOL metadata folder (no image_ids.txt)")
    ids_path = folder / "image_ids.txt"
    ids: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in _lines(ids_path):
        if line in seen:
            raise AnnotationError(f"{ids_path}:{lineno}: image id {line!r} repeats line {seen[line]}")
        seen[line] = lineno
        ids.append(line)
    if not ids:
        raise AnnotationError(f"{ids_path}: no image ids")
    labels_path = folder / "class_labels.txt"
    labels: dict[str, int] = {}
    for lineno, line in _lines(labels_path):
        fields = line.split(",")
        if len(fields) != 2:
            raise AnnotationError(f"{labels_path}:{lineno}: expected 'image_id,label', got {line!r}")
        if fields[0] not in seen:
            raise AnnotationError(f"{labels_path}:{lineno}: image id {fields[0]!r} is not in {ids_path.name}")
        (label,) = _ints(labels_path, lineno, fields[1:], "the class label")
        if label < 0:
            raise AnnotationError(f"{labels_path}:{lineno}: class label {label} is negative")
        labels[fields[0]] = label
    missing = [i for i in ids if i not in labels]
    if missing:
        raise AnnotationError(f"{labels_path}: no entry for {len(missing)} image id(s), e.g. {missing[0]!r}")
    return ids, seen, labels


def read_wsol_labels(folder: str | Path) -> tuple[list[str], Tensor]:
    """The image ids and 0-based class labels (N,) of a Choe et al. metadata folder (``image_ids.txt``,
    ``class_labels.txt``): what training reads from their ``train`` split, which has no boxes."""
    ids, _, labels = _wsol_ids_and_labels(Path(folder))
    return ids, torch.tensor([labels[i] for i in ids], dtype=torch.long)


def read_wsol_metadata(
    folder: str | Path, mask_root: str | Path | None = None, image_root: str | Path | None = None
) -> Annotations:
    """A metadata folder of Choe et al.'s ``wsolevaluation``: ``image_ids.txt`` (one id a line),
    ``class_labels.txt`` (``id,label``), ``image_sizes.txt`` (``id,W,H``; optional) and ``localization.txt``
    (``id,x0,y0,x1,y1`` per box, or ``id,mask,ignore`` per mask with paths under ``mask_root``, default the
    folder).  Every image id needs a label and localization; ids in the other files must be listed in
    ``image_ids.txt``."""
    folder = Path(folder)
    ids, seen, labels = _wsol_ids_and_labels(folder)
    ids_path = folder / "image_ids.txt"

    def known(path: Path, lineno: int, image_id: str) -> None:
        if image_id not in seen:
            raise AnnotationError(f"{path}:{lineno}: image id {image_id!r} is not in {ids_path.name}")

    sizes: dict[str, tuple[int, int]] = {}
    sizes_path = folder / "image_sizes.txt"
    if sizes_path.is_file():
        for lineno, line in _lines(sizes_path):
            fields = line.split(",")
            if len(fields) != 3:
                raise AnnotationError(f"{sizes_path}:{lineno}: expected 'image_id,width,height', got {line!r}")
            known(sizes_path, lineno, fields[0])
            w, h = _ints(sizes_path, lineno, fields[1:], "width and height")
            if w <= 0 or h <= 0:
                raise AnnotationError(f"{sizes_path}:{lineno}: image size {w}x{h} must be positive")
            sizes[fields[0]] = (w, h)

    loc_path = folder / "localization.txt"
    boxes: dict[str, list[list[float]]] = {}
    masks: dict[str, list[Path]] = {}
    ignores: dict[str, Path | None] = {}
    mroot = Path(mask_root) if mask_root is not None else folder
    kind = None
    for lineno, line in _lines(loc_path):
        fields = line.split(",")
        line_kind = {5: "box", 3: "mask"}.get(len(fields))
        if line_kind is None:
            raise AnnotationError(
                f"{loc_path}:{lineno}: expected 'image_id,x0,y0,x1,y1' or 'image_id,mask,ignore', got {line!r}"
            )
        if kind is not None and line_kind != kind:
            raise AnnotationError(f"{loc_path}:{lineno}: a {line_kind} line in a file of {kind} lines")
        kind = line_kind
        image_id = fields[0]
        known(loc_path, lineno, image_id)
        if kind == "box":
            x0, y0, x1, y1 = _ints(loc_path, lineno, fields[1:], "box coordinates")
            box = [float(x0), float(y0), float(x1 + 1), float(y1 + 1)]  # inclusive -> exclusive edges
            check_box(box, sizes.get(image_id), f"{loc_path}:{lineno}")
            boxes.setdefault(image_id, []).append(box)
        else:
            if not fields[1]:
                raise AnnotationError(f"{loc_path}:{lineno}: empty mask path")
            masks.setdefault(image_id, []).append(mroot / fields[1])
            if image_id in ignores and fields[2]:
                raise AnnotationError(
                    f"{loc_path}:{lineno}: a second ignore mask for {image_id!r} (give it on its first line only)"
                )
            ignores.setdefault(image_id, mroot / fields[2] if fields[2] else None)

    table = boxes if kind == "box" else masks
    missing = [i for i in ids if i not in table]
    if missing:
        raise AnnotationError(f"{loc_path}: no entry for {len(missing)} image id(s), e.g. {missing[0]!r}")
    return Annotations(
        ids=ids,
        labels=torch.tensor([labels[i] for i in ids], dtype=torch.long),
        boxes=[torch.tensor(boxes.get(i, []), dtype=torch.float64).reshape(-1, 4) for i in ids],
        sizes=[sizes.get(i) for i in ids],
        masks=[MaskFiles(tuple(masks[i]), ignores[i]) for i in ids] if kind == "mask" else [],
        root=Path(image_root) if image_root is not None else None,
    )


def write_wsol_metadata(folder: str | Path, ann: Annotations) -> Path:
    """Write box annotations as a Choe et al. metadata folder (the inverse of :func:`read_wsol_metadata`);
    boxes must have integer edges."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "image_ids.txt", "".join(f"{i}\n" for i in ann.ids))
    write_atomic(folder / "class_labels.txt", "".join(f"{i},{int(label)}\n" for i, label in zip(ann.ids, ann.labels)))
    if all(s is not None for s in ann.sizes):
        write_atomic(
            folder / "image_sizes.txt", "".join(f"{i},{s[0]},{s[1]}\n" for i, s in zip(ann.ids, ann.sizes) if s)
        )
    lines = []
    for image_id, boxes in zip(ann.ids, ann.boxes):
        for x0, y0, x1, y1 in boxes.round().long().tolist():
            lines.append(f"{image_id},{x0},{y0},{x1 - 1},{y1 - 1}\n")
    write_atomic(folder / "localization.txt", "".join(lines))
    return folder


def nearest_resize(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a 2-D array to ``size=(H, W)`` by nearest neighbour with OpenCV's ``INTER_NEAREST`` sampling
    (source index ``floor(i / (dst / src))``), as Choe et al. resize their masks."""
    h, w = size
    src_h, src_w = mask.shape
    rows = np.minimum(np.floor(np.arange(h) * (1.0 / (h / src_h))).astype(np.int64), src_h - 1)
    cols = np.minimum(np.floor(np.arange(w) * (1.0 / (w / src_w))).astype(np.int64), src_w - 1)
    return mask[rows[:, None], cols[None, :]]


def _read_gray(path: Path) -> np.ndarray:
    if not path.is_file():
        raise AnnotationError(f"{path}: mask file not found")
    try:
        with open_image(path) as img:
            return np.asarray(img.convert("L"), dtype=np.float32)
    except (OSError, ValueError, ImageError) as err:
        raise AnnotationError(f"{path}: cannot read the mask image ({err})") from err


def load_mask(spec: MaskFiles, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Foreground and ignore masks (H, W) bool for ``size=(H, W)``, as Choe et al. build them: the union of the
    instance masks (> 0.5 after resizing), and the ignore region minus the foreground."""
    fg = np.zeros(size, bool)
    for path in spec.masks:
        fg |= nearest_resize(_read_gray(path), size) > 0.5
    ignore = np.zeros(size, bool)
    if spec.ignore is not None:
        ignore = (nearest_resize(_read_gray(spec.ignore), size) > 0.5) & ~fg
    return torch.from_numpy(fg), torch.from_numpy(ignore)


# --------------------------------------------------------------------------------------------- VOC / ImageNet


def read_voc_xml(path: str | Path) -> tuple[str, tuple[int, int] | None, list[tuple[str, list[float]]]]:
    """One PASCAL VOC / ImageNet annotation file: (filename, (W, H) or None, [(class name, box)]) with boxes in
    camlens' convention (the file's 1-based inclusive ``bndbox`` shifted: ``[xmin - 1, ymin - 1, xmax, ymax]``)."""
    path = Path(path)
    object_lines: list[int] = []
    try:
        data = path.read_bytes()
        root = ET.fromstring(data)
        locator = expat.ParserCreate()
        locator.StartElementHandler = lambda name, _: (
            object_lines.append(locator.CurrentLineNumber) if name == "object" else None
        )
        locator.Parse(data, True)
    except (ET.ParseError, expat.ExpatError, OSError) as err:
        raise AnnotationError(f"{path}: not a readable XML annotation ({err})") from err
    filename = (root.findtext("filename") or path.stem).strip()
    size = None
    size_el = root.find("size")
    if size_el is not None and size_el.findtext("width") and size_el.findtext("height"):
        try:
            size = (int(float(size_el.findtext("width", ""))), int(float(size_el.findtext("height", ""))))
        except ValueError:
            raise AnnotationError(f"{path}: <size> width/height are not numbers") from None
    objects = []
    for k, obj in enumerate(root.iter("object"), 1):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        if not name or bb is None:
            raise AnnotationError(f"{path}: object {k} lacks <name> or <bndbox>")
        where = f"{path}:{object_lines[k - 1]}" if k <= len(object_lines) else str(path)
        texts = [bb.findtext(t) or "" for t in ("xmin", "ymin", "xmax", "ymax")]
        try:
            xmin, ymin, xmax, ymax = (float(t) for t in texts)
        except ValueError:
            raise AnnotationError(f"{where}: bndbox of object {k} ({name}) must be numbers, got {texts}") from None
        box = [xmin - 1, ymin - 1, xmax, ymax]
        check_box(box, size, f"{where} (object {k}, {name})")
        objects.append((name, box))
    if not objects:
        raise AnnotationError(f"{path}: no <object> with a box")
    return filename, size, objects


def read_voc(folder: str | Path, class_names: Sequence[str] | None = None, split: str | None = None) -> Annotations:
    """A VOC-style folder (``Annotations/*.xml``, images in ``JPEGImages/``; ``ImageSets/Main/<split>.txt`` picks
    a split) or a folder of XML files next to their images.  Each image's label is the class of its first
    object, and its boxes are all objects of that class.  Labels index ``class_names`` (default: the sorted
    object names found, which is ImageNet's synset order)."""
    folder = Path(folder)
    xml_dir = folder / "Annotations" if (folder / "Annotations").is_dir() else folder
    image_dir = folder / "JPEGImages" if (folder / "JPEGImages").is_dir() else xml_dir
    files = sorted(xml_dir.glob("*.xml"))
    if split is not None:
        list_path = folder / "ImageSets" / "Main" / f"{split}.txt"
        if list_path.is_file():
            wanted = [line.split()[0] for _, line in _lines(list_path)]
            files = [xml_dir / f"{stem}.xml" for stem in wanted]
    if not files:
        raise AnnotationError(f"{xml_dir}: no .xml annotation files")
    parsed = [read_voc_xml(f) for f in files]
    names = list(class_names) if class_names is not None else sorted({n for _, _, objs in parsed for n, _ in objs})
    index = {n: i for i, n in enumerate(names)}
    ids, labels, boxes, sizes = [], [], [], []
    for path, (filename, size, objects) in zip(files, parsed):
        first = objects[0][0]
        if first not in index:
            raise AnnotationError(f"{path}: class {first!r} is not one of the model's class names")
        ids.append(filename if Path(filename).suffix else f"{filename}.JPEG")
        labels.append(index[first])
        boxes.append(torch.tensor([b for n, b in objects if n == first], dtype=torch.float64))
        sizes.append(size)
    return Annotations(ids, torch.tensor(labels, dtype=torch.long), boxes, sizes, root=image_dir, class_names=names)


# --------------------------------------------------------------------------------------------- CUB-200-2011


def read_cub(root: str | Path, split: str | None = "test") -> Annotations:
    """CUB-200-2011 (``images.txt``, ``image_class_labels.txt``, ``bounding_boxes.txt``, optional
    ``train_test_split.txt`` and ``classes.txt``); images under ``root/images``.  ``split``: ``train``, ``test``
    or None for all."""
    root = Path(root)

    def table(name: str, width: int) -> dict[str, tuple[int, list[str]]]:
        path = root / name
        out: dict[str, tuple[int, list[str]]] = {}
        for lineno, line in _lines(path):
            fields = line.split()
            if len(fields) != width:
                raise AnnotationError(f"{path}:{lineno}: expected {width} fields, got {line!r}")
            if fields[0] in out:
                raise AnnotationError(f"{path}:{lineno}: image id {fields[0]} repeats line {out[fields[0]][0]}")
            out[fields[0]] = (lineno, fields[1:])
        return out

    images = table("images.txt", 2)
    labels = table("image_class_labels.txt", 2)
    bboxes = table("bounding_boxes.txt", 5)
    for name, tab in (("image_class_labels.txt", labels), ("bounding_boxes.txt", bboxes)):
        for key, (lineno, _) in tab.items():
            if key not in images:
                raise AnnotationError(f"{root / name}:{lineno}: image id {key} is not in images.txt")
        missing = [k for k in images if k not in tab]
        if missing:
            raise AnnotationError(f"{root / name}: no entry for image id {missing[0]} (of images.txt)")
    keys = list(images)
    if split is not None:
        if split not in ("train", "test"):
            raise AnnotationError(f"CUB split {split!r}: use train, test or none")
        flags = table("train_test_split.txt", 2)
        keys = [k for k in keys if k in flags and flags[k][1][0] == ("1" if split == "train" else "0")]
    class_names = None
    if (root / "classes.txt").is_file():
        class_names = [line.split(maxsplit=1)[1] for _, line in _lines(root / "classes.txt")]
    out_labels, out_boxes = [], []
    for k in keys:
        lineno, (label,) = labels[k][0], labels[k][1]
        (value,) = _ints(root / "image_class_labels.txt", lineno, [label], "the class label")
        if value < 1:
            raise AnnotationError(f"{root / 'image_class_labels.txt'}:{lineno}: CUB labels start at 1, got {value}")
        out_labels.append(value - 1)
        lineno, fields = bboxes[k]
        x, y, w, h = _floats(root / "bounding_boxes.txt", lineno, fields, "x y width height")
        box = [x, y, x + w, y + h]
        check_box(box, None, f"{root / 'bounding_boxes.txt'}:{lineno}")
        out_boxes.append(torch.tensor([box], dtype=torch.float64))
    return Annotations(
        ids=[images[k][1][0] for k in keys],
        labels=torch.tensor(out_labels, dtype=torch.long),
        boxes=out_boxes,
        sizes=[None] * len(keys),
        root=root / "images",
        class_names=class_names,
    )


# --------------------------------------------------------------------------------------------- built-in


def builtin_annotations(dataset) -> Annotations:
    """The ground truth of a :class:`camlens.data.builtin.BuiltinDataset` (boxes and exact masks)."""
    data = dataset.tensors()
    size = int(dataset.image_size)
    return Annotations(
        ids=list(dataset.ids),
        labels=data["labels"].long().clone(),
        boxes=[b.double().reshape(1, 4) for b in data["boxes"]],
        sizes=[(size, size)] * len(dataset),
        masks=[m for m in data["masks"]],
        class_names=list(dataset.classes),
    )


def find_annotations(
    path: str | Path,
    split: str | None = None,
    class_names: Sequence[str] | None = None,
    image_root: str | Path | None = None,
    mask_root: str | Path | None = None,
) -> Annotations:
    """Read whichever supported layout ``path`` holds: a WSOL metadata folder (or its ``<split>/`` subfolder),
    a CUB-200-2011 root, or a VOC/ImageNet XML folder."""
    path = Path(path)
    if not path.is_dir():
        raise AnnotationError(f"{path}: not a folder")
    for folder in ([path / split] if split else []) + [path]:
        if (folder / "image_ids.txt").is_file():
            return read_wsol_metadata(folder, mask_root=mask_root, image_root=image_root)
    if (path / "images.txt").is_file() and (path / "bounding_boxes.txt").is_file():
        return read_cub(path, split if split in ("train", "test") else None)
    if (path / "Annotations").is_dir() or any(path.glob("*.xml")):
        return read_voc(path, class_names, split)
    raise AnnotationError(
        f"{path}: no annotations found; expected image_ids.txt (WSOL metadata), images.txt + bounding_boxes.txt "
        "(CUB-200-2011) or Annotations/*.xml (VOC, ImageNet)"
    )
