"""Evaluation and training samples: a dataset's images with their labels and ground truth, by index.

:class:`Sample` is one image with its label, boxes and optional masks; :class:`AnnotationSamples` reads the images
of an :class:`camlens.data.annotations.Annotations` set, :class:`BuiltinSamples` wraps the built-in dataset, and
:func:`dataset_samples` picks between them from a ``--data`` string.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from ..errors import CamlensError
from .annotations import AnnotationError, Annotations, MaskFiles, find_annotations, load_mask
from .source import resolve_data


@dataclass
class Sample:
    """One evaluation image: (3, H, W) float in [0, 1], label, ground-truth boxes (n, 4) and optional masks."""

    image_id: str
    image: Tensor
    label: int
    boxes: Tensor
    mask: Tensor | None = None
    ignore: Tensor | None = None

    def pin_memory(self) -> "Sample":
        """The sample with its image in page-locked memory (what ``DataLoader(pin_memory=True)`` calls), so the
        copy to the GPU can overlap the previous batch's work."""
        return Sample(self.image_id, self.image.pin_memory(), self.label, self.boxes, self.mask, self.ignore)


class AnnotationSamples(torch.utils.data.Dataset):
    """The images of an :class:`Annotations` set read from ``ann.root`` (or its in-memory masks), by index."""

    def __init__(self, ann: Annotations, max_pixels: int | None = None) -> None:
        from .images import DEFAULT_MAX_PIXELS

        if ann.root is None:
            raise CamlensError("these annotations have no image folder; pass the images' root folder (--images DIR)")
        self.ann = ann
        self.root: Path = ann.root
        self.max_pixels = max_pixels or DEFAULT_MAX_PIXELS

    def __len__(self) -> int:
        return len(self.ann)

    def __getitem__(self, i: int) -> Sample:
        from .images import load_image

        ann = self.ann
        image_id = ann.ids[i]
        path = self.root / image_id
        image = load_image(path, self.max_pixels)
        h, w = image.shape[-2:]
        size = ann.sizes[i]
        if size is not None and tuple(size) != (w, h):
            raise AnnotationError(f"{path}: the image is {w}x{h} but the annotations say {size[0]}x{size[1]}")
        for box in ann.boxes[i].tolist():
            if box[2] > w or box[3] > h:
                raise AnnotationError(f"{image_id}: box {box} lies outside the {w}x{h} image")
        mask = ignore = None
        spec = ann.masks[i] if ann.masks else None
        if isinstance(spec, MaskFiles):
            mask, ignore = load_mask(spec, (h, w))
        elif isinstance(spec, Tensor):
            mask = spec.bool()
        return Sample(image_id, image, int(ann.labels[i]), ann.boxes[i], mask, ignore)


class BuiltinSamples(torch.utils.data.Dataset):
    """The samples of a :class:`camlens.data.builtin.BuiltinDataset`, by index."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Sample:
        item = self.dataset[i]
        return Sample(item["id"], item["image"], int(item["label"]), item["box"].double().reshape(1, 4), item["mask"])


def dataset_samples(
    data: str,
    split: str = "test",
    *,
    num_images: int | None = None,
    images: str | Path | None = None,
    mask_root: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    image_size: int | None = None,
) -> AnnotationSamples | BuiltinSamples:
    """The samples of ``data``: ``builtin`` (the built-in dataset's ``split``, rendered at ``image_size``, default
    64 px) or a folder that :func:`camlens.data.annotations.find_annotations` reads (images under ``images`` where
    the layout does not say).  ``num_images`` keeps the first n."""
    source = resolve_data(data, split)
    if source.kind == "stl10":
        raise CamlensError(
            f"--data {data}: STL-10 has no boxes to evaluate against; use builtin or a folder of "
            "annotations (WSOL metadata, CUB-200-2011, VOC/ImageNet XML)"
        )
    if source.kind == "builtin":
        from .builtin import BuiltinDataset

        dataset = BuiltinDataset(split, num_images=num_images, image_size=image_size or 64)  # type: ignore[arg-type]
        if class_names is not None and len(class_names) != len(dataset.classes):
            raise CamlensError(
                f"the built-in dataset has {len(dataset.classes)} classes but the model has "
                f"{len(class_names)}; evaluate a model trained on it (camlens train --data builtin)"
            )
        return BuiltinSamples(dataset)
    ann = find_annotations(data, split, class_names, image_root=images, mask_root=mask_root)
    if images is not None:
        ann.root = Path(images)
    if num_images is not None:
        keep = slice(0, num_images)
        ann = Annotations(
            ann.ids[keep],
            ann.labels[keep],
            ann.boxes[keep],
            ann.sizes[keep],
            ann.masks[keep],
            ann.root,
            ann.class_names,
        )
    if class_names is not None and len(ann) and int(ann.labels.max()) >= len(class_names):
        raise CamlensError(
            f"{data}: class label {int(ann.labels.max())} is out of range for a model with {len(class_names)} classes"
        )
    return AnnotationSamples(ann)
