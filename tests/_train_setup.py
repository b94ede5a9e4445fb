"""What the training tests set up: tiny CAM networks and a WSOL metadata folder written from the built-in dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from camlens.data.annotations import Annotations, write_wsol_metadata
from camlens.data.builtin import BuiltinDataset


class TinyCam(nn.Module):
    """conv (stride 2) -> ReLU -> conv -> ReLU -> GAP -> linear, optionally with BatchNorm; ``new_layers`` names
    the head, as the CAM network builders do."""

    new_layers = ("conv2", "fc")

    def __init__(self, num_classes: int = 10, width: int = 8, batchnorm: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 2, 1)
        self.bn = nn.BatchNorm2d(width) if batchnorm else nn.Identity()
        self.conv2 = nn.Conv2d(width, 2 * width, 3, 1, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.bn(self.conv1(x)))))
        return self.fc(self.pool(x).flatten(1))


def write_builtin_metadata(root: Path, num_train: int = 40, num_val: int = 20, size: int = 32) -> tuple[Path, Path]:
    """``root/images/{train,val}/<id>.png`` and ``root/metadata/{train,val}`` in Choe et al.'s layout (train:
    image_ids.txt, class_labels.txt; val: also image_sizes.txt and localization.txt) from the built-in dataset's
    train and val splits.  Returns (metadata root, image root)."""
    images, meta = root / "images", root / "metadata"
    for split, count in (("train", num_train), ("val", num_val)):
        ds = BuiltinDataset(split, num_images=count, image_size=size)
        data = ds.tensors()
        (images / split).mkdir(parents=True)
        ids = [f"{split}/{i}.png" for i in ds.ids]
        for image_id, img in zip(ids, ds.uint8_images()):
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(images / image_id)
        ann = Annotations(
            ids,
            data["labels"].long(),
            [b.double().round().reshape(1, 4) for b in data["boxes"]],
            [(size, size)] * count,
        )
        write_wsol_metadata(meta / split, ann)
        if split == "train":
            for name in ("localization.txt", "image_sizes.txt"):  # Choe et al.'s train split has labels only
                (meta / split / name).unlink()
    return meta, images


def random_png(path: Path, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
