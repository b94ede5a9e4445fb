"""A torchrun worker for tests/test_training_distributed.py: trains TinyCam (no BatchNorm) on 44 seeded random
16 px images with SGD; ``--crash-after N`` makes rank 0 fail right after epoch N's checkpoint, as a crash would."""

from __future__ import annotations

import argparse

import torch

from _train_setup import TinyCam
from camlens import distributed
from camlens.training import TrainConfig, TrainData, train
from camlens.training.data import Split


class Crash(RuntimeError):
    pass


def run(out: str, epochs: int, resume: bool = False, crash_after: int | None = None) -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (52, 3, 16, 16), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (52,), generator=g)
    data = TrainData(
        Split(labels[:44], images[:44]),
        Split(labels[44:], images[44:]),
        [str(i) for i in range(10)],
        16,
        True,
        "random",
    )
    config = TrainConfig(
        out=out, epochs=epochs, batch_size=12, optimizer="sgd", lr=0.05, lr_decay_every=2, resume=resume, progress=False
    )

    def log(line: str) -> None:
        if crash_after is not None and line.startswith(f"epoch {crash_after}/"):
            raise Crash(f"stopped after epoch {crash_after}")

    torch.manual_seed(0)
    ctx = distributed.setup("cpu")
    try:
        train(config, model=TinyCam(), prepared=data, log=log, ctx=ctx)
    finally:
        distributed.teardown()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--crash-after", type=int)
    a = p.parse_args()
    run(a.out, a.epochs, a.resume, a.crash_after)
