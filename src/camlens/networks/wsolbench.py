"""The WSOL benchmark's vanilla-CAM backbones (Choe et al., "Evaluating Weakly Supervised Object Localization
Methods Right", CVPR 2020; their code, clovaai/wsolevaluation ``wsol/vgg.py``, ``resnet.py``, ``inception.py``,
is the reference for every stride, padding and layer name).

Module names follow that code (``conv6``, ``SPG_A3_1b``, ...), so a state dict of theirs has the same keys.
``large_feature_map=True`` is their option for a 28x28 map at 224 px instead of 14x14.  The backbone comes from
torchvision's ImageNet weights (``weights="DEFAULT"`` or a weight name; Choe et al. used the V1 weights, e.g.
``IMAGENET1K_V1`` for ResNet50, whose DEFAULT is V2); fresh layers are initialized as their
``initialize_weights`` does (VGG: He, ResNet50 and InceptionV3: Xavier).  ``new_layers`` are the layers their
``_set_optimizer`` trains at 10x the learning rate.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import check_head, materialize, pretrained_state, torchvision_skeleton


class VGG16Wsol(nn.Module):
    """VGG16 features -> conv6 (3x3, 512 -> ``width``) -> ReLU -> GAP -> fc (their ``VggCam``)."""

    def __init__(self, features: nn.Module, width: int, num_classes: int) -> None:
        super().__init__()
        check_head(512, width, num_classes)
        self.features = features
        self.conv6 = nn.Conv2d(512, width, 3, padding=1)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)
        self.new_layers: tuple[str, ...] = ("conv6", "fc")

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.avgpool(self.relu(self.conv6(self.features(x)))).flatten(1))


def wsol_vgg16(
    num_classes: int = 1000, weights: str | None = None, *, width: int = 1024, large_feature_map: bool = False
) -> VGG16Wsol:
    """Choe et al.'s VGG16: torchvision's VGG16 features without pool5 (and without pool4 when
    ``large_feature_map``), conv6 3x3 512 -> ``width`` (1024), ReLU, GAP, fc.  New layers: conv6, fc.
    Feature map: 14x14 at 224 px (stride 16); 28x28 (stride 8) with ``large_feature_map``."""
    skeleton = torchvision_skeleton("vgg16")
    layers = list(skeleton.features[:30])
    if large_feature_map:
        del layers[23]  # pool4
    with torch.device("meta"):
        net = VGG16Wsol(nn.Sequential(*layers), width, num_classes)
    return materialize(net, skeleton, pretrained_state("vgg16", weights), init="he")


def wsol_resnet50(num_classes: int = 1000, weights: str | None = None, *, large_feature_map: bool = False) -> nn.Module:
    """Choe et al.'s ResNet50: torchvision's ResNet50 with stride 1 in layer4 (and in layer3 when
    ``large_feature_map``; no dilation, as in their code), GAP, a fresh fc.  New layers: layer4, fc (the
    pretrained layer4 also trains at the higher rate in their code).
    Feature map: 14x14 at 224 px (stride 16); 28x28 (stride 8) with ``large_feature_map``."""
    check_head(2048, 2048, num_classes)
    net = torchvision_skeleton("resnet50", num_classes=num_classes)
    for layer in (net.layer3, net.layer4) if large_feature_map else (net.layer4,):
        layer[0].conv2.stride = (1, 1)
        layer[0].downsample[0].stride = (1, 1)
    state = pretrained_state("resnet50", weights)
    if state is not None:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    materialize(net, net, state, init="xavier")
    net.new_layers = ("layer4", "fc")
    return net


class _InceptionBStride1(nn.Module):
    """torchvision's InceptionB (Mixed_6a) as Choe et al. change it: stride 1 and padding 1 in its two strided
    convolutions and in its max pooling, so the block keeps the resolution (their ``InceptionB(288,
    kernel_size=3, stride=1, padding=1)``)."""

    def __init__(self, block: Any) -> None:
        super().__init__()
        self.branch3x3 = block.branch3x3
        self.branch3x3dbl_1 = block.branch3x3dbl_1
        self.branch3x3dbl_2 = block.branch3x3dbl_2
        self.branch3x3dbl_3 = block.branch3x3dbl_3
        for conv in (self.branch3x3.conv, self.branch3x3dbl_3.conv):
            conv.stride, conv.padding = (1, 1), (1, 1)

    def forward(self, x: Tensor) -> Tensor:
        double = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), double, F.max_pool2d(x, 3, stride=1, padding=1)], 1)


class InceptionV3Wsol(nn.Module):
    """Their ``InceptionCam``: torchvision's Inception3 blocks up to Mixed_6e with Conv2d_1a_3x3 padded by 1,
    both stem max poolings 3x3/stride 2/padding 1/ceil, a 3x3/stride 2/ceil pooling before Mixed_6a (dropped
    with ``large_feature_map``) and a stride-1 Mixed_6a; then dropout 0.5, SPG_A3_1b (3x3 768 -> ``width``,
    ReLU), dropout, SPG_A3_2b (3x3 ``width`` -> ``width``, ReLU), dropout, SPG_A4 (1x1 ``width`` -> classes) and
    GAP: the class maps come before the pooling, logit_c = mean_xy(SPG_A4(f))_c.  Like their code it feeds
    ImageNet-normalized input to the blocks (no ``transform_input``)."""

    def __init__(self, base: Any, width: int, num_classes: int, large_feature_map: bool, dropout: float = 0.5) -> None:
        super().__init__()
        check_head(768, width, num_classes)
        self.Conv2d_1a_3x3 = base.Conv2d_1a_3x3
        self.Conv2d_1a_3x3.conv.padding = (1, 1)
        self.Conv2d_2a_3x3 = base.Conv2d_2a_3x3
        self.Conv2d_2b_3x3 = base.Conv2d_2b_3x3
        self.maxpool1 = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.Conv2d_3b_1x1 = base.Conv2d_3b_1x1
        self.Conv2d_4a_3x3 = base.Conv2d_4a_3x3
        self.maxpool2 = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = base.Mixed_5b, base.Mixed_5c, base.Mixed_5d
        self.maxpool3 = nn.Identity() if large_feature_map else nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.Mixed_6a = _InceptionBStride1(base.Mixed_6a)
        self.Mixed_6b, self.Mixed_6c = base.Mixed_6b, base.Mixed_6c
        self.Mixed_6d, self.Mixed_6e = base.Mixed_6d, base.Mixed_6e
        self.dropout = nn.Dropout(dropout)
        self.SPG_A3_1b = nn.Sequential(nn.Conv2d(768, width, 3, padding=1), nn.ReLU(inplace=True))
        self.SPG_A3_2b = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True))
        self.SPG_A4 = nn.Conv2d(width, num_classes, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.new_layers: tuple[str, ...] = ("SPG_A3_1b", "SPG_A3_2b", "SPG_A4")

    def forward(self, x: Tensor) -> Tensor:
        x = inception_stages(self, x)[2]
        x = self.SPG_A3_1b(self.dropout(x))
        x = self.SPG_A3_2b(self.dropout(x))
        return self.avgpool(self.SPG_A4(self.dropout(x))).flatten(1)


# The modules of InceptionV3Wsol up to Mixed_6e: the trunk their ACoL and SPG networks share.
INCEPTION_TRUNK = (
    "Conv2d_1a_3x3",
    "Conv2d_2a_3x3",
    "Conv2d_2b_3x3",
    "maxpool1",
    "Conv2d_3b_1x1",
    "Conv2d_4a_3x3",
    "maxpool2",
    "Mixed_5b",
    "Mixed_5c",
    "Mixed_5d",
    "maxpool3",
    "Mixed_6a",
    "Mixed_6b",
    "Mixed_6c",
    "Mixed_6d",
    "Mixed_6e",
)


def inception_stages(net: Any, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The trunk of :class:`InceptionV3Wsol` (the modules :data:`INCEPTION_TRUNK` of ``net``) on ``x``.

    Args:
        net: a module holding the trunk's modules under their names.
        x: the input batch.

    Returns:
        (the input of Mixed_6a, the output of Mixed_6d, the output of Mixed_6e): where SPG's branches read.
    """
    x = net.maxpool1(net.Conv2d_2b_3x3(net.Conv2d_2a_3x3(net.Conv2d_1a_3x3(x))))
    x = net.maxpool2(net.Conv2d_4a_3x3(net.Conv2d_3b_1x1(x)))
    early = net.maxpool3(net.Mixed_5d(net.Mixed_5c(net.Mixed_5b(x))))
    late = net.Mixed_6d(net.Mixed_6c(net.Mixed_6b(net.Mixed_6a(early))))
    return early, late, net.Mixed_6e(late)


def wsol_inceptionv3(
    num_classes: int = 1000,
    weights: str | None = None,
    *,
    width: int = 1024,
    large_feature_map: bool = False,
    dropout: float = 0.5,
) -> InceptionV3Wsol:
    """Choe et al.'s InceptionV3 (see :class:`InceptionV3Wsol`), cut after Mixed_6e (768 channels).  New layers:
    SPG_A3_1b, SPG_A3_2b, SPG_A4.  Feature map: 14x14 at 224 px; 28x28 with ``large_feature_map``.  ``dropout``:
    the rate before each head convolution (their ADL variant has none: 0)."""
    skeleton = torchvision_skeleton("inception_v3", aux_logits=False, init_weights=False)
    with torch.device("meta"):
        net = InceptionV3Wsol(skeleton, width, num_classes, large_feature_map, dropout)
    return materialize(net, skeleton, pretrained_state("inception_v3", weights), init="xavier")
