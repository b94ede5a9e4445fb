"""The CAM paper's networks (Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016).

Section 3: remove the layers after the last well-resolved convolution, then add a 3x3 convolution (stride 1,
pad 1, 1024 units), global average pooling and a linear classifier.  The authors' released models
(zhoubolei/CAM, ``deploy_vgg16CAM.prototxt``, ``deploy_googlenetCAM.prototxt``) use ``group: 2`` in that
convolution, which the paper's text does not mention: ``groups=2`` is the default here, ``groups=1`` builds the
plain convolution of the text.  The new convolution is initialized N(0, 0.01) as in those files, the backbone
from torchvision's ImageNet weights (``weights="DEFAULT"`` or a weight name; He initialization without).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from ._common import ConvGapNet, materialize, pretrained_state, torchvision_skeleton


def vgg16_cam(
    num_classes: int = 1000, weights: str | None = None, *, width: int = 1024, groups: int = 2, dropout: float = 0.5
) -> ConvGapNet:
    """VGG16-CAM: torchvision's VGG16 up to conv5_3 and its ReLU (``features.0``-``features.29``; pool5 and the
    fully connected layers removed), then conv 3x3/``width`` -> ReLU -> GAP -> dropout (``CAM_dropout`` of the
    release, 0.5) -> linear.  Feature map: 14x14 at 224 px (stride 16), ``width`` channels."""
    skeleton = torchvision_skeleton("vgg16")
    with torch.device("meta"):
        net = ConvGapNet(skeleton.features[:30], 512, width, num_classes, groups=groups, dropout=dropout)
    return materialize(
        net, skeleton, pretrained_state("vgg16", weights), init="he", head=net.new_layers, head_init="gauss"
    )


class ImageNetToUnitRange(nn.Module):
    """x * std / 0.5 + (mean - 0.5) / 0.5 per channel: ImageNet-normalized input rescaled to the [-1, 1]
    normalization that torchvision's GoogLeNet weights expect (its ``transform_input``)."""

    scale: Tensor
    shift: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) / 0.5, persistent=False)
        self.register_buffer(
            "shift", (torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) - 0.5) / 0.5, persistent=False
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


def googlenet_cam(
    num_classes: int = 1000, weights: str | None = None, *, width: int = 1024, groups: int = 2, dropout: float = 0.0
) -> ConvGapNet:
    """GoogLeNet-CAM: torchvision's GoogLeNet cut after ``inception4e`` (832 channels; pool4, inception5a/5b
    and the classifier removed), then conv 3x3/``width`` -> ReLU -> GAP -> linear (no dropout in the release).
    ``features.transform`` rescales the input as torchvision's ``transform_input`` does.
    Feature map: 14x14 at 224 px (stride 16)."""
    skeleton = torchvision_skeleton("googlenet", aux_logits=False, init_weights=False)
    names = [
        "conv1",
        "maxpool1",
        "conv2",
        "conv3",
        "maxpool2",
        "inception3a",
        "inception3b",
        "maxpool3",
        "inception4a",
        "inception4b",
        "inception4c",
        "inception4d",
        "inception4e",
    ]
    features = nn.Sequential(
        OrderedDict([("transform", ImageNetToUnitRange()), *((n, getattr(skeleton, n)) for n in names)])
    )
    with torch.device("meta"):
        net = ConvGapNet(features, 832, width, num_classes, groups=groups, dropout=dropout)
    return materialize(
        net, skeleton, pretrained_state("googlenet", weights), init="he", head=net.new_layers, head_init="gauss"
    )


def alexnet_cam(
    num_classes: int = 1000, weights: str | None = None, *, width: int = 1024, groups: int = 2, dropout: float = 0.5
) -> ConvGapNet:
    """AlexNet-CAM: torchvision's AlexNet up to conv5 and its ReLU (``features.0``-``features.11``), pool5
    replaced by a 3x3 max pooling of stride 1 and padding 1 (``features.12``) that keeps the 13x13 map the paper
    states, then conv 3x3/``width`` -> ReLU -> GAP -> dropout 0.5 -> linear.  (The released
    ``deploy_alexnetplusCAM`` pools 3x3/stride 1 without padding, 11x11 at 227 px, and adds two 512-unit
    convolutions; this follows the paper's text.)  Feature map: 13x13 at 224 px."""
    skeleton = torchvision_skeleton("alexnet")
    with torch.device("meta"):
        features = nn.Sequential(*skeleton.features[:12], nn.MaxPool2d(3, stride=1, padding=1))
        net = ConvGapNet(features, 256, width, num_classes, groups=groups, dropout=dropout)
    return materialize(
        net, skeleton, pretrained_state("alexnet", weights), init="he", head=net.new_layers, head_init="gauss"
    )
