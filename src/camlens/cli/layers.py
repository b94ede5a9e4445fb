"""`camlens layers`: a model's layers with their output shapes, the default one marked."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CamlensError
from .common import add_model_args, load_from_args, make_explainer


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``layers`` command and its flags."""
    p = sub.add_parser("layers", help="list a model's layers with their output shapes, marking the default one")
    p.add_argument("model", nargs="?", help="a checkpoint file or an architecture name (or use --checkpoint/--arch)")
    add_model_args(p)
    p.add_argument("--method", default="cam", help="mark the layer this method explains by default (default: cam)")
    p.add_argument("--all", action="store_true", help="every layer with a tensor output, not only spatial maps")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..capture import layer_shapes

    if args.model is not None:
        if Path(args.model).is_file() or args.model.endswith((".safetensors", ".pt", ".pth")):
            args.checkpoint = args.checkpoint or args.model
        else:
            args.arch = args.arch or args.model
    loaded = load_from_args(args)
    size = loaded.preprocess.size or (224, 224)
    device = next(loaded.model.parameters()).device
    x = loaded.preprocess(torch.full((3, *size), 0.5, device=device))
    shapes = layer_shapes(loaded, x, maps_only=not args.all)
    default, why, of = None, "", f" for --method {args.method}"
    if loaded.meta.get("task") in ("detection", "segmentation"):  # explained through a target, at a known layer
        from ..targets import default_layer

        default, of = default_layer(loaded.model), f" for {loaded.meta['task']} targets"
    else:
        try:
            with (
                make_explainer(loaded, args.method, None) as explainer,
                torch.inference_mode(not explainer.needs_gradients),
            ):
                default = explainer(x).layer
        except CamlensError as err:
            why = f"; no default layer for --method {args.method}: {err}"
    width = max([len(name) for name in shapes] + [5])
    print(f"{'layer':<{width}}  output shape for a {size[0]}x{size[1]} input")
    for name, shape in shapes.items():
        mark = f"  <- default{of}" if name == default else ""
        print(f"{name:<{width}}  {' x '.join(map(str, shape[1:]))}{mark}")
    kind = "layers" if args.all else "layers with spatial maps (--all: every layer)"
    print(f"{len(shapes)} {kind}; explain another one with --layer NAME{why}")
    return 0
