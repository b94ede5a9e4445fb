"""Image classification trees in the ImageFolder layout: ``root/CLASS_NAME/*.jpg``, classes in sorted order.

A tree with ``train/`` and ``val/`` (or ``test/``) subfolders is used as given; a single tree is split into
train and validation by a seeded, per-class draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import CamlensError
from .images import IMAGE_SUFFIXES, ImageError, decode_image, to_tensor

VAL_NAMES = ("val", "valid", "validation", "test")


def find_classes(root: Path) -> list[str]:
    """Sorted names of the subfolders of ``root`` (hidden ones skipped)."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise CamlensError(f"{root}: no class subfolders; expected the layout {root}/CLASS_NAME/image.jpg")
    return classes


def scan(root: Path, classes: Sequence[str]) -> list[tuple[Path, int]]:
    """Every image file under ``root/CLASS`` (recursively), with its class index, in sorted order."""
    samples: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        folder = root / name
        if folder.is_dir():
            files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            samples.extend((path, label) for path in files)
    if not samples:
        raise CamlensError(f"{root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in its class folders")
    return samples


class ImageFolder(Dataset):
    """Images read safely (content-sniffed, size-limited), resized to ``size`` x ``size`` (no crop).
    Items are ``{"image": (3, S, S) float32 in [0, 1], "label": int, "id": str}``."""

    def __init__(self, samples: Sequence[tuple[Path, int]], classes: Sequence[str], size: int, root: Path) -> None:
        self.samples = list(samples)
        self.classes = list(classes)
        self.size = size
        self.root = root

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        path, label = self.samples[index]
        try:
            image = decode_image(path)
        except ImageError as err:
            raise ImageError(f"{path}: {err}") from None
        image = image.resize((self.size, self.size), Image.Resampling.BILINEAR, reducing_gap=None)
        return {"image": to_tensor(image), "label": label, "id": str(path.relative_to(self.root))}

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([label for _, label in self.samples], dtype=torch.long)


def folder_splits(
    root: str | Path, size: int, val_fraction: float = 0.1, seed: int = 0
) -> tuple[ImageFolder, ImageFolder]:
    """(train, validation) datasets from an ImageFolder tree.

    ``root/train`` + ``root/val`` (or ``valid``, ``validation``, ``test``) are used as they are; otherwise
    ``val_fraction`` of each class (at least one image when the class has two) is held out by a seeded draw.
    """
    root = Path(root)
    if not root.is_dir():
        raise CamlensError(f"--data {root}: not a folder (give 'builtin', 'stl10' or an ImageFolder tree)")
    val_dir = next((root / n for n in VAL_NAMES if (root / n).is_dir()), None)
    if (root / "train").is_dir() and val_dir is not None:
        classes = find_classes(root / "train")
        return (
            ImageFolder(scan(root / "train", classes), classes, size, root),
            ImageFolder(scan(val_dir, classes), classes, size, root),
        )
    if not 0 < val_fraction < 1:
        raise CamlensError(f"val_fraction={val_fraction} must be between 0 and 1")
    classes = find_classes(root)
    samples = scan(root, classes)
    g = torch.Generator().manual_seed(seed)
    train: list[tuple[Path, int]] = []
    val: list[tuple[Path, int]] = []
    for label in range(len(classes)):
        own = [s for s in samples if s[1] == label]
        held = round(val_fraction * len(own)) if len(own) > 2 else min(len(own) - 1, 1)
        order = torch.randperm(len(own), generator=g).tolist()
        val.extend(own[i] for i in sorted(order[:held]))
        train.extend(own[i] for i in sorted(order[held:]))
    return ImageFolder(train, classes, size, root), ImageFolder(val, classes, size, root)
