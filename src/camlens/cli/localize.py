"""`camlens localize`: boxes from maps (the paper's or the WSOL protocol), boxes.json and overlays with boxes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..constants import PAPER_THRESHOLD
from .common import (
    add_method_args,
    add_model_args,
    add_overwrite_arg,
    explaining,
    fail,
    load_from_args,
    request_from_args,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``localize`` command and its flags."""
    p = sub.add_parser("localize", help="boxes from maps (paper or WSOL protocol): boxes.json and overlays with boxes")
    p.add_argument("paths", nargs="+", help="image files, folders or glob patterns")
    add_model_args(p)
    add_method_args(p)
    p.add_argument("--topk", type=int, default=1, help="boxes for the k best classes (default: 1)")
    p.add_argument(
        "--protocol",
        choices=["paper", "wsol"],
        default="paper",
        help="paper: largest component above threshold x max; wsol: largest contour at the threshold "
        "of the min-max normalized map, Choe et al.'s box convention (default: paper)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        help="the protocol's threshold (default: the one the checkpoint was "
        "selected with by camlens train --select-by, else "
        f"{PAPER_THRESHOLD})",
    )
    p.add_argument("--out", default="camlens-boxes", help="output folder (default: camlens-boxes)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_overwrite_arg(p, "boxes.json and the overlays of an earlier run in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    from ..data.images import expand_paths
    from ..localize import localize_files

    paths, missing = expand_paths(args.paths)
    for line in missing:
        fail(line)
    loaded = load_from_args(args)
    out = Path(args.out)
    threshold = args.threshold
    if threshold is None:
        from ..training.select import checkpoint_threshold

        threshold = checkpoint_threshold(loaded.meta, args.protocol)
        if threshold is not None:
            fail(f"{args.protocol} threshold {threshold:.3f}, the one the checkpoint was selected with")
        threshold = PAPER_THRESHOLD if threshold is None else threshold
    request = request_from_args(args, loaded)
    with explaining(args, loaded, len(paths), 1, quiet=args.quiet, request=request) as (explainer, bar):
        records = localize_files(
            loaded,
            explainer,
            paths,
            out,
            protocol=args.protocol,
            threshold=threshold,
            topk=request.topk,
            progress=bar.update,
            on_error=lambda line: bar.write(f"camlens: skipped {line}", file=sys.stderr),
            overwrite=args.overwrite,
        )
    done = sum("error" not in r for r in records)
    failed = len(records) - done + len(missing)
    print(f"boxes for {done} image(s) in {out / 'boxes.json'}, overlays in {out}/; {failed} failed")
    return 1 if failed else 0
