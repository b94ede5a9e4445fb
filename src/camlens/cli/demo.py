"""`camlens demo`: train gapnet on the built-in dataset, explain held-out images, write an HTML report."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``demo`` command and its flags."""
    p = sub.add_parser(
        "demo", help="train gapnet on the built-in dataset, explain held-out images, write an HTML report"
    )
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the demo's setting)")
    p.add_argument("--num-train", type=int, help="training images (default: the demo's setting)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    kwargs = {k: getattr(args, k) for k in ("epochs", "num_train", "seed") if getattr(args, k) is not None}
    result = run_demo(args.out, device=args.device, progress=not args.quiet, **kwargs)
    print(f"test accuracy {result.test_accuracy:.2%}; open {result.report} in a browser")
    return 0
