"""Shared helpers for the benchmarks: interleaved timing with medians, and a header naming machine and versions."""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable

import torch

from camlens.hardware import cpu_description


def header(title: str) -> None:
    import torchvision

    cpu = platform.processor() or platform.machine()
    print(f"# {title}")
    print(f"# {platform.node()} | {cpu} | {os.cpu_count()} cpus | torch threads {torch.get_num_threads()} | "
          f"python {platform.python_version()} | torch {torch.__version__} | torchvision {torchvision.__version__}")
    print(f"# cpu: {cpu_description()}")


def sync() -> None:
    """Wait for queued GPU work, so host clocks time it."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Run every function once per round, in turn, so drifts in machine speed hit all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def report(times: dict[str, list[float]], baseline: str) -> None:
    """Median seconds of each, and the median of per-round ratios to ``baseline``."""
    base = times[baseline]
    print(f"{'what':<34}{'median s':>10}{'ratio':>9}   (ratio = median over rounds of t / t[{baseline}])")
    for name, ts in times.items():
        ratio = statistics.median(t / b for t, b in zip(ts, base))
        print(f"{name:<34}{statistics.median(ts):>10.4f}{ratio:>9.3f}")
