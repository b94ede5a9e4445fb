"""BagCAMs' cost as a ratio to one forward pass: forward, CAM, Grad-CAM and BagCAMs at layer4 and layer3 (the
authors' ResNet50 setting), measured in one run with interleaved rounds.

    PYTHONPATH=src python benchmarks/bench_bagcams.py                     # resnet50, 224 px, batch 8, CPU
    PYTHONPATH=src python benchmarks/bench_bagcams.py --device cuda --batch 64

Writes benchmarks/results/bagcams_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path

import torch
import torchvision

from camlens import CAM, BagCAMs, GradCAM
from camlens.hardware import cpu_description
from common import header, interleaved


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    header(f"BagCAMs vs one forward pass: resnet50 (random weights), {args.size} px, batch {args.batch}, {device}")
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval().to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(device)
    explainers = {
        "CAM (layer4)": CAM(model),
        "Grad-CAM (layer4)": GradCAM(model, "layer4"),
        "BagCAMs (layer4)": BagCAMs(model),
        "BagCAMs (layer3)": BagCAMs(model, "layer3"),
    }

    def forward() -> None:
        with torch.no_grad():
            model(x)

    calls = {"forward": forward, **{name: (lambda e=e: e(x)) for name, e in explainers.items()}}
    times = interleaved(calls, args.rounds, warmup=1)
    base = times["forward"]
    rows = []
    print(f"{'what':<20}{'median s':>10}{'x forward':>11}")
    for name, ts in times.items():
        ratio = statistics.median(t / b for t, b in zip(ts, base))
        print(f"{name:<20}{statistics.median(ts):>10.3f}{ratio:>11.2f}")
        rows.append([name, round(statistics.median(ts), 3), round(ratio, 2)])
    for e in explainers.values():
        e.close()
    result = {
        "title": f"BagCAMs' cost: resnet50, {args.size} px, batch {args.batch}, {args.device}",
        "command": "PYTHONPATH=src python " + shlex.join(["benchmarks/bench_bagcams.py", *sys.argv[1:]]),
        "machine": {
            "cpu": cpu_description().split(", flags:")[0],
            "cores": os.cpu_count() or 0,
            "flags": [],
            "torch threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
        },
        "columns": ["what", "median s per batch", "x one forward pass"],
        "rows": rows,
        "notes": f"Median over {args.rounds} interleaved rounds; ratio = median over rounds of t / t[forward] "
        "(forward without gradients).",
    }
    out = Path(__file__).resolve().parent / "results" / "bagcams_cost.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"# results written to {out}")


if __name__ == "__main__":
    main()
