"""The training loop for CAM networks: one loop, whose step calls the hooks of a
:class:`camlens.training.wsol.TrainingMethod` (vanilla CAM by default), on one process or under torchrun.

Each epoch trains on the shuffled training split, measures validation accuracy and, when selecting by
localization, the selection metric on a boxed split (:mod:`camlens.training.select`); the best epoch's weights go
to ``best.safetensors`` and every epoch's to ``last.safetensors`` and ``resume.safetensors``
(:mod:`camlens.training.checkpoint`), so an interrupted run resumes exactly where it stopped: the schedule
depends only on the global step, and shuffling, augmentation and the method's draws come from generators seeded
by (seed, epoch).

Under torchrun (DistributedDataParallel, gloo on CPU, nccl on CUDA) every global batch is the batch a single
process would take; each rank reads and computes its contiguous share, and its loss is weighted by its share of
the global batch so that DDP's gradient average is the single process's gradient (exactly so in real numbers;
in floats, up to the order of the sums).  Layers that normalize with batch statistics (BatchNorm) see only their
rank's share, as usual with DDP.  Rank 0 writes the files; validation is sharded and its counts summed.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import distributed
from ..capture import find_classifier, output_logits
from ..distributed import Context, barrier, shard_batches, sum_tensors
from ..errors import CamlensError
from ..models import IMAGENET_MEAN, IMAGENET_STD, Preprocess, build_model
from ..networks import NETWORKS, new_layer_names
from ..reference import REFERENCE, reference_arch_options
from .checkpoint import (
    BEST,
    LAST,
    RESUME,
    STATE,
    keep_as_best,
    load_optimizer,
    load_resume,
    save_resume,
    save_weights,
    weights,
)
from .config import TrainConfig
from .data import Augmentation, Split, TrainData, config_data, global_batches, load_batches, local_part
from .optim import Schedule, build_optimizer, training_groups
from .select import localization_metrics, selection_record, selection_samples
from .wsol.base import TrainingMethod

# what a resumed run must share with the run it continues
RUN_IDENTITY = (
    "arch",
    "data",
    "classes",
    "image_size",
    "batch_size",
    "seed",
    "num_train",
    "optimizer",
    "augment",
    "select_by",
    "method",
)


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    train_acc: float
    val_acc: float
    lr: float
    seconds: float  # the whole epoch: training, validation, selection, checkpoint files
    score: float | None = None  # the selection metric, when it is not the accuracy
    train_seconds: float | None = None  # the training steps alone


@dataclass
class TrainResult:
    """What a run produced: the best checkpoint by ``select_by`` (``best_score``; ``best_val_acc`` is that
    epoch's validation accuracy), per-epoch figures, the selection record written into the checkpoint, and the
    model with the best weights loaded (eval mode)."""

    checkpoint: Path
    best_val_acc: float
    best_epoch: int
    history: list[EpochLog]
    model: nn.Module
    class_names: list[str]
    preprocess: Preprocess
    data: TrainData | None = field(default=None, repr=False)
    select_by: str = "accuracy"
    best_score: float = float("nan")
    selection: dict[str, Any] | None = None


def replace_classifier(model: nn.Module, num_classes: int) -> tuple[nn.Module, str]:
    """Give a pretrained model a fresh classifier (:func:`camlens.capture.find_classifier`: a Linear, or a 1x1
    convolution of any rank) with ``num_classes`` outputs; returns the model and the replaced layer's name."""
    name, old = find_classifier(model)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = type(old)(old.in_channels, num_classes, 1, bias=old.bias is not None)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], new)
    return model, name


def build_network(config: TrainConfig, num_classes: int) -> tuple[nn.Module, tuple[str, ...]]:
    """``config.arch`` with ``num_classes`` outputs and the names of its new layers: a CAM network (its backbone
    from ``weights``, its head new), or a classifier from scratch, or from pretrained ``weights`` with the
    classifier replaced (a new layer too)."""
    if config.arch in NETWORKS:
        model = build_model(config.arch, num_classes, config.weights, **config.arch_options)
        return model, new_layer_names(model)
    if config.arch_options:
        raise CamlensError(f"{config.arch} takes no builder options (given: {', '.join(config.arch_options)})")
    if not config.pretrained:
        model = build_model(config.arch, num_classes)
        return model, new_layer_names(model)
    model, replaced = replace_classifier(build_model(config.arch, None, config.weights), num_classes)
    return model, tuple(dict.fromkeys((*new_layer_names(model), replaced)))


@torch.no_grad()
def accuracy(
    model: nn.Module, split: Split, preprocess: Preprocess, ctx: Context, *, workers: int = 0, batch_size: int = 256
) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on a split; under torchrun each rank scores its batches and the
    counts are summed."""
    batches = [torch.tensor(b) for _, b in shard_batches(len(split), batch_size, ctx)]
    correct = torch.zeros((), dtype=torch.int64)
    for x, labels in load_batches(split, batches, workers):
        logits = output_logits(model(preprocess(x.to(ctx.device))))
        correct += int((logits.argmax(1).cpu() == labels).sum())
    total = sum_tensors({"correct": correct}, ctx)["correct"]
    return float(total) / len(split)


def train(
    config: TrainConfig | None = None,
    *,
    method: TrainingMethod | None = None,
    prepared: TrainData | None = None,
    model: nn.Module | None = None,
    log: Callable[[str], None] | None = print,
    ctx: Context | None = None,
) -> TrainResult:
    """Train as ``config`` says and write the checkpoints to ``config.out``.

    ``method``: the training method (default vanilla CAM); ``prepared``: data already loaded with
    :func:`camlens.training.data.load_data`; ``model``: a network to train instead of building ``config.arch``
    (the checkpoint still records ``config.arch``); ``ctx``: the torchrun context (default: joined from the
    environment).  torch's global generator is seeded with ``config.seed`` before the model is built.
    """
    config = config or TrainConfig()
    method = method or TrainingMethod()
    if config.protocol == REFERENCE:
        method = method.reference()
        config = dataclasses.replace(
            config, arch_options={**reference_arch_options(config.arch, method.name), **config.arch_options}
        )
    ctx = ctx or distributed.setup(config.device)
    device = ctx.device
    say = (log or (lambda _: None)) if ctx.is_main else (lambda _: None)
    if config.amp and device.type != "cuda":
        raise CamlensError(f"amp (bfloat16 autocast) is for CUDA devices, not {device}")
    check_out(Path(config.out), config.resume, config.overwrite)
    torch.manual_seed(config.seed)
    td = prepared or config_data(config)
    if len(td.train) == 0 or len(td.val) == 0:
        raise CamlensError(f"--data {config.data}: the training or validation split is empty")
    remainder = len(td.train) % config.batch_size
    if ctx.distributed and 0 < remainder < ctx.world_size:
        raise CamlensError(
            f"the last batch holds {remainder} image(s) ({len(td.train)} % {config.batch_size}), fewer "
            f"than the {ctx.world_size} ranks; change --batch-size or --num-train"
        )
    samples = selection_samples(config, td)
    if model is not None:
        new_layers = new_layer_names(model)
    else:
        model, new_layers = build_network(config, len(td.classes))
    new_layers = tuple(dict.fromkeys((*new_layers, *method.attach(model))))
    model.to(device)
    preprocess = Preprocess((td.image_size, td.image_size), IMAGENET_MEAN, IMAGENET_STD)
    shift = config.max_shift if config.max_shift is not None else max(1, td.image_size // 16)
    augment = Augmentation(td.augment, td.image_size, shift, td.resize_size, td.flips)
    optimizer = build_optimizer(config, training_groups(config, model, new_layers))
    steps = math.ceil(len(td.train) / config.batch_size)
    schedule = Schedule(config, steps)

    out = Path(config.out)
    run = {
        "arch": config.arch,
        "data": td.name,
        "classes": td.classes,
        "image_size": td.image_size,
        "batch_size": config.batch_size,
        "seed": config.seed,
        "num_train": len(td.train),
        "optimizer": config.optimizer,
        "augment": td.augment,
        "select_by": config.select_by,
        "method": method.config(),
    }
    arch_options = getattr(model, "arch_options", None)
    common = {"data": td.name, "wsol_method": method.config(), "new_layers": list(new_layers)}
    split_name = config.val_data or (f"{td.name}:val" if samples is not None else None)
    start, best_score, best_epoch, best_acc = 0, -math.inf, -1, -1.0
    history: list[EpochLog] = []
    selection: dict[str, Any] | None = None
    if config.resume:
        start, best_score, best_epoch, best_acc, history, selection = _resume(out, run, model, optimizer)
        say(f"resuming {out} after epoch {start} (best {config.select_by} {best_score:.4g} at epoch {best_epoch})")
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    channels_last = config.channels_last if config.channels_last is not None else device.type == "cpu" and has_conv
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    net: nn.Module = model
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    for epoch in range(start, config.epochs):
        began = time.perf_counter()
        g = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        method_generator = torch.Generator().manual_seed((config.seed * 100_003 + epoch) * 1_000_003 + ctx.rank)
        batches = global_batches(torch.randperm(len(td.train), generator=g), config.batch_size)
        params = [augment.draw(g, len(b)) for b in batches]
        mine = [local_part(b, ctx) for b in batches]
        net.train()
        method.start_epoch(epoch)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        show = config.progress and ctx.is_main
        bar = tqdm(
            load_batches(td.train, mine, config.workers),
            total=len(batches),
            disable=not show,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            leave=False,
            unit="batch",
        )
        lr = 0.0
        for i, (images, labels) in enumerate(bar):
            lr = schedule.apply(optimizer, epoch * steps + i)
            x = augment(images.to(device, non_blocking=True), local_part(params[i], ctx))
            x = preprocess(x).contiguous(memory_format=memory_format)
            labels = labels.to(device, non_blocking=True)
            x, targets = method.batch(x, labels, method_generator)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp):
                loss, logits = method.loss(net, x, targets)
            share = len(labels) * ctx.world_size / len(batches[i])  # 1 on one process
            optimizer.zero_grad(set_to_none=True)
            (loss * share if share != 1 else loss).backward()
            optimizer.step()
            loss_sum += loss.detach().double() * len(labels)
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += len(labels)
            if show and (i % 10 == 0 or i == len(batches) - 1):
                bar.set_postfix(loss=f"{float(loss_sum) / seen:.3f}", acc=f"{int(correct) / seen:.1%}", refresh=False)
        bar.close()
        train_seconds = time.perf_counter() - began
        totals = sum_tensors(
            {"loss": loss_sum.cpu(), "correct": correct.cpu(), "seen": torch.tensor(seen, dtype=torch.int64)}, ctx
        )
        model.eval()
        val_acc = accuracy(model, td.val, preprocess, ctx, workers=config.workers)
        record = None
        if samples is not None:
            metrics = localization_metrics(
                model, method, samples, preprocess, td.classes, ctx, protocol=config.protocol
            )
            record = selection_record(config.select_by, metrics, epoch + 1, str(split_name))
        score = val_acc if record is None else record["score"]
        seen_all = int(totals["seen"])
        entry = EpochLog(
            epoch + 1,
            float(totals["loss"]) / seen_all,
            int(totals["correct"]) / seen_all,
            val_acc,
            lr,
            time.perf_counter() - began,
            None if record is None else score,
            train_seconds,
        )
        history.append(entry)
        improved = score > best_score
        if improved:
            best_score, best_epoch, best_acc, selection = score, epoch + 1, val_acc, record
        if ctx.is_main:
            state = weights(model)
            info = {**common, "epoch": epoch + 1, "val_acc": val_acc, "selection": record}
            save_weights(
                out / LAST,
                state,
                arch=config.arch,
                class_names=td.classes,
                preprocess=preprocess,
                arch_options=arch_options,
                extra=info,
            )
            if improved:
                keep_as_best(out / LAST, out / BEST)
            save_resume(
                out,
                state,
                optimizer,
                {
                    "run": run,
                    "config": config.to_json(),
                    "epoch": epoch + 1,
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                    "best_val_acc": best_acc,
                    "selection": selection,
                    "history": [asdict(h) for h in history],
                },
            )
        barrier(ctx)
        scored = "" if record is None else f"  {config.select_by} {score:.2f}"
        say(
            f"epoch {epoch + 1}/{config.epochs}  loss {entry.train_loss:.4f}  train acc {entry.train_acc:.2%}  "
            f"val acc {val_acc:.2%}{scored}{'  (best)' if improved else ''}  {entry.seconds:.1f}s"
        )

    if not (out / BEST).is_file():
        raise CamlensError(f"{out}: no epoch finished, so there is no checkpoint (epochs={config.epochs})")
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(out / BEST)))
    model.to(memory_format=torch.contiguous_format).eval()
    say(f"best {config.select_by} {best_score:.4g} at epoch {best_epoch} (val acc {best_acc:.2%}): {out / BEST}")
    return TrainResult(
        out / BEST,
        best_acc,
        best_epoch,
        history,
        model,
        list(td.classes),
        preprocess,
        td,
        config.select_by,
        best_score,
        selection,
    )


def check_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run in ``out`` when it holds one (its checkpoints would be replaced epoch by epoch and
    it could no longer be resumed), unless ``resume`` or ``overwrite``."""
    held = [name for name in (RESUME, BEST, LAST, STATE) if (out / name).exists()]
    if held and not resume and not overwrite:
        raise CamlensError(
            f"{out} holds a training run ({', '.join(held)}): add --resume to continue it, or "
            "--overwrite to replace it with a new run (or choose another --out)"
        )


def _resume(
    out: Path, run: dict, model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[int, float, int, float, list[EpochLog], dict | None]:
    model_state, optimizer_state, state = load_resume(out)
    saved = state["run"]
    for key in RUN_IDENTITY:
        if saved.get(key) != run[key]:
            raise CamlensError(
                f"--resume: {out} was trained with {key}={saved.get(key)!r}, not {run[key]!r}; "
                "use the same settings or another --out"
            )
    model.load_state_dict(model_state)
    load_optimizer(optimizer, optimizer_state, state["optimizer"])
    history = [EpochLog(**h) for h in state["history"]]
    return (
        int(state["epoch"]),
        float(state["best_score"]),
        int(state["best_epoch"]),
        float(state["best_val_acc"]),
        history,
        state.get("selection"),
    )
