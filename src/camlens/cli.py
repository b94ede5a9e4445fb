"""The `camlens` command: parse, call the library, print.  Each subcommand is a `cmd_*` function and a parser
block in :func:`build_parser`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from .capture import CamlensError


def _fail(message: str) -> None:
    print(f"camlens: {message}", file=sys.stderr)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Model selection and preprocessing, shared by every subcommand that runs a model."""
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", help="a camlens .safetensors checkpoint, or a .pt/.pth state dict (with --arch)")
    g.add_argument("--arch", help="torchvision name (resnet50), timm:NAME, or gapnet")
    g.add_argument("--weights", default="DEFAULT", help="torchvision weight name, 'none' for random init (default: DEFAULT)")
    g.add_argument("--classes", dest="class_names", help="class names: a text file (one a line), imagenet or stl10")
    g.add_argument("--size", type=int, nargs="+", help="input size H [W] (default: from the weights or checkpoint)")
    g.add_argument("--mean", type=float, nargs=3, help="normalization mean")
    g.add_argument("--std", type=float, nargs=3, help="normalization std")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")


def load_from_args(args: argparse.Namespace):
    from .models import load_model

    if args.checkpoint is None and args.arch is None:
        raise CamlensError("give --checkpoint FILE or --arch NAME (e.g. --arch resnet50)")
    return load_model(
        args.checkpoint, arch=args.arch, weights=args.weights, classes=args.class_names,
        size=args.size[0] if args.size and len(args.size) == 1 else args.size,
        mean=args.mean, std=args.std, device=args.device,
    )


def make_explainer(loaded, method: str, layers: Sequence[str] | None):
    from .methods import get_method

    layer = None if not layers else (layers[0] if len(layers) == 1 else list(layers))
    return get_method(method)(loaded.model, layer=layer)


def cmd_explain(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import distributed
    from .data.images import expand_paths
    from .pipeline import RenderOptions, explain_files

    ctx = distributed.setup(args.device)
    try:
        paths, missing = expand_paths(args.paths)
        for line in missing if ctx.is_main else []:
            _fail(line)
        args.device = str(ctx.device)
        loaded = load_from_args(args)
        out = Path(args.out)
        render = RenderOptions(args.colormap, args.alpha, args.classic, args.figure, args.format)
        run_key = {k: getattr(args, k) for k in ("checkpoint", "arch", "weights", "class_names", "size", "mean", "std",
                                                 "method", "layer", "topk", "target_class", "alpha", "colormap",
                                                 "classic", "figure", "format", "max_pixels")}
        bar = tqdm(total=len(distributed.shard(paths, ctx)), unit="img", disable=args.quiet or not ctx.is_main,
                   file=sys.stderr)
        with make_explainer(loaded, args.method, args.layer) as explainer, bar:
            summary = explain_files(
                loaded, explainer, paths, out, classes=args.target_class, topk=args.topk,
                batch_size=args.batch_size, workers=args.workers, max_pixels=args.max_pixels, render=render,
                run_key=run_key, resume=not args.restart, ctx=ctx,
                on_error=lambda line: bar.write(f"camlens: skipped {line}", file=sys.stderr), progress=bar.update,
            )
    finally:
        distributed.teardown()
    if ctx.is_main:
        print(f"explained {len(summary.records)} image(s) into {out}/ (summary.json, summary.csv); "
              f"{len(summary.errors) + len(missing)} failed")
    return 1 if summary.errors or missing else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="camlens", description="Class Activation Maps for PyTorch models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("explain", help="write CAM overlays for image files, folders or globs")
    p.add_argument("paths", nargs="+", help="image files, folders or glob patterns")
    add_model_args(p)
    p.add_argument("--method", default="cam", help="cam, gradcam, ... (default: cam)")
    p.add_argument("--layer", action="append", help="target layer name (repeat to fuse several layers)")
    p.add_argument("--topk", type=int, default=1, help="explain the k best classes (default: 1)")
    p.add_argument("--class", dest="target_class", type=int, help="explain this class index instead of the top-k")
    p.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity (default: 0.5)")
    p.add_argument("--colormap", default="jet", help="any matplotlib colormap (default: jet)")
    p.add_argument("--classic", action="store_true", help="the original blend: 0.3 heat + 0.5 image")
    p.add_argument("--figure", action="store_true", help="also write the three-panel figure (raw, resized, overlay)")
    p.add_argument("--format", choices=["png", "jpg"], default="png", help="overlay format (default: png)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2, help="image decoding threads")
    p.add_argument("--max-pixels", type=int, default=50_000_000, help="refuse larger images")
    p.add_argument("--out", default="camlens-out", help="output folder (default: camlens-out)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--restart", action="store_true", help="redo everything instead of resuming in --out")
    p.set_defaults(func=cmd_explain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CamlensError as err:
        if args.debug:
            raise
        _fail(f"error: {err}")
        return 2
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
