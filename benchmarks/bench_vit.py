"""Speed of the methods on a vision transformer, as ratios to one plain forward pass, measured side by side in one run.

1. timm ``vit_small_patch16_224`` (random weights, batch 8, 224 px): a plain forward pass under torch.no_grad(),
   then attention rollout, Chefer et al.'s GAE (all 12 blocks), LeGrad (its default, the last 2 blocks, and all
   12), Grad-CAM and Eigen-CAM on the tokens of the last block's first norm (``blocks.11.norm1``).  CAM does not
   apply: the model reads its class token, it has no GAP + linear head.  Two reference rows say what a gradient
   method cannot go below: the forward pass with autograd recording, and that pass plus one backward from the
   explained logit to the first block's input (input gradients only, no parameter gradient), the pass GAE needs.
2. torchvision ``vit_b_16`` (random weights, batch 8, 224 px): camlens's LeGrad against torchcam 0.5.0's ``LeGrad``
   on the same blocks (the last 2), both explaining the top class, each as a ratio to the forward pass of the same
   model, with the max difference of their raw maps.

Every row runs with the same torch thread count.  Timings are interleaved (every callable once per round, in turn,
after warm-up rounds), so changes in machine load hit all rows alike; each ratio is the median over rounds of
t / t[forward] of that round, and beside it the ratio of the minimum times (the least disturbed run of each).
Writes benchmarks/results/vit.json.

    python benchmarks/bench_vit.py                     # about 10 minutes on 2 busy cores
    python benchmarks/bench_vit.py --threads 1         # on a shared machine: one thread is not stalled at every
                                                       # parallel region by other jobs, so its ratios are steadier
    python benchmarks/bench_vit.py --device cuda       # the same ratios on a GPU (benchmarks/gpu.sh)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

import timm
import torch
import torchvision
from torchcam import methods as tc

import camlens

sys.path.insert(0, str(Path(__file__).parent))
from common import header, interleaved, write_result  # noqa: E402

FORWARD = "forward (no_grad)"


def ratios(times: dict[str, list[float]]) -> dict[str, tuple[float, float, float]]:
    """Per row: (median s, median over rounds of t / t[forward], min t / min t[forward])."""
    base = times[FORWARD]
    return {
        name: (
            statistics.median(ts),
            statistics.median(t / b for t, b in zip(ts, base)),
            min(ts) / min(base),
        )
        for name, ts in times.items()
    }


def show(times: dict[str, list[float]]) -> None:
    print(f"{'what':<46}{'median s':>10}{'ratio':>8}{'of min':>8}")
    for name, (seconds, median, of_min) in ratios(times).items():
        print(f"{name:<46}{seconds:>10.4f}{median:>8.3f}{of_min:>8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, every row")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    header(f"vision transformer methods, batch {args.batch}, 224 px, {device}, {torch.get_num_threads()} threads")
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

    def forward_recording() -> None:
        with torch.enable_grad():
            small(x)

    def forward_backward() -> None:
        with torch.enable_grad():
            tokens = small.norm_pre(small.patch_drop(small._pos_embed(small.patch_embed(x))))
            tokens = tokens.detach().requires_grad_()
            logits = small.forward_head(small.norm(small.blocks(tokens)))
            top = logits.detach().argmax(1, keepdim=True)
            torch.autograd.grad(logits.gather(1, top).sum(), tokens)

    fns: dict[str, Callable[[], Any]] = {
        FORWARD: forward_small,
        "reference: forward with autograd recording": forward_recording,
        "reference: forward + backward to block 0": forward_backward,
        **{name: (lambda e=e: e(x)) for name, e in explainers.items()},
    }
    print(f"\n## timm vit_small_patch16_224, {args.repeats} rounds after {args.warmup} warm-up")
    small_times = interleaved(fns, args.repeats, warmup=args.warmup)
    show(small_times)

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
        {FORWARD: forward_big, "camlens legrad (last 2 blocks)": lambda: ours(x), "torchcam legrad": torchcam_legrad},
        args.repeats,
        warmup=args.warmup,
    )
    show(big_times)
    versus = statistics.median(
        c / t for c, t in zip(big_times["camlens legrad (last 2 blocks)"], big_times["torchcam legrad"])
    )
    print(f"camlens / torchcam LeGrad time, median over rounds: {versus:.3f}")
    load_after = os.getloadavg()

    rows: list[list[Any]] = []
    for model, times in (("vit_small_patch16_224 (timm)", small_times), ("vit_b_16 (torchvision)", big_times)):
        for name, (seconds, median, of_min) in ratios(times).items():
            rows.append([model, name, round(seconds, 4), round(median, 3), round(of_min, 3)])
    write_result(
        "vit" if device.type == "cpu" else f"vit_{device.type}",
        f"Vision transformer methods against one forward pass (batch {args.batch}, 224 px, {device})",
        ["model", "what", "median s", "ratio to forward (median)", "ratio of minimum times"],
        rows,
        notes=(
            f"Random weights; {torch.get_num_threads()} torch threads for every row; {args.repeats} interleaved "
            f"rounds after {args.warmup} warm-up; ratios to the forward pass of the same model. camlens's LeGrad "
            f"took {versus:.2f}x the time of torchcam's (median over rounds), their raw maps differ by at most "
            f"{diff:.1e}. CAM does not apply to vit_small (class-token head). The machine was shared: 1-min load "
            f"average {load_before[0]:.1f} before, {load_after[0]:.1f} after."
        ),
        device=args.device,
    )


if __name__ == "__main__":
    main()
