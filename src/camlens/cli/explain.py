"""`camlens explain`: overlays (and score maps) for image files, folders, globs and videos."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..errors import CamlensError
from .common import (
    add_dist_timeout_arg,
    add_method_args,
    add_model_args,
    add_overwrite_arg,
    explainer_for,
    explaining,
    fail,
    load_from_args,
    request_from_args,
)

if TYPE_CHECKING:
    from ..request import ExplainRequest


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``explain`` command and its flags."""
    p = sub.add_parser("explain", help="write CAM overlays for image files, folders or globs")
    p.add_argument(
        "paths",
        nargs="+",
        help="image files, .npy arrays (2-D images; 3-D volumes for 3-D models), video files, folders or glob patterns",
    )
    add_model_args(p)
    add_method_args(p)
    p.add_argument("--topk", type=int, default=1, help="explain the k best classes (default: 1)")
    p.add_argument(
        "--class",
        dest="target_class",
        metavar="CLASS",
        help="explain this class (an index or a label) instead of the top-k",
    )
    p.add_argument(
        "--target",
        help="what to explain instead of classes: logit[:C], softmax[:C], sigmoid[:C], "
        "labels[:T] (multi-label: each label with sigmoid >= T), regression[:I], "
        "segment:C (segmentation models), box:C:x0,y0,x1,y1 (detection models; image "
        "pixels); C a class index or name",
    )
    p.add_argument(
        "--box-threshold",
        type=float,
        help="detection models: keep predicted boxes scoring at least this (default: the model's own threshold)",
    )
    p.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity (default: 0.5)")
    p.add_argument("--colormap", default="jet", help="any matplotlib colormap (default: jet)")
    p.add_argument("--classic", action="store_true", help="the original blend: 0.3 heat + 0.5 image")
    p.add_argument("--figure", action="store_true", help="also write the three-panel figure (raw, resized, overlay)")
    p.add_argument("--format", choices=["png", "jpg"], default="png", help="overlay format (default: png)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2, help="image decoding threads")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="refuse larger images (default: 40000000)")
    p.add_argument(
        "--decode-budget",
        type=int,
        metavar="PIXELS",
        help="image pixels held at once from decoding until their overlays are written; a batch that "
        "does not fit runs in parts (default: the larger of --max-pixels and batch size x 64 x the "
        "model's input)",
    )
    p.add_argument("--out", default="camlens-out", help="output folder (default: camlens-out)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--restart", action="store_true", help="redo everything instead of resuming in --out")
    add_overwrite_arg(p, "the files of an earlier run with other options in --out")
    add_dist_timeout_arg(p)
    p.add_argument(
        "--save-maps",
        metavar="DIR",
        help="also write each image's first map as DIR/<image id>.npy (upsampled to the image, min-max "
        "normalized), the layout `camlens evaluate --maps DIR` reads; the image id is the path "
        "relative to the folder given (the file name for files)",
    )
    v = p.add_argument_group("video files (.mp4, .mov, .mkv, .webm, .avi; needs camlens[video])")
    v.add_argument(
        "--video-codec",
        default="libx264",
        help="overlay video encoder: libx264, mpeg4, libvpx-vp9, or lossless ffv1, png (default: libx264)",
    )
    v.add_argument("--crf", type=int, default=23, help="libx264 / libvpx-vp9 quality, lower is better (default: 23)")
    v.add_argument("--every", type=int, default=1, help="explain every n-th frame (default: 1)")
    v.add_argument("--max-frames", type=int, help="explain at most this many frames of each video")
    p.set_defaults(func=run)


def map_files(specs: Sequence[str], paths: Sequence[Path], folder: Path) -> dict[Path, Path]:
    """``--save-maps``: each image's ``.npy`` as ``camlens evaluate --maps`` finds it, ``<image_id>.npy``, the image
    id being its path relative to the folder given on the command line (its file name for files and globs)."""
    roots = [Path(s) for s in specs if Path(s).is_dir()]
    files: dict[Path, Path] = {}
    taken: dict[Path, Path] = {}
    for path in paths:
        root = next((r for r in roots if path.is_relative_to(r)), path.parent)
        target = folder / f"{path.relative_to(root).as_posix()}.npy"
        if target in taken:
            raise CamlensError(
                f"--save-maps: {taken[target]} and {path} would both write {target}; explain their "
                "folders separately or give their common parent folder"
            )
        files[path] = taken[target] = target
    return files


def skipped_lines(summary, task: str | None) -> list[tuple[str, bool]]:
    """One line per explained class that got no file (a segmentation class without predicted pixels, a detection
    target without a matching box), with whether its image got no file at all."""
    lines = []
    for record in summary.records:
        written = any(e.get("overlay") for e in record["explained"])
        for entry in record["explained"]:
            if entry.get("overlay"):
                continue
            why = {
                "segmentation": f"no pixels of class {entry['label']}",
                "detection": f"no predicted box of class {entry['label']} matches",
            }.get(task or "", entry.get("note", ""))
            lines.append((f"{record['file']} ({why})", not written))
    return lines


def run(args: argparse.Namespace) -> int:

    from .. import distributed
    from ..data.images import expand_paths
    from ..pipeline import RenderOptions, explain_files
    from ..video import is_video

    ctx = distributed.setup(args.device, args.dist_timeout)
    try:
        paths, missing = expand_paths(args.paths)
        for line in missing if ctx.is_main else []:
            fail(line)
        videos = [path for path in paths if is_video(path)]
        paths = [path for path in paths if not is_video(path)]
        if videos and ctx.world_size > 1:
            raise CamlensError("video files are explained by one process: run them without torchrun")
        args.device = str(ctx.device)
        loaded = load_from_args(args)
        request = request_from_args(args, loaded)
        out = Path(args.out)
        render = RenderOptions(args.colormap, request.alpha, args.classic, args.figure, args.format)
        if videos:
            return _explain_videos(args, loaded, request, videos, paths, missing, render)
        if request.target is not None and args.box_threshold is not None:
            from ..targets import set_box_threshold

            set_box_threshold(loaded.model, args.box_threshold)
        run_key = {
            k: getattr(args, k)
            for k in (
                "checkpoint",
                "arch",
                "weights",
                "class_names",
                "size",
                "mean",
                "std",
                "wsol_method",
                "wsol_param",
                "large_feature_map",
                "method",
                "layer",
                "fuse",
                "topk",
                "alpha",
                "colormap",
                "classic",
                "figure",
                "format",
                "max_pixels",
                "target",
                "box_threshold",
                "save_maps",
            )
        }
        run_key["target_class"] = request.category  # the index, whether given as an index or a label
        share = sum(len(b) for _, b in distributed.shard_batches(len(paths), args.batch_size, ctx))
        maps = map_files(args.paths, paths, Path(args.save_maps)) if args.save_maps else None
        quiet = args.quiet or not ctx.is_main
        with explaining(args, loaded, share, args.batch_size, quiet=quiet, request=request) as (explainer, bar):
            summary = explain_files(
                loaded,
                explainer,
                paths,
                out,
                **_file_options(args, request, render, bar),
                run_key=run_key,
                resume=not args.restart,
                ctx=ctx,
                progress=bar.update,
                target=request.target,
                decode_budget=args.decode_budget,
                input_errors=missing,
                save_maps=maps,
            )
    finally:
        distributed.teardown()
    skipped = skipped_lines(summary, loaded.meta.get("task"))
    if ctx.is_main:
        empty = sum(nothing for _, nothing in skipped)
        for line, _ in skipped:
            fail(f"skipped {line}")
        notes = f"; {len(skipped)} skipped: {skipped[0][0]}" + (" ..." if len(skipped) > 1 else "") if skipped else ""
        print(
            f"explained {len(summary.records) - empty} image(s) into {out}/ (summary.json, summary.csv); "
            f"{len(summary.errors)} failed{notes}"  # the inputs that matched nothing included
            + (f"; score maps in {args.save_maps}/" if maps else "")
        )
    # a class absent from an image is an answer about that image, not a failed run: reported, exit status 0
    return 1 if summary.errors or missing else 0


def _file_options(args: argparse.Namespace, request: ExplainRequest, render, bar) -> dict:
    """The options of `explain_files` that image folders and the images beside videos share."""
    return {
        "classes": request.category,
        "topk": request.topk,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "max_pixels": args.max_pixels,
        "render": render,
        "overwrite": args.overwrite,
        "on_error": lambda line: bar.write(f"camlens: skipped {line}", file=sys.stderr),
    }


def _explain_videos(
    args: argparse.Namespace,
    loaded,
    request: ExplainRequest,
    videos: list[Path],
    images: list[Path],
    missing: list[str],
    render,
) -> int:
    """``camlens explain`` with video files among the inputs: the videos frame by frame, then any images."""
    from tqdm import tqdm

    from ..pipeline import Summary, explain_files
    from ..video import VideoOptions, explain_videos

    if request.target is not None:
        raise CamlensError("--target is for images; a video's frames are explained by --class or --topk")
    options = VideoOptions(args.video_codec, args.crf, args.every, args.max_frames)
    options.check()
    out = Path(args.out)
    with (
        explainer_for(loaded, request, args.fuse) as explainer,
        tqdm(unit="frame", disable=args.quiet, file=sys.stderr) as bar,
    ):
        summary = explain_videos(
            loaded,
            explainer,
            videos,
            out,
            classes=request.category,
            topk=request.topk,
            batch_size=args.batch_size,
            render=render,
            options=options,
            progress=bar.update,
            overwrite=args.overwrite,
            on_error=lambda line: bar.write(f"camlens: skipped {line}", file=sys.stderr),
        )
        if images:
            done = explain_files(
                loaded, explainer, images, out, **_file_options(args, request, render, bar), resume=False
            )
            summary = Summary(done.records + summary.records, done.errors + summary.errors)
    summary.write(out)
    frames = sum(record.get("frames", 0) for record in summary.records)
    print(
        f"explained {len(summary.records)} file(s) ({frames} video frame(s)) into {out}/ (summary.json, "
        f"summary.csv, <video>_frames.csv); {len(summary.errors) + len(missing)} failed"
    )
    return 1 if summary.errors or missing else 0
