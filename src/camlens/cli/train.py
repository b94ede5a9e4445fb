"""`camlens train`: train or fine-tune a CAM network, fit a linear probe, or search a WSOL method's hyperparameters."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from types import UnionType
from typing import Any, cast, get_args, get_origin, get_type_hints

from ..errors import CamlensError
from ..training.config import FLAGS, TrainConfig
from .common import add_dist_timeout_arg, arch_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``train`` command: one flag per :class:`~camlens.training.TrainConfig` field (:func:`add_config_flags`),
    the linear probe, and the WSOL method with its search."""
    p = sub.add_parser("train", help="train or fine-tune a CAM network; writes a self-describing checkpoint")
    add_config_flags(p)
    add_dist_timeout_arg(p)
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


class KeyValues(argparse.Action):
    """A repeatable ``KEY=VALUE`` flag collected into a dict (values read as JSON, else kept as strings)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        try:
            new = arch_options([cast(str, values)], cast(str, option_string))
        except CamlensError as err:
            raise argparse.ArgumentError(None, str(err)) from None  # the message names the flag
        setattr(namespace, self.dest, {**(getattr(namespace, self.dest) or {}), **new})


def config_flag(name: str) -> str:
    """The flag of the :class:`~camlens.training.TrainConfig` field ``name``: its :data:`~camlens.training.config.FLAGS`
    entry's, else ``--`` and the name in kebab case."""
    return FLAGS[name].name or "--" + name.replace("_", "-")


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per field of :class:`~camlens.training.TrainConfig`, its default the field's (written only there),
    its help from :data:`~camlens.training.config.FLAGS`; the value's type from the field's annotation."""
    hints = get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        flag = FLAGS[f.name]
        default = f.default_factory() if callable(f.default_factory) else f.default
        hint = hints[f.name]
        if isinstance(hint, UnionType):  # X | None: the flag's value is an X
            (hint,) = [t for t in get_args(hint) if t is not type(None)]
        kind = get_origin(hint) or hint
        shown = default if isinstance(default, str) else f"{default:g}" if isinstance(default, (int, float)) else None
        note = f" (default: {shown})" if shown is not None and not isinstance(default, bool) else ""
        options: dict[str, Any] = {"dest": f.name, "default": default, "help": flag.help + note}
        if kind is bool:
            options["action"] = (
                argparse.BooleanOptionalAction if default is None else "store_false" if default else "store_true"
            )
        elif kind is dict:
            options.update(action=KeyValues, metavar=flag.metavar)
        else:
            options.update(type=kind, choices=flag.choices, metavar=flag.metavar)
        p.add_argument(config_flag(f.name), **options)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`~camlens.training.TrainConfig` of a parsed ``camlens train`` command line.

    Args:
        args: the parsed command line (its flags from :func:`add_config_flags`).

    Returns:
        The config, checked (one-line errors for values that do not fit).
    """
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})


def run(args: argparse.Namespace) -> int:
    """``camlens train``: the linear probe, the search (``--trials``) or one training run."""
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
            image_size=args.image_size,
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
    from ..training import train

    config = config_from_args(args)
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
            progress=args.progress,
        )
    finally:
        distributed.teardown()
    if ctx.is_main:
        print(f"search results: {Path(args.out) / 'search.json'}")
    return 0
