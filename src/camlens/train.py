"""Training and fine-tuning GAP classifiers whose checkpoints describe themselves.

Data: the built-in dataset (``"builtin"``), STL-10 (``"stl10"``, read from its binary files) or an ImageFolder
tree.  Each epoch ends with a validation pass; the best weights go to ``best.safetensors`` (arch, class names and
preprocessing in the metadata, so ``--checkpoint`` alone rebuilds the model) and the latest weights, optimizer
state and progress to ``last.safetensors``, ``optimizer.safetensors`` and ``train_state.json`` so an interrupted
run resumes where it stopped.  Nothing is pickled.

The schedule is AdamW with a linear warm-up and a cosine decay computed from the global step, so resuming needs
only the step count; shuffling and augmentation draw from a generator seeded by (seed, epoch), so a resumed run
sees the same batches as an uninterrupted one.  Augmentation is light (random shifts, and mirror flips where the
classes allow it: not for digits) so that class evidence stays where the object is and CAMs stay localized.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .capture import CamlensError
from .models import IMAGENET_MEAN, IMAGENET_STD, Preprocess, build_model, save_checkpoint

BEST = "best.safetensors"
LAST = "last.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "train_state.json"
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
    train: Split
    val: Split
    classes: list[str]
    image_size: int
    flips: bool  # whether mirror images keep their class
    name: str


def load_data(
    data: str,
    *,
    image_size: int | None = None,
    seed: int = 0,
    num_train: int | None = None,
    num_val: int | None = None,
    val_fraction: float = 0.1,
    download: bool = False,
) -> TrainData:
    """``data``: ``"builtin"``, ``"stl10"`` / ``"stl10:ROOT"`` (binary files under ROOT, default ``./data``), or the
    path of an ImageFolder tree.  STL-10 validates on its test split; an ImageFolder tree on its ``val/`` folder or
    a held-out fraction; the built-in dataset on its ``val`` split (digit instances unseen in training)."""
    if data == "builtin":
        from .data.builtin import BuiltinDataset

        size = image_size or DEFAULT_SIZE["builtin"]
        splits = []
        for split, count in (("train", num_train), ("val", num_val)):
            ds = BuiltinDataset(split, num_images=count, image_size=size, seed=seed)  # type: ignore[arg-type]
            splits.append(Split(ds.tensors()["labels"], ds.uint8_images()))
        return TrainData(splits[0], splits[1], list(BuiltinDataset.classes), size, False, "builtin")
    if data == "stl10" or data.startswith("stl10:"):
        from .data.stl10 import STL10

        root = data.partition(":")[2] or "data"
        train_set = STL10(root, "train", download=download)
        val_set = STL10(root, "test")
        train_split = _subset(Split(train_set.labels, train_set.images), num_train, seed)
        val_split = _subset(Split(val_set.labels, val_set.images), num_val, seed)
        return TrainData(train_split, val_split, train_set.classes, image_size or DEFAULT_SIZE["stl10"], True, "stl10")
    from .data.folder import folder_splits

    size = image_size or 224
    train_folder, val_folder = folder_splits(data, size, val_fraction, seed)
    return TrainData(Split(train_folder.labels, dataset=train_folder), Split(val_folder.labels, dataset=val_folder),
                     train_folder.classes, size, True, str(Path(data).resolve()))


def _subset(split: Split, count: int | None, seed: int) -> Split:
    if count is None or count >= len(split):
        return split
    keep = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    return Split(split.labels[keep], split.images[keep])  # type: ignore[index]  # only in-memory splits are cut


def _batches(split: Split, batch_size: int, order: Tensor | None, workers: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(images float in [0, 1], labels) batches, in ``order`` (or dataset order)."""
    indices = order if order is not None else torch.arange(len(split))
    if split.images is not None:
        for start in range(0, len(indices), batch_size):
            idx = indices[start : start + batch_size]
            yield split.images[idx].float().div_(255), split.labels[idx]
        return
    loader = DataLoader(torch.utils.data.Subset(split.dataset, indices.tolist()), batch_size=batch_size,  # type: ignore[arg-type]  # no images: a dataset
                        num_workers=workers, collate_fn=_collate)
    yield from loader


def _collate(items: list[dict]) -> tuple[Tensor, Tensor]:
    return torch.stack([it["image"] for it in items]), torch.tensor([it["label"] for it in items])


def augment(images: Tensor, generator: torch.Generator, max_shift: int, flips: bool) -> Tensor:
    """Per-image random translation by up to ``max_shift`` pixels (edges replicated) and, if ``flips``, a
    horizontal mirror with probability 1/2."""
    b, _, h, w = images.shape
    if max_shift > 0:
        padded = F.pad(images, (max_shift,) * 4, mode="replicate")
        dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
        images = padded[torch.arange(b)[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols]
    if flips:
        mirror = torch.rand(b, generator=generator) < 0.5
        images = torch.where(mirror[:, None, None, None], images.flip(-1), images)
    return images


def learning_rate(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def replace_classifier(model: nn.Module, num_classes: int) -> nn.Module:
    """Give a pretrained model a fresh final Linear (or 1x1 conv) layer with ``num_classes`` outputs."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)):
            last = name, module
    if last is None:
        raise CamlensError(f"{type(model).__name__}: no final Linear or 1x1 conv layer to replace")
    name, old = last
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, 1, bias=old.bias is not None)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], new)
    return model


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, preprocess: Preprocess, *, batch_size: int = 256,
             device: str | torch.device = "cpu", workers: int = 0) -> tuple[float, Tensor]:
    """Top-1 accuracy and the (N, C) logits of ``model`` on a split."""
    model.eval()
    logits = [model(preprocess(x.to(device))).float().cpu() for x, _ in _batches(split, batch_size, None, workers)]
    out = torch.cat(logits)
    return float((out.argmax(1) == split.labels).float().mean()), out


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    train_acc: float
    val_acc: float
    lr: float
    seconds: float


@dataclass
class TrainResult:
    """What a run produced: the best checkpoint and its validation accuracy, per-epoch figures, and the model
    with the best weights loaded (eval mode)."""

    checkpoint: Path
    best_val_acc: float
    best_epoch: int
    history: list[EpochLog]
    model: nn.Module
    class_names: list[str]
    preprocess: Preprocess
    data: TrainData | None = field(default=None, repr=False)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able rest."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], rest: dict) -> None:
    state: dict[int, dict] = {}
    for flat, value in [*tensors.items(), *rest["scalars"].items()]:
        index, key = flat.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": rest["param_groups"]})


def _save_weights(path: Path, model: nn.Module, **meta: object) -> None:
    save_checkpoint(path, _contiguous(model), **meta)  # type: ignore[arg-type]


def _contiguous(model: nn.Module) -> nn.Module:
    return model.to(memory_format=torch.contiguous_format)


def _load_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path)))


def train(
    data: str = "builtin",
    *,
    arch: str = "gapnet",
    weights: str | None = None,
    out: str | Path = "camlens-train",
    epochs: int = 10,
    batch_size: int = 64,
    lr: float | None = None,
    weight_decay: float = 5e-4,
    image_size: int | None = None,
    num_train: int | None = None,
    num_val: int | None = None,
    val_fraction: float = 0.1,
    max_shift: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    resume: bool = False,
    download: bool = False,
    workers: int = 0,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    prepared: TrainData | None = None,
    model: nn.Module | None = None,
) -> TrainResult:
    """Train ``arch`` (``gapnet``, a torchvision name or ``timm:NAME``; ``weights`` to fine-tune pretrained
    weights, whose classifier is replaced) on ``data`` (see :func:`load_data`) and write checkpoints to ``out``.

    ``lr`` defaults to 3e-3 from scratch and 3e-4 when fine-tuning; ``max_shift`` (pixels of random translation)
    to 1/16 of the image size.  torch's global generator is seeded with ``seed`` before the model is built.
    ``resume=True`` continues the run recorded in ``out`` (same arch and data); ``prepared`` passes data
    already loaded with :func:`load_data`; ``model`` an already built network to train instead of
    ``build_model(arch)`` (``arch`` is still what the checkpoint records).
    """
    say = log or (lambda _: None)
    device = torch.device(device)
    torch.manual_seed(seed)
    td = prepared or load_data(data, image_size=image_size, seed=seed, num_train=num_train, num_val=num_val,
                               val_fraction=val_fraction, download=download)
    if len(td.train) == 0 or len(td.val) == 0:
        raise CamlensError(f"--data {data}: the training or validation split is empty")
    num_classes = len(td.classes)
    pretrained = weights not in (None, "none", "None")
    if model is not None:
        pass
    elif pretrained:
        model = replace_classifier(build_model(arch, None, weights), num_classes)
    else:
        model = build_model(arch, num_classes)
    model.to(device)
    preprocess = Preprocess((td.image_size, td.image_size), IMAGENET_MEAN, IMAGENET_STD)
    base_lr = lr if lr is not None else (3e-4 if pretrained else 3e-3)
    shift = max_shift if max_shift is not None else max(1, td.image_size // 16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=base_lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(td.train) / batch_size)
    total = epochs * steps_per_epoch
    warmup = max(1, min(steps_per_epoch, total // 10))

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"arch": arch, "weights": weights if pretrained else None, "data": td.name, "classes": td.classes,
              "image_size": td.image_size, "epochs": epochs, "batch_size": batch_size, "lr": base_lr,
              "weight_decay": weight_decay, "max_shift": shift, "seed": seed, "num_train": len(td.train)}
    meta = {"arch": arch, "class_names": td.classes, "preprocess": preprocess}
    history: list[EpochLog] = []
    start, best_acc, best_epoch = 0, -1.0, -1
    if resume:
        start, best_acc, best_epoch, history = _resume(out, config, model, optimizer)
        say(f"resuming {out} after epoch {start} (best val acc {best_acc:.2%} at epoch {best_epoch})")
    channels_last = device.type == "cpu" and any(isinstance(m, nn.Conv2d) for m in model.modules())
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    for epoch in range(start, epochs):
        began = time.perf_counter()
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(td.train), generator=g)
        model.to(memory_format=memory_format).train()
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(_batches(td.train, batch_size, order, workers), total=steps_per_epoch, disable=not progress,
                   desc=f"epoch {epoch + 1}/{epochs}", leave=False, unit="batch")
        for i, (images, labels) in enumerate(bar):
            step = epoch * steps_per_epoch + i
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total, base_lr, warmup)
            x = preprocess(augment(images, g, shift, td.flips)).to(device, memory_format=memory_format)
            labels = labels.to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.1%}")
        bar.close()
        val_acc, _ = evaluate(model, td.val, preprocess, device=device, workers=workers)
        entry = EpochLog(epoch + 1, loss_sum / seen, correct / seen, val_acc, optimizer.param_groups[0]["lr"],
                         time.perf_counter() - began)
        history.append(entry)
        improved = val_acc > best_acc
        if improved:
            best_acc, best_epoch = val_acc, epoch + 1
            _save_weights(out / BEST, model, **meta, extra={"epoch": best_epoch, "val_acc": val_acc, "data": td.name})
        _save_weights(out / LAST, model, **meta, extra={"epoch": epoch + 1, "val_acc": val_acc, "data": td.name})
        _save_state(out, config, optimizer, epoch + 1, best_acc, best_epoch, history)
        say(f"epoch {epoch + 1}/{epochs}  loss {entry.train_loss:.4f}  train acc {entry.train_acc:.2%}  "
            f"val acc {val_acc:.2%}{'  (best)' if improved else ''}  {entry.seconds:.1f}s")

    if not (out / BEST).is_file():
        raise CamlensError(f"{out}: no epoch finished, so there is no checkpoint (epochs={epochs})")
    _load_weights(model, out / BEST)
    model.to(memory_format=torch.contiguous_format).eval()
    say(f"best val acc {best_acc:.2%} at epoch {best_epoch}: {out / BEST}")
    return TrainResult(out / BEST, best_acc, best_epoch, history, model, list(td.classes), preprocess, td)


def _save_state(out: Path, config: dict, optimizer: torch.optim.Optimizer, epoch: int, best_acc: float,
                best_epoch: int, history: list[EpochLog]) -> None:
    from safetensors.torch import save_file

    tensors, rest = _optimizer_tensors(optimizer)
    save_file(tensors, str(out / OPTIMIZER))
    state = {"config": config, "epoch": epoch, "best_val_acc": best_acc, "best_epoch": best_epoch,
             "history": [asdict(h) for h in history], "optimizer": rest}
    tmp = out / (STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(out / STATE)


def _resume(out: Path, config: dict, model: nn.Module,
            optimizer: torch.optim.Optimizer) -> tuple[int, float, int, list[EpochLog]]:
    from safetensors.torch import load_file

    path = out / STATE
    if not path.is_file() or not (out / LAST).is_file() or not (out / OPTIMIZER).is_file():
        raise CamlensError(f"--resume: {out} holds no interrupted run ({STATE}, {LAST}, {OPTIMIZER}); drop --resume")
    state = json.loads(path.read_text())
    saved = state["config"]
    for key in ("arch", "data", "classes", "image_size", "batch_size", "seed", "num_train"):
        if saved.get(key) != config[key]:
            raise CamlensError(f"--resume: {out} was trained with {key}={saved.get(key)!r}, not {config[key]!r}; "
                               "use the same settings or another --out")
    _load_weights(model, out / LAST)
    _load_optimizer(optimizer, load_file(str(out / OPTIMIZER)), state["optimizer"])
    history = [EpochLog(**h) for h in state["history"]]
    return int(state["epoch"]), float(state["best_val_acc"]), int(state["best_epoch"]), history
