"""Training throughput of camlens's loop against a plain PyTorch loop over the same module, in one run.

For each CAM network (small widths, small inputs) both loops train a copy of the same initial weights for one
epoch over the same in-memory images, with the same optimizer (AdamW), memory format and (on CUDA) autocast;
camlens's loop is `camlens.training.train` as `camlens train` runs it (schedule, parameter groups, running
statistics, the TrainingMethod hooks, then one validation pass over 32 images and the checkpoint files), with
augmentation off so both loops do the same arithmetic.  Rounds are interleaved; the ratio is the median over
rounds of t(camlens) / t(plain).

    python benchmarks/bench_train.py [--archs gapnet gapify-resnet18 ...] [--size 64] [--images 512]
        [--batch 32] [--repeats 3] [--device cuda --channels-last --amp]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from common import header, sync
from camlens.models import IMAGENET_MEAN, IMAGENET_STD, build_model
from camlens.training import TrainConfig, TrainData, train
from camlens.training.data import Split

NETWORKS = {
    "gapnet": ("gapnet", {}),
    "gapify-resnet18": ("gapify", {"backbone": "resnet18", "cut": "layer2", "width": 64, "input_size": 64}),
    "vgg16-cam": ("vgg16-cam", {"width": 64}),
    "googlenet-cam": ("googlenet-cam", {"width": 64}),
    "wsol-vgg16": ("wsol-vgg16", {"width": 64}),
    "wsol-resnet50": ("wsol-resnet50", {}),
}


def plain_epoch(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int, lr: float,
                device: torch.device, channels_last: bool, amp: bool) -> None:
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


def camlens_epoch(model: torch.nn.Module, data: TrainData, batch: int, lr: float, device: str, channels_last: bool,
                  amp: bool, arch: str) -> None:
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig("builtin", arch=arch, out=out, epochs=1, batch_size=batch, lr=lr, augment="none",
                             device=device, channels_last=channels_last, amp=amp, progress=False)
        train(config, model=model, prepared=data, log=None)
    sync()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--archs", nargs="+", default=["gapnet", "gapify-resnet18", "vgg16-cam", "wsol-resnet50"],
                        choices=list(NETWORKS))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="default: on for CPU (camlens's default there), off for CUDA")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA)")
    args = parser.parse_args()
    device = torch.device(args.device)
    channels_last = args.channels_last if args.channels_last is not None else device.type == "cpu"
    header(f"training throughput, camlens loop vs plain loop: {args.images} images of {args.size} px, batch "
           f"{args.batch}, {args.device}, channels_last={channels_last}, amp={args.amp}")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images + 32, 3, args.size, args.size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (args.images + 32,), generator=g)
    data = TrainData(Split(labels[: args.images], images[: args.images]), Split(labels[args.images :], images[args.images :]),
                     [str(i) for i in range(10)], args.size, False, "random", "none")
    lr = 1e-3
    print(f"{'network':<18}{'plain img/s':>13}{'camlens img/s':>15}{'ratio t(camlens)/t(plain)':>28}")
    for name in args.archs:
        arch, options = NETWORKS[name]
        torch.manual_seed(0)
        initial = build_model(arch, 10, None, **options)
        times: dict[str, list[float]] = {"plain": [], "camlens": []}
        runs = {
            "plain": lambda: plain_epoch(copy.deepcopy(initial), images[: args.images], labels[: args.images],
                                         args.batch, lr, device, channels_last, args.amp),
            "camlens": lambda: camlens_epoch(copy.deepcopy(initial), data, args.batch, lr, args.device, channels_last,
                                             args.amp, arch),
        }
        for fn in runs.values():  # warm-up
            fn()
        for _ in range(args.repeats):
            for key, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
        ratio = statistics.median(c / p for c, p in zip(times["camlens"], times["plain"]))
        plain_rate = args.images / statistics.median(times["plain"])
        camlens_rate = args.images / statistics.median(times["camlens"])
        print(f"{name:<18}{plain_rate:>13.1f}{camlens_rate:>15.1f}{ratio:>28.3f}", flush=True)


if __name__ == "__main__":
    main()
