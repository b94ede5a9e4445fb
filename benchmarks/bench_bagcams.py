"""BagCAMs' cost as a ratio to one forward pass: forward, CAM, Grad-CAM and BagCAMs at layer4 and layer3 (the
authors' ResNet50 setting), measured in one run with interleaved rounds.

    python benchmarks/bench_bagcams.py                     # resnet50, 224 px, batch 8, CPU
    python benchmarks/bench_bagcams.py --device cuda --batch 64

Writes benchmarks/results/bagcams_cost.json.
"""

from __future__ import annotations

import argparse

import torch
import torchvision

from camlens import CAM, BagCAMs, GradCAM
from common import header, interleaved, report, write_result


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
    rows = report(times, "forward")
    for e in explainers.values():
        e.close()
    write_result(
        "bagcams_cost",
        f"BagCAMs' cost: resnet50, {args.size} px, batch {args.batch}, {args.device}",
        ["what", "median s per batch", "x one forward pass"],
        rows,
        f"Random weights. Median over {args.rounds} interleaved rounds; ratio = median over rounds of t / "
        "t[forward] (forward without gradients).",
        device=args.device,
    )


if __name__ == "__main__":
    main()
