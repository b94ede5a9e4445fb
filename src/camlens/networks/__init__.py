"""CAM networks by name: the CAM paper's (``paper``), the WSOL benchmark's (``wsolbench``) and any backbone
through :func:`gapify`; ``wsolref`` has Choe et al.'s ACoL and SPG networks (``wsol-vgg16-acol``, ...), and
``wsolcheckpoint`` reads their checkpoints' layouts.

Every network built here ends in GAP + a linear classifier (or a 1x1 convolution averaged afterwards), so
:class:`camlens.CAM` explains it without configuration, and carries two attributes: ``new_layers``, the
qualified names of the modules that train at the higher learning rate (:func:`new_layer_names`), and
``arch_options``, the builder options that :func:`camlens.models.save_checkpoint` records so that a checkpoint
rebuilds the same network.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from ..backbones import build_backbone
from ..errors import CamlensError
from ._common import ConvGapNet, feature_resolution
from .gapify import gapify
from .paper import alexnet_cam, googlenet_cam, vgg16_cam
from .vit import vit_tiny_gap
from .wsolbench import wsol_inceptionv3, wsol_resnet50, wsol_vgg16
from .wsolref import (
    wsol_inceptionv3_acol,
    wsol_inceptionv3_spg,
    wsol_resnet50_acol,
    wsol_resnet50_spg,
    wsol_vgg16_acol,
    wsol_vgg16_spg,
)


def gapify_backbone(
    num_classes: int = 1000,
    weights: str | None = None,
    *,
    backbone: str,
    cut: str | None = None,
    width: int = 1024,
    groups: int = 1,
    input_size: int = 224,
) -> nn.Module:
    """:func:`gapify` applied to ``camlens.backbones.build_backbone(backbone, weights=weights)``: the by-name form,
    so that a checkpoint of a converted torchvision or timm backbone rebuilds it."""
    return gapify(
        build_backbone(backbone, None, weights),
        cut,
        width=width,
        num_classes=num_classes,
        groups=groups,
        input_size=input_size,
    )


NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "vgg16-cam": vgg16_cam,
    "googlenet-cam": googlenet_cam,
    "alexnet-cam": alexnet_cam,
    "wsol-vgg16": wsol_vgg16,
    "wsol-resnet50": wsol_resnet50,
    "wsol-inceptionv3": wsol_inceptionv3,
    "wsol-vgg16-acol": wsol_vgg16_acol,
    "wsol-resnet50-acol": wsol_resnet50_acol,
    "wsol-inceptionv3-acol": wsol_inceptionv3_acol,
    "wsol-vgg16-spg": wsol_vgg16_spg,
    "wsol-resnet50-spg": wsol_resnet50_spg,
    "wsol-inceptionv3-spg": wsol_inceptionv3_spg,
    "gapify": gapify_backbone,
    "vit-tiny-gap": vit_tiny_gap,
}


def build_network(name: str, num_classes: int | None = None, weights: str | None = None, **options: Any) -> nn.Module:
    """The network ``name`` of :data:`NETWORKS` with ``num_classes`` outputs (1000 when None), its backbone from
    torchvision's ``weights`` (None or ``"none"``: random), ``options`` as the builder's keyword arguments.
    The full set of options (defaults included) is kept in ``model.arch_options``."""
    if name not in NETWORKS:
        raise CamlensError(f"unknown CAM network {name!r}; choose from {', '.join(NETWORKS)}")
    builder = NETWORKS[name]
    signature = inspect.signature(builder)
    allowed = [p.name for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise CamlensError(f"{name} has no option {', '.join(unknown)}; its options: {', '.join(allowed) or 'none'}")
    missing = [
        p.name
        for p in signature.parameters.values()
        if p.kind is p.KEYWORD_ONLY and p.default is p.empty and p.name not in options
    ]
    if missing:
        raise CamlensError(f"{name} needs the option {', '.join(missing)}")
    bound = signature.bind(1000 if num_classes is None else num_classes, weights, **options)
    bound.apply_defaults()
    model = builder(*bound.args, **bound.kwargs)
    setattr(model, "arch_options", {k: bound.arguments[k] for k in allowed})
    return model


def new_layer_names(model: nn.Module) -> tuple[str, ...]:
    """Qualified names of the modules a builder added (they train at the higher learning rate); () when the
    model does not say (``model.new_layers`` absent)."""
    return tuple(getattr(model, "new_layers", ()))


__all__ = [
    "NETWORKS",
    "ConvGapNet",
    "alexnet_cam",
    "build_network",
    "feature_resolution",
    "gapify",
    "gapify_backbone",
    "googlenet_cam",
    "new_layer_names",
    "vgg16_cam",
    "vit_tiny_gap",
    "wsol_inceptionv3",
    "wsol_inceptionv3_acol",
    "wsol_inceptionv3_spg",
    "wsol_resnet50",
    "wsol_resnet50_acol",
    "wsol_resnet50_spg",
    "wsol_vgg16",
    "wsol_vgg16_acol",
    "wsol_vgg16_spg",
]
