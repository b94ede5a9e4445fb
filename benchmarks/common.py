"""Shared helpers for the benchmarks: interleaved timing with medians, a header naming machine and versions, and
the results file the documentation's benchmark pages render (docs/hooks.py)."""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from camlens.hardware import UNITS, cpu_description, cpu_flags

RESULTS = Path(__file__).resolve().parent / "results"
LOAD_AT_START = os.getloadavg()[0]  # the machine is shared: results record its load when the benchmark began


def header(title: str) -> None:
    import torchvision

    cpu = platform.processor() or platform.machine()
    print(f"# {title}")
    print(
        f"# {platform.node()} | {cpu} | {os.cpu_count()} cpus | torch threads {torch.get_num_threads()} | "
        f"python {platform.python_version()} | torch {torch.__version__} | torchvision {torchvision.__version__}"
    )
    print(f"# cpu: {cpu_description()}")
    print(f"# load average (1 min): {os.getloadavg()[0]:.2f}")


def machine(device: str = "cpu") -> dict[str, Any]:
    """This machine as the results files describe it: CPU name, cores, the flags the fast paths depend on,
    torch's threads and versions, the 1-minute load average when the benchmark began and now, and the GPU when
    ``device`` is CUDA."""
    import torchvision

    described: dict[str, Any] = {
        "cpu": cpu_description().split(";")[0],
        "cores": os.cpu_count() or 0,
        "flags": [flag for flag in UNITS if flag in cpu_flags()],
        "torch threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "load average (1 min), start / end": f"{LOAD_AT_START:.1f} / {os.getloadavg()[0]:.1f}",
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        described["gpu"] = torch.cuda.get_device_name()
    return described


def write_result(
    name: str,
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    notes: str = "",
    *,
    device: str = "cpu",
    command: str | None = None,
) -> Path:
    """Write ``benchmarks/results/NAME.json`` for the documentation's benchmark pages: the title, the table, the
    command that made it (this process's command line unless given) and this machine.

    Args:
        name: the file's stem; a page shows it with ``<!-- benchmark: NAME -->``.
        title: what was measured, in one line.
        columns: the table's column headings.
        rows: the table's rows, one cell per column.
        notes: how to read the figures (conditions the machine description does not say).
        device: the device measured, to name the GPU in the machine description.
        command: the command to show; default ``python benchmarks/SCRIPT ARGS`` of this process.

    Returns:
        The path written.
    """
    if command is None:
        command = "python " + shlex.join(["benchmarks/" + Path(sys.argv[0]).name, *sys.argv[1:]])
    result = {
        "title": title,
        "command": command,
        "machine": machine(device),
        "columns": list(columns),
        "rows": [list(row) for row in rows],
        "notes": notes,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"# results written to {path}")
    return path


def rounded(value: Any, digits: int = 1) -> Any:
    """``value`` rounded for a results table; None (a metric not computed) stays None."""
    return None if value is None else round(float(value), digits)


def run_camlens(*args: str) -> float:
    """Run ``python -m camlens ARGS`` with this interpreter as a user would, fail loudly, return its wall time in
    seconds (start-up included)."""
    began = time.perf_counter()
    print("$ camlens " + shlex.join(args), flush=True)
    subprocess.run([sys.executable, "-m", "camlens", *args], check=True)
    return time.perf_counter() - began


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


def report(times: dict[str, list[float]], baseline: str) -> list[list[Any]]:
    """Print the median seconds of each, and the median of per-round ratios to ``baseline``; return them as rows
    ``[name, median s, ratio]`` for :func:`write_result`."""
    base = times[baseline]
    print(f"{'what':<34}{'median s':>10}{'ratio':>9}   (ratio = median over rounds of t / t[{baseline}])")
    rows: list[list[Any]] = []
    for name, ts in times.items():
        ratio = statistics.median(t / b for t, b in zip(ts, base))
        print(f"{name:<34}{statistics.median(ts):>10.4f}{ratio:>9.3f}")
        rows.append([name, round(statistics.median(ts), 4), round(ratio, 3)])
    return rows
