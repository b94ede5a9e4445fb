"""The one reading of a ``--data`` string, shared by training (:func:`camlens.training.load_data`) and evaluation
(:func:`camlens.data.samples.dataset_samples`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DataKind = Literal["builtin", "stl10", "wsol", "folder"]
STL10_DEFAULT_ROOT = "data"


@dataclass(frozen=True)
class DataSource:
    """What a ``--data`` string names.

    Attributes:
        kind: ``builtin`` (the built-in dataset), ``stl10`` (its binary files under ``path``), ``wsol`` (a folder of
            Choe et al.'s metadata, ``image_ids.txt`` in it or in a split subfolder) or ``folder`` (any other
            folder: an ImageFolder tree for training, CUB-200-2011 or VOC/ImageNet XML annotations for evaluation).
        path: the folder (STL-10's root); None for the built-in dataset.
    """

    kind: DataKind
    path: Path | None = None


def resolve_data(data: str, split: str | None = None) -> DataSource:
    """Read a ``--data`` string: ``builtin``; ``stl10`` or ``stl10:ROOT`` (default root ``./data``); else a folder,
    ``wsol`` when ``image_ids.txt`` is in it, in its ``train/`` or in its ``split`` subfolder.

    Args:
        data: the string, as given to ``--data``.
        split: the split the caller reads, whose subfolder may hold the metadata.

    Returns:
        The :class:`DataSource`.
    """
    if data == "builtin":
        return DataSource("builtin")
    if data == "stl10" or data.startswith("stl10:"):
        return DataSource("stl10", Path(data.partition(":")[2] or STL10_DEFAULT_ROOT))
    path = Path(data)
    subfolders = ["train"] + ([split] if split else [])
    if any((folder / "image_ids.txt").is_file() for folder in [path, *(path / s for s in subfolders)]):
        return DataSource("wsol", path)
    return DataSource("folder", path)
