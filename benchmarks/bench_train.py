"""Training throughput of camlens's loop against a plain PyTorch loop over the same module, in one run.

For each CAM network (small widths, small inputs) both loops train a copy of the same initial weights for one
epoch over the same in-memory images, with the same optimizer (AdamW), memory format and (on CUDA) autocast;
camlens's loop is `camlens.training.train` as `camlens train` runs it (schedule, parameter groups, running
statistics, the TrainingMethod hooks, then one validation pass over 32 images and the checkpoint files), with
augmentation off so both loops do the same arithmetic (a profile of both shows the same kernels, plus the one
validation pass).  Rounds are interleaved, the order alternating so that a drift in machine speed hits both
loops alike; each ratio is the median over rounds of t(camlens) / t(plain), with its quartiles: of camlens's
training steps alone, and of its whole run, whose end-of-epoch part (validation, checkpoint files) is a fixed
cost per epoch, so its share shrinks as epochs grow (``--images``).

Allocator: with glibc's default settings every step returns its large buffers to the kernel and faults them in
again (a million page faults an epoch), and identical epochs then differ by up to 2x on a 2-core VM.  The
benchmark runs both loops after :func:`camlens.hardware.retain_freed_memory`, as ``camlens train`` does.

    python benchmarks/bench_train.py [--archs gapnet gapify-resnet18 ...] [--size 64] [--images 2048]
        [--batch 32] [--repeats 8] [--device cuda --channels-last --amp]

Writes benchmarks/results/train_loop.json (``common.write_result``; ``train_loop_cuda`` on a GPU, ``_amp`` added
with ``--amp``).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from camlens.hardware import retain_freed_memory
from camlens.models import IMAGENET_MEAN, IMAGENET_STD, build_model
from camlens.training import TrainConfig, TrainData, train
from camlens.training.data import Split
from common import header, sync, write_result

NETWORKS = {
    "gapnet": ("gapnet", {}),
    "gapify-resnet18": ("gapify", {"backbone": "resnet18", "cut": "layer2", "width": 64, "input_size": 64}),
    "vgg16-cam": ("vgg16-cam", {"width": 64}),
    "googlenet-cam": ("googlenet-cam", {"width": 64}),
    "wsol-vgg16": ("wsol-vgg16", {"width": 64}),
    "wsol-resnet50": ("wsol-resnet50", {}),
}


def plain_epoch(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch: int,
    lr: float,
    device: torch.device,
    channels_last: bool,
    amp: bool,
) -> None:
    """What a user writes by hand: shuffle, normalize, forward, cross-entropy, backward, AdamW step."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=fmt).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    order = torch.randperm(len(labels))
    for idx in order.split(batch):
        x = ((images[idx].to(device).float() / 255 - mean) / std).contiguous(memory_format=fmt)
        y = labels[idx].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync()


def camlens_epoch(
    model: torch.nn.Module,
    data: TrainData,
    batch: int,
    lr: float,
    device: str,
    channels_last: bool,
    amp: bool,
    arch: str,
) -> float:
    """One epoch of ``camlens.training.train``; returns the seconds its training steps took (``train_seconds``)."""
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            "builtin",
            arch=arch,
            out=out,
            epochs=1,
            batch_size=batch,
            lr=lr,
            augment="none",
            device=device,
            channels_last=channels_last,
            amp=amp,
            progress=False,
        )
        result = train(config, model=model, prepared=data, log=None)
    sync()
    return float(result.history[-1].train_seconds or 0.0)


def spread(ratios: list[float]) -> str:
    """The median of ``ratios`` with its first and third quartiles: ``1.020 [0.988, 1.057]``."""
    q1, q2, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return f"{q2:.3f} [{q1:.3f}, {q3:.3f}]"


def main() -> None:
    retained = retain_freed_memory()
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--archs",
        nargs="+",
        default=["gapnet", "gapify-resnet18", "vgg16-cam", "wsol-resnet50"],
        choices=list(NETWORKS),
    )
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default: on for CPU (camlens's default there), off for CUDA",
    )
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA)")
    args = parser.parse_args()
    device = torch.device(args.device)
    channels_last = args.channels_last if args.channels_last is not None else device.type == "cpu"
    header(
        f"training throughput, camlens loop vs plain loop: {args.images} images of {args.size} px, batch "
        f"{args.batch}, {args.device}, channels_last={channels_last}, amp={args.amp}"
    )
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images + 32, 3, args.size, args.size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (args.images + 32,), generator=g)
    data = TrainData(
        Split(labels[: args.images], images[: args.images]),
        Split(labels[args.images :], images[args.images :]),
        [str(i) for i in range(10)],
        args.size,
        False,
        "random",
        "none",
    )
    lr = 1e-3
    print(f"# freed memory retained (glibc mallopt): {retained}")
    print(
        f"# ratios: medians over {args.repeats} rounds of t(camlens) / t(plain) [first quartile, third quartile]; "
        "steps: camlens's training steps alone (its train_seconds); run: the whole train() call (set-up, the "
        "steps, the validation pass, the checkpoint files, loading the best weights back); end of epoch: "
        "run - steps, in seconds"
    )
    print(
        f"{'network':<18}{'plain img/s':>12}{'camlens img/s':>14}{'steps ratio':>24}{'run ratio':>24}"
        f"{'run CPU-time ratio':>24}{'end of epoch s':>16}"
    )
    rows = []
    for name in args.archs:
        arch, options = NETWORKS[name]
        torch.manual_seed(0)
        initial = build_model(arch, 10, None, **options)
        times: dict[str, list[float]] = {"plain": [], "camlens": [], "steps": []}
        cpu: dict[str, list[float]] = {"plain": [], "camlens": []}
        runs = {  # the lambdas run within this iteration, so they see its `initial` and `arch`
            "plain": lambda: plain_epoch(
                copy.deepcopy(initial),  # noqa: B023
                images[: args.images],
                labels[: args.images],
                args.batch,
                lr,
                device,
                channels_last,
                args.amp,
            ),
            "camlens": lambda: camlens_epoch(
                copy.deepcopy(initial),  # noqa: B023
                data,
                args.batch,
                lr,
                args.device,
                channels_last,
                args.amp,
                arch,  # noqa: B023
            ),
        }
        for fn in runs.values():  # warm-up
            fn()
        for round_ in range(args.repeats):
            for key in ["plain", "camlens"] if round_ % 2 == 0 else ["camlens", "plain"]:
                start, start_cpu = time.perf_counter(), time.process_time()
                steps = runs[key]()
                times[key].append(time.perf_counter() - start)
                cpu[key].append(time.process_time() - start_cpu)
                if key == "camlens":
                    times["steps"].append(steps)

        plain = times["plain"]
        end_of_epoch = statistics.median(t - s for t, s in zip(times["camlens"], times["steps"]))
        described = ", ".join(f"{key} {value}" for key, value in options.items() if key != "input_size")
        rows.append(
            [
                f"{name} ({described})" if described else name,
                round(args.images / statistics.median(plain), 1),
                round(args.images / statistics.median(times["camlens"]), 1),
                spread([s / p for s, p in zip(times["steps"], plain)]),
                spread([c / p for c, p in zip(times["camlens"], plain)]),
                spread([c / p for c, p in zip(cpu["camlens"], cpu["plain"])]),
                round(end_of_epoch, 3),
            ]
        )
        print(f"{name:<18}" + "".join(f"{cell:>{w}}" for cell, w in zip(rows[-1][1:], (12, 14, 24, 24, 24, 16))))
    reduced = [
        f"--{key} {' '.join(map(str, default)) if isinstance(default, list) else default}"
        for key in ("archs", "images", "repeats")
        if getattr(args, key) != (default := parser.get_default(key))
    ]
    write_result(
        "train_loop" + ("" if device.type == "cpu" else f"_{device.type}") + ("_amp" if args.amp else ""),
        f"One epoch of {args.images} images, camlens's train() against a plain PyTorch loop ({args.size} px, batch "
        f"{args.batch}, {device.type})",
        [
            "network",
            "plain img/s",
            "camlens img/s",
            "steps ratio",
            "run ratio",
            "run CPU-time ratio",
            "end of epoch s",
        ],
        rows,
        notes=(
            f"Ratios are medians over {args.repeats} rounds of t(camlens) / t(plain) with their first and third "
            "quartiles, after a warm-up epoch of each; the order alternates between rounds. steps: camlens's "
            "training steps alone (EpochLog.train_seconds); run: the whole train() call (set-up, steps, one "
            "validation pass over 32 images, the checkpoint files); end of epoch: run minus steps (median). Random "
            f"uint8 images, 10 classes, AdamW, augmentation off, channels_last={channels_last}, amp={args.amp}, the "
            f"same initial weights for both loops; freed memory retained (glibc mallopt): {retained}."
            + (f" A smaller run than the script's defaults ({', '.join(reduced)})." if reduced else "")
        ),
        device=device.type,
    )


if __name__ == "__main__":
    main()
