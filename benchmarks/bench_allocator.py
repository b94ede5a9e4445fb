"""Forward passes of EfficientNet-Lite0 (batch 64, 224 px) with glibc's default allocator settings or after
:func:`camlens.hardware.retain_freed_memory`: wall time, CPU time in user and kernel mode, and page faults.

    python benchmarks/bench_allocator.py [--passes 5] [--batch 64] [--rounds 3]

The allocator's settings belong to the process (``mallopt`` cannot be undone), so each measurement is a fresh
``python`` process, one per setting per round, the two alternating so that a drift in machine speed hits both
alike; each process builds the model, runs one untimed pass, then times ``--passes`` passes (start-up and model
loading excluded).  The ratios are medians over rounds of t(retain) / t(defaults).  The model has its ImageNet
weights where ``camlens[real]`` is installed, otherwise random weights (the same compute).  Writes
benchmarks/results/allocator.json (``common.write_result``).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from camlens.capture import CamlensError
from camlens.hardware import retain_freed_memory
from camlens.models import build_model
from common import header, write_result

SETTINGS = {"defaults": "glibc defaults", "retain": "retain_freed_memory()"}


def measure(passes: int, batch: int) -> dict[str, float | int | str]:
    """Time ``passes`` forward passes in this process: wall, user and kernel CPU seconds, minor page faults."""
    try:
        model, weights = build_model("efficientnet_lite0", None, "imagenet").eval(), "ImageNet weights"
    except CamlensError:  # without camlens[real]: the same compute with random weights
        model, weights = build_model("efficientnet_lite0", None, None).eval(), "random weights"
    x = torch.rand(batch, 3, 224, 224)
    with torch.no_grad():
        model(x)
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(passes):
            model(x)
        after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - start
    return {
        "wall": wall,
        "user": after.ru_utime - before.ru_utime,
        "kernel": after.ru_stime - before.ru_stime,
        "faults": after.ru_minflt - before.ru_minflt,
        "weights": weights,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--measure", choices=list(SETTINGS), help=argparse.SUPPRESS)  # one child process
    args = parser.parse_args()
    if args.measure:
        retained = retain_freed_memory() if args.measure == "retain" else False
        print(json.dumps({**measure(args.passes, args.batch), "retained": retained}))
        return
    header(f"allocator: {args.passes} forward passes, efficientnet_lite0, batch {args.batch}, 224 px, fresh processes")
    runs: dict[str, list[dict]] = {setting: [] for setting in SETTINGS}
    for round_ in range(args.rounds):
        for setting in list(SETTINGS) if round_ % 2 == 0 else list(SETTINGS)[::-1]:
            cmd = [sys.executable, __file__, "--measure", setting, "--passes", str(args.passes)]
            proc = subprocess.run([*cmd, "--batch", str(args.batch)], capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"the {setting} measurement failed:\n{proc.stderr[-2000:]}")
            runs[setting].append(json.loads(proc.stdout.splitlines()[-1]))
            r = runs[setting][-1]
            print(
                f"round {round_}  {SETTINGS[setting]:<22} wall {r['wall']:6.2f} s  user {r['user']:6.2f} s  "
                f"kernel {r['kernel']:6.2f} s  page faults {r['faults']}",
                flush=True,
            )
    if not runs["retain"][0]["retained"]:
        sys.exit("retain_freed_memory() had no effect here (not glibc?): nothing to compare")

    def median(setting: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[setting])

    def ratio(key: str) -> float:
        return statistics.median(
            r[key] / d[key] if d[key] else float("nan") for r, d in zip(runs["retain"], runs["defaults"])
        )

    rows = [
        [
            label,
            round(median(setting, "wall"), 2),
            round(median(setting, "user"), 2),
            round(median(setting, "kernel"), 2),
            int(median(setting, "faults")),
        ]
        for setting, label in SETTINGS.items()
    ]
    rows.append(
        [
            "retain / defaults (median of per-round ratios)",
            *(round(ratio(key), 3) for key in ("wall", "user", "kernel")),
            round(ratio("faults"), 4),
        ]
    )
    print(f"{'allocator':<48}{'wall s':>9}{'user s':>9}{'kernel s':>10}{'page faults':>13}")
    for row in rows:
        print(f"{row[0]:<48}" + "".join(f"{'-' if c is None else c:>{w}}" for c, w in zip(row[1:], (9, 9, 10, 13))))
    write_result(
        "allocator",
        f"{args.passes} forward passes of EfficientNet-Lite0, batch {args.batch}, 224 px: glibc's defaults against "
        "retain_freed_memory",
        ["allocator", "wall s", "user CPU s", "kernel CPU s", "page faults"],
        rows,
        notes=(
            f"Medians over {args.rounds} rounds; each measurement a fresh process (the two settings alternating), one "
            f"untimed pass, then {args.passes} timed passes (start-up and model loading excluded); "
            f"{runs['defaults'][0]['weights']}. Page faults: minor faults during the timed passes. camlens's "
            "command line calls retain_freed_memory() at start."
        ),
    )


if __name__ == "__main__":
    main()
