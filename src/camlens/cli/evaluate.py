"""`camlens evaluate`: localization (and faithfulness) metrics of a model on a labelled split, or of saved maps."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..constants import PAPER_THRESHOLD
from ..errors import CamlensError
from .common import (
    add_dist_timeout_arg,
    add_method_args,
    add_model_args,
    add_overwrite_arg,
    explaining,
    load_from_args,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``evaluate`` command and its flags."""
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
    p.set_defaults(func=run)


def add_protocol_args(p: argparse.ArgumentParser) -> None:
    """``--protocol`` of ``camlens evaluate`` (training's comes from :class:`~camlens.training.TrainConfig`)."""
    from ..reference import PROTOCOLS

    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default=PROTOCOLS[0],
        help="wsolevaluation: evaluate as Choe et al.'s reference code does (at the 224 input with bicubic maps, "
        f"their threshold step) (default: {PROTOCOLS[0]})",
    )


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .. import distributed
    from ..boxes import wsol_thresholds
    from ..data.samples import dataset_samples
    from ..evaluation import evaluate_maps, evaluate_model, format_table, write_json
    from ..files import check_target
    from ..reference import curve_interval

    resuming = args.progress_dir is not None and distributed.earlier_run(Path(args.progress_dir)) is not None
    if args.json:  # checked before the work: an earlier run's metrics are kept unless --overwrite
        try:
            check_target(Path(args.json), replace=args.overwrite or resuming)
        except CamlensError as err:
            raise CamlensError(f"--json: {err}") from None

    interval = curve_interval(args.protocol, args.cam_curve_interval, scoring_saved_maps=bool(args.maps))
    thresholds = None if interval is None else wsol_thresholds(interval)
    if args.maps or args.metadata:
        from ..data.annotations import find_annotations

        if not (args.maps and args.metadata):
            raise CamlensError("--maps DIR and --metadata DIR go together (score maps and their annotations)")
        ann = find_annotations(args.metadata, args.split, None, image_root=args.images, mask_root=args.mask_root)
        with tqdm(total=len(ann), unit="map", disable=args.quiet, file=sys.stderr) as bar:
            result = evaluate_maps(
                args.maps, ann, thresholds=thresholds, paper_threshold=args.paper_threshold, progress=bar.update
            )
    else:
        from ..metrics.faithfulness import FaithfulnessConfig
        from ..training.select import checkpoint_threshold

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
