"""The `camlens` command: parse, call the library, print.  Each command is a module of this package that adds its
parser (``add_parser``) and runs it (``run``); :mod:`camlens.cli.common` holds what several of them share."""

from __future__ import annotations

import argparse
import os
from typing import Callable, Sequence

from .. import __version__
from ..errors import CamlensError
from . import demo, evaluate, explain, layers, localize, serve, train
from .common import (
    PassWatch,
    add_method_args,
    add_model_args,
    arch_options,
    explaining,
    fail,
    load_from_args,
    make_explainer,
    one_line,
)

COMMANDS = (explain, layers, localize, evaluate, serve, train, demo)  # in the order `camlens --help` lists them
RESUMABLE = {
    "explain": "progress in --out/.progress",
    "evaluate": "progress in --progress-dir, when given",
    "train": "add --resume: finished epochs are in --out",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``camlens`` parser: the global flags and one subparser per command module.

    Returns:
        The parser; a parsed command's ``func`` runs it.
    """
    parser = argparse.ArgumentParser(prog="camlens", description="Class Activation Maps for PyTorch models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"camlens {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``camlens`` command; every failure is one line on stderr (the traceback with ``--debug``).

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 done, 1 some inputs failed or a crash, 2 bad input, 130 interrupted.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    if args.command != "serve":  # a batch job: its passes reuse freed memory; a server returns it
        from ..hardware import retain_freed_memory

        retain_freed_memory()
    try:
        if getattr(args, "device", None):
            from ..hardware import check_device

            check_device(args.device)
        return func(args)
    except CamlensError as err:
        if args.debug:
            raise
        fail(f"error: {one_line(err)}")
        return 2
    except KeyboardInterrupt:
        fail("interrupted")
        return 130
    except Exception as err:  # a crash: one line (the traceback with --debug); under torchrun, how to go on
        if args.debug:
            raise
        if "RANK" in os.environ and args.command in RESUMABLE:
            fail(
                f"rank {os.environ['RANK']} failed ({type(err).__name__}: {one_line(err)}); finished batches are "
                f"logged, so rerunning the same command resumes ({RESUMABLE[args.command]})"
            )
            raise  # torchrun's failure report shows the rank's traceback
        fail(f"error: {type(err).__name__}: {one_line(err)} (rerun with --debug for the traceback)")
        return 1


__all__ = [
    "COMMANDS",
    "RESUMABLE",
    "PassWatch",
    "add_method_args",
    "add_model_args",
    "arch_options",
    "build_parser",
    "explaining",
    "load_from_args",
    "main",
    "make_explainer",
]
