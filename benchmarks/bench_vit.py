"""Speed of the methods on a vision transformer, as ratios to one plain forward pass, measured side by side in one run.

1. timm ``vit_small_patch16_224`` (random weights, batch 8, 224 px): a plain forward pass under torch.no_grad(),
   then attention rollout, Chefer et al.'s GAE (all 12 blocks), LeGrad (its default, the last 2 blocks, and all
   12), Grad-CAM and Eigen-CAM on the tokens of the last block's first norm (``blocks.11.norm1``).  CAM does not
   apply: the model reads its class token, it has no GAP + linear head.
2. torchvision ``vit_b_16`` (random weights, batch 8, 224 px): camlens's LeGrad against torchcam 0.5.0's ``LeGrad``
   on the same blocks (the last 2), both explaining the top class, with the max difference of their raw maps.

Timings are interleaved (every callable once per round, in turn) and each ratio is the median over rounds of
t / t[forward].  Writes benchmarks/results/vit.json.

    python benchmarks/bench_vit.py                     # a few minutes on 2 cores
    python benchmarks/bench_vit.py --device cuda       # the same ratios on a GPU (benchmarks/gpu.sh)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import timm
import torch
import torchvision
from torchcam import methods as tc

import camlens
from camlens.hardware import UNITS, cpu_description, cpu_flags

sys.path.insert(0, str(Path(__file__).parent))
from common import header, interleaved, report  # noqa: E402


def ratios(times: dict[str, list[float]], baseline: str) -> dict[str, tuple[float, float]]:
    base = times[baseline]
    return {
        name: (statistics.median(ts), statistics.median(t / b for t, b in zip(ts, base))) for name, ts in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "vit.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    header(f"vision transformer methods, batch {args.batch}, 224 px, {device}")
    load_before = os.getloadavg()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 224, 224, device=device)

    small = timm.create_model("vit_small_patch16_224", pretrained=False).eval().to(device)
    grid = lambda t: camlens.tokens_to_grid(t, prefix_tokens=small.num_prefix_tokens)  # noqa: E731
    explainers = {
        "rollout": camlens.AttentionRollout(small),
        "gae (12 blocks)": camlens.GenericAttentionCAM(small),
        "legrad (last 2 blocks)": camlens.LeGrad(small),
        "legrad (12 blocks)": camlens.LeGrad(small, blocks=12),
        "gradcam (blocks.11.norm1)": camlens.GradCAM(small, layer="blocks.11.norm1", reshape=grid),
        "eigencam (blocks.11.norm1)": camlens.EigenCAM(small, layer="blocks.11.norm1", reshape=grid),
    }

    def forward_small() -> None:
        with torch.no_grad():
            small(x)

    fns = {"forward (no_grad)": forward_small, **{name: (lambda e=e: e(x)) for name, e in explainers.items()}}
    print(f"\n## timm vit_small_patch16_224, {args.repeats} rounds")
    small_times = interleaved(fns, args.repeats)
    report(small_times, "forward (no_grad)")

    big = torchvision.models.vit_b_16().eval().to(device)
    torch.nn.init.normal_(big.heads.head.weight, std=0.02)  # torchvision starts the head at zero: no gradient
    blocks = list(big.encoder.layers)[-2:]
    ours = camlens.LeGrad(big, blocks=2)

    def forward_big() -> None:
        with torch.no_grad():
            big(x)

    def torchcam_legrad() -> torch.Tensor:
        with tc.LeGrad(big, blocks) as extractor:
            scores = big(x)
            return extractor(scores.argmax(1).tolist(), scores, normalized=False)[0]

    with torch.no_grad():
        top = big(x).argmax(1)
    diff = float((ours(x, top).maps[:, 0] - torchcam_legrad()).abs().max())
    print(f"\n## torchvision vit_b_16, {args.repeats} rounds; max |camlens - torchcam| LeGrad map: {diff:.2e}")
    big_times = interleaved(
        {"forward (no_grad)": forward_big, "camlens legrad": lambda: ours(x), "torchcam legrad": torchcam_legrad},
        args.repeats,
    )
    report(big_times, "forward (no_grad)")
    load_after = os.getloadavg()

    rows = [
        ["vit_small_patch16_224", name, round(s, 4), round(r, 3)]
        for name, (s, r) in ratios(small_times, "forward (no_grad)").items()
    ]
    rows += [
        ["vit_b_16 (torchvision)", name, round(s, 4), round(r, 3)]
        for name, (s, r) in ratios(big_times, "forward (no_grad)").items()
    ]
    machine = {
        "cpu": cpu_description(),
        "cores": os.cpu_count(),
        "flags": [f for f in UNITS if f in cpu_flags()],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "load_average_1min": [round(load_before[0], 2), round(load_after[0], 2)],
    }
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    result = {
        "title": f"Vision transformer methods against one forward pass (batch {args.batch}, 224 px, {device})",
        "command": "python benchmarks/bench_vit.py" + (f" --device {args.device}" if args.device != "cpu" else ""),
        "machine": machine,
        "columns": ["model", "what", "median s", "ratio to forward"],
        "rows": rows,
        "notes": (
            f"Random weights; {args.repeats} interleaved rounds, ratio = median over rounds of t / t[forward]. "
            f"camlens and torchcam LeGrad maps differ by at most {diff:.1e} (raw). CAM does not apply to "
            "vit_small (class-token head). GAE needs one backward to the first block, so it costs about a "
            "forward more; LeGrad's backward stays inside its blocks. The machine was shared: 1-min load "
            f"average {load_before[0]:.1f} before, {load_after[0]:.1f} after."
        ),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
