"""STL-10 (Coates, Lee and Ng, AISTATS 2011) read from its binary distribution, without pickle or torchvision.

Layout of ``stl10_binary/``: ``{split}_X.bin`` holds N images of 3x96x96 uint8, each channel stored column-major
(so a plain reshape gives (N, 3, W, H) and the last two axes must be swapped); ``{split}_y.bin`` holds N labels
1..10 as uint8; ``class_names.txt`` one name a line.  ``unlabeled`` has no labels file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import CamlensError

SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE
SPLITS = ("train", "test", "unlabeled")
FOLDER = "stl10_binary"
CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")


def stl10_folder(root: str | Path) -> Path:
    """The folder holding the ``.bin`` files: ``root`` itself or ``root/stl10_binary`` (torchvision's layout)."""
    root = Path(root)
    for folder in (root, root / FOLDER):
        if (folder / "train_X.bin").is_file() or (folder / "test_X.bin").is_file():
            return folder
    raise CamlensError(
        f"no STL-10 binary files (train_X.bin, test_X.bin) in {root} or {root / FOLDER}; "
        "download them with download=True (or `camlens train --data stl10 --download`)"
    )


def read_images(path: str | Path) -> Tensor:
    """(N, 3, 96, 96) uint8 images from an STL-10 ``*_X.bin`` file."""
    path = Path(path)
    if not path.is_file():
        raise CamlensError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0 or size % IMAGE_BYTES:
        raise CamlensError(f"{path}: {size} bytes is not a whole number of 3x96x96 images ({IMAGE_BYTES} bytes each)")
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, 3, SIDE, SIDE)
    return torch.from_numpy(raw).transpose(2, 3).contiguous()


def read_labels(path: str | Path, count: int | None = None) -> Tensor:
    """(N,) long labels 0..9 from an STL-10 ``*_y.bin`` file (stored there as 1..10)."""
    path = Path(path)
    if not path.is_file():
        raise CamlensError(f"{path}: no such file")
    raw = torch.from_numpy(np.fromfile(path, dtype=np.uint8).astype(np.int64))
    if count is not None and raw.numel() != count:
        raise CamlensError(f"{path}: {raw.numel()} labels for {count} images")
    if raw.numel() and (raw.min() < 1 or raw.max() > len(CLASSES)):
        raise CamlensError(f"{path}: labels must be 1..{len(CLASSES)}, found {int(raw.min())}..{int(raw.max())}")
    return raw - 1


def read_class_names(folder: Path) -> list[str]:
    path = folder / "class_names.txt"
    if not path.is_file():
        return list(CLASSES)
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) != len(CLASSES):
        raise CamlensError(f"{path}: {len(names)} class names, expected {len(CLASSES)}")
    return names


def read_split(root: str | Path, split: Literal["train", "test", "unlabeled"]) -> tuple[Tensor, Tensor]:
    """Images (N, 3, 96, 96) uint8 and labels (N,) long (0..9; -1 for ``unlabeled``) of one split."""
    if split not in SPLITS:
        raise CamlensError(f"STL-10 split {split!r} is not one of: {', '.join(SPLITS)}")
    folder = stl10_folder(root)
    images = read_images(folder / f"{split}_X.bin")
    if split == "unlabeled":
        return images, torch.full((images.shape[0],), -1, dtype=torch.long)
    return images, read_labels(folder / f"{split}_y.bin", images.shape[0])


def download_stl10(root: str | Path) -> Path:
    """Fetch and unpack STL-10 into ``root/stl10_binary`` through torchvision (about 2.6 GB)."""
    from torchvision.datasets import STL10

    try:
        STL10(str(root), split="train", download=True)
    except Exception as err:  # urllib, tarfile and checksum errors all end here
        raise CamlensError(
            f"cannot download STL-10 into {root} ({type(err).__name__}: {err}); offline, copy "
            f"{FOLDER}/ there from another machine"
        ) from err
    return Path(root) / FOLDER


class STL10(Dataset):
    """One STL-10 split held in memory as uint8; items are ``{"image": (3, 96, 96) float32 in [0, 1],
    "label": int, "id": str}``.  ``download=True`` fetches the archive when no local copy is found."""

    def __init__(
        self, root: str | Path, split: Literal["train", "test", "unlabeled"] = "train", *, download: bool = False
    ) -> None:
        if download:
            try:
                stl10_folder(root)
            except CamlensError:
                download_stl10(root)
        self.split = split
        self.images, self.labels = read_split(root, split)
        self.classes = read_class_names(stl10_folder(root))

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict:
        return {
            "image": self.images[index].float() / 255.0,
            "label": int(self.labels[index]),
            "id": f"stl10-{self.split}-{index:05d}",
        }
