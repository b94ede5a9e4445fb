"""STL-10 binary reader: a round trip on tiny files written here in the documented column-major layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from camlens.capture import CamlensError
from camlens.data import stl10


def _write_column_major(path: Path, images: np.ndarray) -> None:
    """The STL-10 layout spelled out with plain loops: per image, per channel, columns (x) outer, rows (y) inner."""
    out = bytearray()
    for image in images:
        for channel in image:
            for x in range(channel.shape[1]):
                out.extend(int(v) for v in channel[:, x])
    path.write_bytes(bytes(out))


@pytest.fixture()
def tiny_stl10(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 3, 96, 96), dtype=np.uint8)
    images[0, 0, 5, 90] = 7  # row 5, column 90 of the red channel: a transposed reader puts it at (90, 5)
    images[0, 0, 90, 5] = 200
    labels = np.array([1, 10, 4], dtype=np.uint8)  # stored 1-based
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    _write_column_major(folder / "train_X.bin", images)
    (folder / "train_y.bin").write_bytes(labels.tobytes())
    (folder / "class_names.txt").write_text("\n".join(stl10.CLASSES) + "\n")
    return tmp_path, images, labels


def test_read_split_round_trips_the_column_major_layout(tiny_stl10):
    root, images, labels = tiny_stl10
    got_images, got_labels = stl10.read_split(root, "train")
    assert got_images.dtype == torch.uint8 and got_images.shape == (3, 3, 96, 96)
    assert torch.equal(got_images, torch.from_numpy(images))
    assert got_images[0, 0, 5, 90] == 7 and got_images[0, 0, 90, 5] == 200
    assert got_labels.tolist() == [0, 9, 3]


def test_reader_agrees_with_torchvision_loader(tiny_stl10):
    root, _, _ = tiny_stl10
    from torchvision.datasets import STL10 as TvSTL10

    loader = getattr(TvSTL10, "_STL10__loadfile", None)
    if loader is None:
        pytest.skip("torchvision's private STL-10 loader moved")
    tv = object.__new__(TvSTL10)
    tv.root = str(root)
    tv_images, tv_labels = loader(tv, "train_X.bin", "train_y.bin")
    images, labels = stl10.read_split(root, "train")
    assert np.array_equal(images.numpy(), tv_images)
    assert np.array_equal(labels.numpy(), tv_labels)


def test_dataset_items_are_float_images_with_class_names(tiny_stl10):
    root, images, _ = tiny_stl10
    ds = stl10.STL10(root / "stl10_binary", "train")  # the folder itself works as root too
    item = ds[2]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 96, 96)
    assert torch.allclose(item["image"] * 255, torch.from_numpy(images[2]).float())
    assert item["label"] == 3 and ds.classes[item["label"]] == "cat"


def test_truncated_images_file_names_the_file(tiny_stl10):
    root, _, _ = tiny_stl10
    path = root / "stl10_binary" / "train_X.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CamlensError, match="train_X.bin.*whole number"):
        stl10.read_split(root, "train")


def test_label_count_and_range_are_checked(tiny_stl10):
    root, _, _ = tiny_stl10
    labels = root / "stl10_binary" / "train_y.bin"
    labels.write_bytes(bytes([1, 2]))
    with pytest.raises(CamlensError, match="2 labels for 3 images"):
        stl10.read_split(root, "train")
    labels.write_bytes(bytes([1, 0, 3]))
    with pytest.raises(CamlensError, match="labels must be 1..10"):
        stl10.read_split(root, "train")


def test_missing_copy_says_how_to_get_it(tmp_path):
    with pytest.raises(CamlensError, match="download"):
        stl10.read_split(tmp_path, "train")
