"""Training data: the splits a run reads, their batches (sharded over torchrun ranks) and their augmentation.

Sources: the built-in dataset (``"builtin"``), STL-10 (``"stl10"``, its binary files), an ImageFolder tree, or a
metadata folder in Choe et al.'s WSOL layout (``image_ids.txt`` and ``class_labels.txt``, in the folder itself or
its ``train/`` subfolder; ``val/`` beside it is their train-fullsup split, used for validation).  Images are read
batch by batch where they do not fit in memory.

Augmentation parameters are drawn for the whole global batch from one generator seeded by (seed, epoch) and each
rank applies its slice, so a run sees the same augmented images whatever the number of ranks, and a resumed run
the same as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..data.annotations import AnnotationError
from ..data.source import resolve_data
from ..distributed import Context
from ..errors import CamlensError

if TYPE_CHECKING:
    from .config import TrainConfig

DEFAULT_SIZE = {"builtin": 64, "stl10": 96}


@dataclass
class Split:
    """Images held in memory as uint8 (N, 3, H, W) with labels, or a dataset read batch by batch."""

    labels: Tensor
    images: Tensor | None = None
    dataset: Dataset | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class TrainData:
    """The training and validation splits; ``flips``: whether mirror images keep their class; ``augment``: the
    augmentation the data asks for (``shift`` for the built-in dataset, ``crop`` for natural images);
    ``metadata``: the WSOL metadata root, where there is one (its ``val/`` split has boxes for selection)."""

    train: Split
    val: Split
    classes: list[str]
    image_size: int
    flips: bool
    name: str
    augment: str = "shift"
    resize_size: int | None = None
    metadata: Path | None = None


def default_resize(size: int) -> int:
    """Choe et al.'s 256 px resize for a 224 px crop, scaled to ``size``."""
    return round(size * 256 / 224)


def load_data(
    data: str,
    *,
    image_size: int | None = None,
    seed: int = 0,
    num_train: int | None = None,
    num_val: int | None = None,
    val_fraction: float = 0.1,
    download: bool = False,
    images: str | Path | None = None,
    augment: str = "auto",
    resize_size: int | None = None,
) -> TrainData:
    """``data``: ``"builtin"``, ``"stl10"`` / ``"stl10:ROOT"`` (binary files under ROOT, default ``./data``), an
    ImageFolder tree, or a WSOL metadata folder with ``images`` the root its image ids are relative to.  STL-10
    validates on its test split; an ImageFolder tree on its ``val/`` folder or a held-out fraction; a metadata
    folder on its ``val/`` sibling or a held-out fraction; the built-in dataset on its ``val`` split (digit
    instances unseen in training).  With ``crop`` augmentation (``auto`` for all but the built-in data) training
    images are read at ``resize_size`` and cropped to ``image_size``; validation images at ``image_size``."""
    source = resolve_data(data)
    if source.kind == "builtin":
        from ..data.builtin import BuiltinDataset

        size = image_size or DEFAULT_SIZE["builtin"]
        splits = []
        for split, count in (("train", num_train), ("val", num_val)):
            ds = BuiltinDataset(split, num_images=count, image_size=size, seed=seed)  # type: ignore[arg-type]
            splits.append(Split(ds.tensors()["labels"], ds.uint8_images()))
        kind = "shift" if augment == "auto" else augment
        return TrainData(
            splits[0],
            splits[1],
            list(BuiltinDataset.classes),
            size,
            False,
            "builtin",
            kind,
            _resize(kind, size, resize_size),
        )
    kind = "crop" if augment == "auto" else augment
    if source.kind == "stl10":
        from ..data.stl10 import STL10

        root = str(source.path)
        train_set = STL10(root, "train", download=download)
        val_set = STL10(root, "test")
        size = image_size or DEFAULT_SIZE["stl10"]
        train_split = _subset(Split(train_set.labels, train_set.images), num_train, seed)
        val_split = _subset(Split(val_set.labels, val_set.images), num_val, seed)
        return TrainData(
            train_split, val_split, train_set.classes, size, True, "stl10", kind, _resize(kind, size, resize_size)
        )
    size = image_size or 224
    resize = _resize(kind, size, resize_size)
    path = Path(data)
    if source.kind == "wsol":
        return _wsol_data(path, images, size, resize, kind, val_fraction, seed, num_train, num_val)
    from ..data.folder import folder_splits

    folder_train, folder_val = folder_splits(data, size, val_fraction, seed)
    folder_train.size = resize or size
    return TrainData(
        Split(folder_train.labels, dataset=folder_train),
        Split(folder_val.labels, dataset=folder_val),
        folder_train.classes,
        size,
        True,
        str(path.resolve()),
        kind,
        resize,
    )


def config_data(config: TrainConfig) -> TrainData:
    """:func:`load_data` with a run's data settings (the training loop and the search read them the same way).

    Args:
        config: the run's settings.

    Returns:
        The training and validation splits.
    """
    return load_data(
        config.data,
        image_size=config.image_size,
        seed=config.seed,
        num_train=config.num_train,
        num_val=config.num_val,
        val_fraction=config.val_fraction,
        download=config.download,
        images=config.images,
        augment=config.augment,
        resize_size=config.resize_size,
    )


def _resize(kind: str, size: int, resize_size: int | None) -> int | None:
    if kind != "crop":
        return None
    resize = resize_size or default_resize(size)
    if resize < size:
        raise CamlensError(f"resize size {resize} is smaller than the {size} px crop")
    return resize


def _subset(split: Split, count: int | None, seed: int) -> Split:
    if count is None or count >= len(split):
        return split
    keep = _keep(len(split), count, seed)
    return Split(split.labels[keep], split.images[keep] if split.images is not None else None)


def _keep(n: int, count: int, seed: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count].sort().values


def _wsol_data(
    path: Path,
    images: str | Path | None,
    size: int,
    resize: int | None,
    kind: str,
    val_fraction: float,
    seed: int,
    num_train: int | None,
    num_val: int | None,
) -> TrainData:
    """A Choe et al. metadata folder: train split ``path/train`` (or ``path`` itself), validation ``path/val``
    (their train-fullsup, labels only are read here) or a held-out ``val_fraction`` of each class."""
    from ..data.annotations import read_wsol_labels
    from ..data.folder import ImageFolder

    train_dir = path / "train" if (path / "train" / "image_ids.txt").is_file() else path
    val_dir = path / "val" if train_dir != path and (path / "val" / "image_ids.txt").is_file() else None
    if images is None:
        raise CamlensError(
            f"--data {path}: WSOL metadata names images relative to their dataset's root; "
            "give that folder with --images DIR"
        )
    root = Path(images)
    if not root.is_dir():
        raise CamlensError(f"--images {root}: not a folder")
    ids, labels = read_wsol_labels(train_dir)
    num_classes = int(labels.max()) + 1
    absent = sorted(set(range(num_classes)) - set(labels.tolist()))
    if absent:
        raise AnnotationError(
            f"{train_dir / 'class_labels.txt'}: class(es) {absent[:5]} of 0..{num_classes - 1} "
            "have no training image; labels must number the classes 0..K-1"
        )
    if val_dir is not None:
        val_ids, val_labels = read_wsol_labels(val_dir)
        unknown = sorted(set(val_labels.tolist()) - set(range(num_classes)))
        if unknown:
            raise AnnotationError(
                f"{val_dir / 'class_labels.txt'}: class(es) {unknown[:5]} are unknown: the "
                f"training split {train_dir} has classes 0..{num_classes - 1}"
            )
    else:
        if not 0 < val_fraction < 1:
            raise CamlensError(f"val_fraction={val_fraction} must be between 0 and 1")
        held = _held_out(labels, val_fraction, seed)
        val_ids, val_labels = [ids[i] for i in held], labels[held]
        rest = sorted(set(range(len(ids))) - set(held.tolist()))
        ids, labels = [ids[i] for i in rest], labels[rest]
    if num_train is not None and num_train < len(ids):
        keep = _keep(len(ids), num_train, seed)
        ids, labels = [ids[i] for i in keep], labels[keep]
    if num_val is not None and num_val < len(val_ids):
        keep = _keep(len(val_ids), num_val, seed)
        val_ids, val_labels = [val_ids[i] for i in keep], val_labels[keep]
    for where, listed in ((train_dir, ids), (val_dir or train_dir, val_ids)):
        missing = [i for i in listed if not (root / i).is_file()]
        if missing:
            raise CamlensError(
                f"{where / 'image_ids.txt'}: {len(missing)} of {len(listed)} image(s) are missing "
                f"under {root}, e.g. {missing[0]!r}"
            )
    classes = [str(c) for c in range(num_classes)]
    train_set = ImageFolder([(root / i, int(c)) for i, c in zip(ids, labels)], classes, resize or size, root)
    val_set = ImageFolder([(root / i, int(c)) for i, c in zip(val_ids, val_labels)], classes, size, root)
    return TrainData(
        Split(labels, dataset=train_set),
        Split(val_labels, dataset=val_set),
        classes,
        size,
        True,
        str(path.resolve()),
        kind,
        resize,
        path if val_dir is not None else None,
    )


def _held_out(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """Indices of a seeded ``fraction`` of each class (at least one image of a class with two or more)."""
    g = torch.Generator().manual_seed(seed)
    held = []
    for c in range(int(labels.max()) + 1):
        own = torch.nonzero(labels == c).flatten()
        count = round(fraction * len(own)) if len(own) > 2 else min(len(own) - 1, 1)
        held.append(own[torch.randperm(len(own), generator=g)[:count]])
    return torch.cat(held).sort().values


# --------------------------------------------------------------------------------------------- batches


def global_batches(order: Tensor, batch_size: int) -> list[Tensor]:
    """The run's batches: consecutive runs of ``batch_size`` indices of ``order`` (the last may be shorter)."""
    return list(order.split(batch_size))


def local_part(batch: Tensor, ctx: Context) -> Tensor:
    """This rank's contiguous share of a global batch (shares differ by at most one image)."""
    return torch.tensor_split(batch, ctx.world_size)[ctx.rank] if ctx.distributed else batch


def load_batches(split: Split, batches: Sequence[Tensor], workers: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(images float (B, 3, H, W) in [0, 1], labels) for each list of indices, in order."""
    if split.images is not None:
        for idx in batches:
            yield split.images[idx].float().div_(255), split.labels[idx]
        return
    if split.dataset is None:
        raise CamlensError("a split holds neither images nor a dataset")
    loader = DataLoader(
        split.dataset, batch_sampler=[b.tolist() for b in batches], num_workers=workers, collate_fn=_collate
    )
    yield from loader


def _collate(items: list[dict]) -> tuple[Tensor, Tensor]:
    return torch.stack([it["image"] for it in items]), torch.tensor([it["label"] for it in items])


# --------------------------------------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class Augmentation:
    """``shift``: a random translation by up to ``max_shift`` pixels (edges replicated); ``crop``: a random
    ``size`` crop of the image resized to ``resize`` x ``resize``; either with a horizontal mirror of probability
    1/2 when ``flips``; ``none``: the images as they are."""

    kind: str
    size: int
    max_shift: int = 0
    resize: int | None = None
    flips: bool = False

    def draw(self, generator: torch.Generator, n: int) -> Tensor:
        """(n, 3) int64: top and left offsets and the mirror flag of each image of a global batch."""
        span = {"shift": 2 * self.max_shift, "crop": (self.resize or self.size) - self.size}.get(self.kind, 0)
        offsets = (
            torch.randint(0, span + 1, (2, n), generator=generator) if span > 0 else torch.zeros(2, n, dtype=torch.long)
        )
        mirror = (
            (torch.rand(n, generator=generator) < 0.5)
            if self.flips and self.kind != "none"
            else torch.zeros(n, dtype=torch.bool)
        )
        return torch.stack([offsets[0], offsets[1], mirror.long()], 1)

    def __call__(self, images: Tensor, params: Tensor) -> Tensor:
        """Augment (B, 3, H, W) images with the rows of :meth:`draw` that belong to them."""
        if self.kind == "none":
            return images
        params = params.to(images.device)
        if self.kind == "shift" and self.max_shift > 0:
            padded = F.pad(images, (self.max_shift,) * 4, mode="replicate")
            images = crop(padded, params[:, 0], params[:, 1], images.shape[-2:])
        elif self.kind == "crop":
            resize = self.resize or self.size
            if tuple(images.shape[-2:]) != (resize, resize):
                images = F.interpolate(
                    images, size=(resize, resize), mode="bilinear", align_corners=False, antialias=True
                )
            images = crop(images, params[:, 0], params[:, 1], (self.size, self.size))
        if self.flips:
            images = torch.where(params[:, 2, None, None, None].bool(), images.flip(-1), images)
        return images


def crop(images: Tensor, top: Tensor, left: Tensor, size: Sequence[int]) -> Tensor:
    """Per-image crops ``images[i, :, top_i : top_i + h, left_i : left_i + w]`` of (B, C, H, W), one gather."""
    b, c = images.shape[:2]
    h, w = int(size[0]), int(size[1])
    dev = images.device
    rows = (top[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    return images[
        torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None], rows, cols
    ]
