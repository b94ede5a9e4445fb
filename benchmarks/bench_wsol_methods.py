"""Training throughput of each WSOL method relative to vanilla CAM on the same network, measured in one run.

One training step is what the loop runs per batch: the method's ``batch`` hook, its ``loss`` (forward, side
branches), backward and an AdamW step, on the same preprocessed batch for every method.  Steps of all methods are
interleaved round by round (so drifts in machine speed hit all alike); the table gives each method's median step
time, images per second, and the median over rounds of its time over CAM's in the same round.

    PYTHONPATH=src python benchmarks/bench_wsol_methods.py                       # gapnet, 64 px, batch 64
    PYTHONPATH=src python benchmarks/bench_wsol_methods.py --arch wsol-resnet50 --size 224 --batch 16 --device cuda
"""

from __future__ import annotations

import argparse
import statistics

import torch

from camlens.models import build_model
from camlens.training.wsol import WSOL_METHODS, get_wsol_method
from common import header, interleaved, write_result

# Bridging's alignment terms start after its warm-up epochs: time its full loss
PARAMS = {"bridging": {"warm_epochs": 0}}


def step_fn(name: str, arch: str, x: torch.Tensor, y: torch.Tensor, device: torch.device):
    torch.manual_seed(0)
    net = build_model(arch, 10)
    method = get_wsol_method(name, **PARAMS.get(name, {}))
    method.attach(net)
    net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)

    def step() -> None:
        images, targets = method.batch(x, y, g)
        loss, _ = method.loss(net, images, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="gapnet")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=3, help="training steps per timed call")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    header(f"WSOL training steps: {args.arch}, {args.size} px, batch {args.batch}, {args.device}")
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=torch.Generator().manual_seed(2)).to(device)
    steps = {name: step_fn(name, args.arch, x, y, device) for name in WSOL_METHODS}
    calls = {name: (lambda fn=fn: [fn() for _ in range(args.steps)]) for name, fn in steps.items()}
    times = interleaved(calls, args.rounds)
    base = times["cam"]
    print(f"{'method':<8}{'median s/step':>15}{'images/s':>10}{'throughput vs cam':>19}")
    rows = []
    for name, ts in times.items():
        per_step = statistics.median(ts) / args.steps
        ratio = statistics.median(b / t for t, b in zip(ts, base))
        print(f"{name:<8}{per_step:>15.4f}{args.batch / per_step:>10.0f}{ratio:>19.3f}")
        rows.append([name, round(per_step, 4), round(args.batch / per_step), round(ratio, 3)])
    note = (
        f"Throughput vs cam: median over {args.rounds} interleaved rounds of t[cam] / t[method] "
        f"({args.steps} steps per round each)"
    )
    print(f"# {note[0].lower()}{note[1:]}")
    write_result(
        "wsol_methods_throughput",
        f"WSOL training steps: {args.arch}, {args.size} px, batch {args.batch}, {args.device}",
        ["method", "median s/step", "images/s", "throughput vs cam"],
        rows,
        note + ".",
        device=args.device,
    )


if __name__ == "__main__":
    main()
