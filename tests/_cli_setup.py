"""What the command-line tests set up: a small checkpoint beside a folder of images, and a free local port."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from camlens.models import GapNet, Preprocess, save_checkpoint


def checkpoint_and_images(root: Path, images: int) -> Path:
    """root/m.safetensors (an untrained 10-class GapNet at 32 px) and root/imgs/im{i}.png of varied sizes."""
    torch.manual_seed(0)
    save_checkpoint(
        root / "m.safetensors",
        GapNet(10).eval(),
        arch="gapnet",
        class_names=list("abcdefghij"),
        preprocess=Preprocess((32, 32), (0.5,) * 3, (0.25,) * 3),
    )
    rng = np.random.default_rng(1)
    (root / "imgs").mkdir()
    for i in range(images):
        Image.fromarray(rng.integers(0, 255, (24 + i, 30, 3), dtype=np.uint8)).save(root / "imgs" / f"im{i}.png")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
