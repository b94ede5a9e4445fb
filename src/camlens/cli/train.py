"""`camlens train`: train or fine-tune a CAM network, fit a linear probe, or search a WSOL method's hyperparameters."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CamlensError
from .common import add_dist_timeout_arg, add_overwrite_arg, arch_options
from .evaluate import add_protocol_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``train`` command and its flags."""
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.linear_probe is not None:
        from ..files import check_target
        from ..training.probe import PROBE, run_linear_probe

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
    from .. import distributed
    from ..training import TrainConfig, train

    config = TrainConfig(
        args.data,
        images=args.images,
        arch=args.arch,
        arch_options=arch_options(args.arch_option),
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
    from ..training.wsol import WSOL_METHODS

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
    from ..training.data import DEFAULT_SIZE
    from ..training.wsol import get_wsol_method

    params = {}
    for item in args.wsol_param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CamlensError(f"--wsol-param {item!r}: expected KEY=VALUE, e.g. drop_rate=0.3")
        params[key] = value
    method = get_wsol_method(args.wsol_method, **arch_options([f"{k}={v}" for k, v in params.items()]))
    size = config.image_size or DEFAULT_SIZE.get(config.data.partition(":")[0], 224)
    method.check_input((size, size))
    return method


def run_search(args: argparse.Namespace, config) -> int:
    from ..training.search import DEFAULT_LR_RANGE, search
    from ..training.wsol import WSOL_METHODS

    if args.wsol_param:
        raise CamlensError(
            "--trials draws the method parameters; drop --wsol-param (or train one run without --trials)"
        )
    if args.resume:
        raise CamlensError("--trials always resumes the search in --out; drop --resume")
    names = list(WSOL_METHODS) if args.wsol_method == "all" else [m.strip() for m in args.wsol_method.split(",")]
    from .. import distributed

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
