"""The ACoL and SPG networks of Choe et al.'s code (clovaai/wsolevaluation ``wsol/vgg.py``, ``resnet.py``,
``inception.py``: ``VggAcol``, ``VggSpg``, ``ResNetAcol``, ``ResNetSpg``, ``InceptionAcol``, ``InceptionSpg``), with
their module names, so their checkpoints load with ``strict=True``, and their initialization.

Their ACoL gives each branch its own head on the backbone's features f: ``classifier_A`` and ``classifier_B`` are
each conv 3x3 (K -> 1024) -> ReLU -> conv 3x3 (1024 -> 1024) -> ReLU -> conv 1x1 (1024 -> classes), followed by GAP;
B reads f erased where A's min-max normalized map of the label reaches the threshold.  Their SPG puts the class maps
before the pooling (``SPG_A4``, a 1x1 convolution) and adds the side branches ``SPG_B_1a``, ``SPG_B_2a``,
``SPG_B_shared`` and ``SPG_C`` (one channel each, trained against pseudo masks; not used at inference).

Each network's ``forward`` returns the logits of classifier A (ACoL) or of ``SPG_A4`` (SPG); ACoL's map is read by
:class:`camlens.training.wsol.ACoLCAM` from :meth:`ACoLNet.trunk` and the two heads, SPG's is the CAM of ``SPG_A4``
(their ``return_cam``: ``feat_map[label]``).  ``new_layers`` are the layers their ``_set_optimizer`` trains at 10x
the learning rate (for ResNet50 that is layer4 only: their rule takes names containing ``layer4.`` or ``fc.``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import materialize, pretrained_state, torchvision_skeleton
from .wsolbench import INCEPTION_TRUNK, InceptionV3Wsol, inception_stages

ACOL_WIDTH = 1024  # their classifier_A / classifier_B hidden width


def acol_classifier(channels: int, num_classes: int, width: int = ACOL_WIDTH) -> nn.Sequential:
    """One ACoL branch of their code: conv 3x3 -> ReLU -> conv 3x3 -> ReLU -> conv 1x1 to the classes.

    Args:
        channels: channels of the features it reads.
        num_classes: output channels (one class map each).
        width: hidden width (theirs: 1024).

    Returns:
        The branch, keys ``0``, ``2``, ``4`` as theirs.
    """
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, num_classes, 1),
    )


def _conv_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True))


class ACoLNet(nn.Module):
    """Base of their ACoL networks: ``trunk(x)`` gives the features f, logits = GAP(classifier_A(f))."""

    classifier_A: nn.Sequential
    classifier_B: nn.Sequential

    def trunk(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _add_heads(self, channels: int, num_classes: int) -> None:
        self.classifier_A = acol_classifier(channels, num_classes)
        self.classifier_B = acol_classifier(channels, num_classes)
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.avgpool(self.classifier_A(self.trunk(x))).flatten(1)


class SPGNet(nn.Module):
    """Base of their SPG networks: ``spg_outputs(x)`` gives every output their loss reads, ``forward`` the
    logits alone (the side branches do not change them)."""

    SPG_B_1a: nn.Sequential
    SPG_B_2a: nn.Sequential
    last_outputs: dict[str, Tensor] | None = None
    SPG_B_shared: nn.Sequential
    SPG_C: nn.Sequential

    def stages(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B1's input, B2's input, the features before SPG_A4)."""
        raise NotImplementedError

    def _add_branches(self, b1: int, b2: int, width: int, c_in: int) -> None:
        self.SPG_B_1a = _conv_relu(b1, width)
        self.SPG_B_2a = _conv_relu(b2, width)
        self.SPG_B_shared = nn.Sequential(*_conv_relu(width, width), nn.Conv2d(width, 1, 1))
        self.SPG_C = nn.Sequential(*_conv_relu(c_in, 512), nn.Conv2d(512, 1, 1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.keep_outputs:  # their loss reads every output: keep them for it
            self.last_outputs = self.spg_outputs(x)
            return self.last_outputs["logits"]
        return self.avgpool(self.classifier(self.stages(x)[2])).flatten(1)

    @property
    def classifier(self) -> nn.Module:
        return self.get_submodule("SPG_A4" if hasattr(self, "SPG_A4") else "SPG_A_4")

    def spg_outputs(self, x: Tensor) -> dict[str, Tensor]:
        """``logits``, ``feat_map`` (the class maps), ``logits_b1``, ``logits_b2``, ``logits_c`` (one channel each,
        at the feature resolution), as their forward returns them."""
        x1, x2, features = self.stages(x)
        feat_map = self.classifier(features)
        return {
            "logits": self.avgpool(feat_map).flatten(1),
            "feat_map": feat_map,
            "logits_b1": self.SPG_B_shared(self.SPG_B_1a(x1)),
            "logits_b2": self.SPG_B_shared(self.SPG_B_2a(x2)),
            "logits_c": self.SPG_C(features),
        }


def _vgg_skeleton() -> Any:
    return torchvision_skeleton("vgg16")


class VGG16AcolWsol(ACoLNet):
    """Their ``VggAcol``: VGG16's convolutions with every 2x2 pooling replaced by 3x3/stride 2/padding 1 (pool4 by
    3x3/stride 1 with ``large_feature_map``) and a 3x3/stride 1 pooling after conv5_3 (``features.30``), then a 3x3
    average pooling (stride 1, padding 1), then the two ACoL heads on 512 channels.

    Args:
        features: their ``features`` Sequential (convolutions, ReLUs and poolings, their numbering).
        num_classes: rows of the classifiers.
    """

    def __init__(self, features: nn.Sequential, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self._add_heads(512, num_classes)
        self.new_layers: tuple[str, ...] = ("classifier_A", "classifier_B")

    def trunk(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(self.features(x), 3, stride=1, padding=1)


def wsol_vgg16_acol(
    num_classes: int = 1000, weights: str | None = None, *, large_feature_map: bool = False
) -> VGG16AcolWsol:
    """Choe et al.'s VGG16 for ACoL (:class:`VGG16AcolWsol`), initialized as theirs (Xavier, zero biases).
    Feature map: 14x14 at 224 px; 28x28 with ``large_feature_map``.

    Args:
        num_classes: rows of the classifier.
        weights: torchvision's ImageNet weights for the backbone (None or ``"none"``: random, as theirs with
            ``--pretrained FALSE``).
        large_feature_map: their option for 28x28 maps at 224 px.

    Returns:
        The network, its new layers in ``new_layers``.
    """
    skeleton = _vgg_skeleton()
    layers = list(skeleton.features[:31])
    with torch.device("meta"):
        for i in (4, 9, 16, 23):
            layers[i] = nn.MaxPool2d(3, stride=2, padding=1)
        if large_feature_map:
            layers[23] = nn.MaxPool2d(3, stride=1, padding=1)
        layers[30] = nn.MaxPool2d(3, stride=1, padding=1)
        net = VGG16AcolWsol(nn.Sequential(*layers), num_classes)
    return materialize(net, skeleton, pretrained_state("vgg16", weights), init="xavier")


class VGG16SpgWsol(SPGNet):
    """Their ``VggSpg``: VGG16 up to pool3 (``features``), conv4_1-4_3 as ``SPG_A_1``, a 3x3/stride 2/padding 1
    max pooling (none with ``large_feature_map``), conv5_1-5_3 as ``SPG_A_2``, two new 3x3 convolutions 512 -> 512
    (``SPG_A_3``), the 1x1 class maps ``SPG_A_4`` and GAP; B1 reads after the pooling, B2 after SPG_A_2, C after
    SPG_A_3 (all 512 wide).

    Args:
        features: VGG16's layers up to pool3.
        conv4: conv4_1-4_3 with their ReLUs.
        conv5: conv5_1-5_3 with their ReLUs.
        num_classes: rows of ``SPG_A_4``.
        large_feature_map: no pooling between conv4 and conv5.
    """

    def __init__(
        self,
        features: nn.Sequential,
        conv4: nn.Sequential,
        conv5: nn.Sequential,
        num_classes: int,
        large_feature_map: bool,
    ) -> None:
        super().__init__()
        self.features = features
        self.SPG_A_1 = conv4
        self.pool = nn.Identity() if large_feature_map else nn.MaxPool2d(3, stride=2, padding=1)
        self.SPG_A_2 = conv5
        self.SPG_A_3 = nn.Sequential(*_conv_relu(512, 512), *_conv_relu(512, 512))
        self.SPG_A_4 = nn.Conv2d(512, num_classes, 1)
        self._add_branches(512, 512, 512, 512)
        self.new_layers: tuple[str, ...] = (
            "SPG_A_1",
            "SPG_A_2",
            "SPG_A_3",
            "SPG_A_4",
            "SPG_B_1a",
            "SPG_B_2a",
            "SPG_B_shared",
            "SPG_C",
        )

    def stages(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x1 = self.pool(self.SPG_A_1(self.features(x)))
        x2 = self.SPG_A_2(x1)
        return x1, x2, self.SPG_A_3(x2)


def wsol_vgg16_spg(
    num_classes: int = 1000, weights: str | None = None, *, large_feature_map: bool = False
) -> VGG16SpgWsol:
    """Choe et al.'s VGG16 for SPG (:class:`VGG16SpgWsol`; conv4 and conv5 from the pretrained VGG16 as their
    ``batch_replace_layer`` maps them), initialized as theirs (Xavier, zero biases).  Feature map: 14x14 at
    224 px; 28x28 with ``large_feature_map``.

    Args:
        num_classes: rows of the classifier.
        weights: torchvision's ImageNet weights for the backbone (None or ``"none"``: random, as theirs with
            ``--pretrained FALSE``).
        large_feature_map: their option for 28x28 maps at 224 px.

    Returns:
        The network, its new layers in ``new_layers``.
    """
    skeleton = _vgg_skeleton()
    f = skeleton.features
    with torch.device("meta"):
        net = VGG16SpgWsol(
            nn.Sequential(*f[:17]), nn.Sequential(*f[17:23]), nn.Sequential(*f[24:30]), num_classes, large_feature_map
        )
    return materialize(net, skeleton, pretrained_state("vgg16", weights), init="xavier")


class _ResNetStem(nn.Module):
    def _take_stem(self, base: Any) -> None:
        self.conv1, self.bn1, self.relu, self.maxpool = base.conv1, base.bn1, base.relu, base.maxpool
        self.layer1, self.layer2 = base.layer1, base.layer2

    def stem(self, x: Tensor) -> Tensor:
        return self.layer2(self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x))))))


def _resnet_skeleton(large_feature_map: bool) -> Any:
    base = torchvision_skeleton("resnet50")
    for layer in (base.layer3, base.layer4) if large_feature_map else (base.layer4,):
        layer[0].conv2.stride = (1, 1)
        layer[0].downsample[0].stride = (1, 1)
    return base


def _resnet_state(weights: str | None) -> dict[str, Tensor] | None:
    state = pretrained_state("resnet50", weights)
    return None if state is None else {k: v for k, v in state.items() if not k.startswith("fc.")}


class ResNet50AcolWsol(ACoLNet, _ResNetStem):
    """Their ``ResNetAcol``: ResNet50 with stride 1 in layer4 (and layer3 with ``large_feature_map``), then the
    two ACoL heads on 2048 channels.

    Args:
        base: torchvision's ResNet50 with the strides set.
        num_classes: rows of the classifiers.
    """

    def __init__(self, base: Any, num_classes: int) -> None:
        super().__init__()
        self._take_stem(base)
        self.layer3, self.layer4 = base.layer3, base.layer4
        self._add_heads(2048, num_classes)
        self.new_layers: tuple[str, ...] = ("layer4",)

    def trunk(self, x: Tensor) -> Tensor:
        return self.layer4(self.layer3(self.stem(x)))


def wsol_resnet50_acol(
    num_classes: int = 1000, weights: str | None = None, *, large_feature_map: bool = False
) -> ResNet50AcolWsol:
    """Choe et al.'s ResNet50 for ACoL (:class:`ResNet50AcolWsol`), initialized as theirs (He, fan-out).
    Feature map: 14x14 at 224 px; 28x28 with ``large_feature_map``.

    Args:
        num_classes: rows of the classifier.
        weights: torchvision's ImageNet weights for the backbone (None or ``"none"``: random, as theirs with
            ``--pretrained FALSE``).
        large_feature_map: their option for 28x28 maps at 224 px.

    Returns:
        The network, its new layers in ``new_layers``.
    """
    base = _resnet_skeleton(large_feature_map)
    with torch.device("meta"):
        net = ResNet50AcolWsol(base, num_classes)
    return materialize(net, base, _resnet_state(weights), init="he")


class ResNet50SpgWsol(SPGNet, _ResNetStem):
    """Their ``ResNetSpg``: layer3 split into ``SPG_A1`` (its block 0) and ``SPG_A2`` (blocks 1-5), layer4, the
    1x1 class maps ``SPG_A4`` and GAP; B1 reads after SPG_A1, B2 after SPG_A2 (1024 wide), C after layer4
    (2048 -> 512).

    Args:
        base: torchvision's ResNet50 with the strides set.
        num_classes: rows of ``SPG_A4``.
    """

    def __init__(self, base: Any, num_classes: int) -> None:
        super().__init__()
        self._take_stem(base)
        self.SPG_A1 = nn.Sequential(base.layer3[0])
        self.SPG_A2 = nn.Sequential(*base.layer3[1:])
        self.layer4 = base.layer4
        self.SPG_A4 = nn.Conv2d(2048, num_classes, 1)
        self._add_branches(1024, 1024, 1024, 2048)
        self.new_layers: tuple[str, ...] = ("layer4",)

    def stages(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x1 = self.SPG_A1(self.stem(x))
        x2 = self.SPG_A2(x1)
        return x1, x2, self.layer4(x2)


def wsol_resnet50_spg(
    num_classes: int = 1000, weights: str | None = None, *, large_feature_map: bool = False
) -> ResNet50SpgWsol:
    """Choe et al.'s ResNet50 for SPG (:class:`ResNet50SpgWsol`), initialized as theirs (Xavier).
    Feature map: 14x14 at 224 px; 28x28 with ``large_feature_map``.

    Args:
        num_classes: rows of the classifier.
        weights: torchvision's ImageNet weights for the backbone (None or ``"none"``: random, as theirs with
            ``--pretrained FALSE``).
        large_feature_map: their option for 28x28 maps at 224 px.

    Returns:
        The network, its new layers in ``new_layers``.
    """
    base = _resnet_skeleton(large_feature_map)
    with torch.device("meta"):
        net = ResNet50SpgWsol(base, num_classes)
    return materialize(net, base, _resnet_state(weights), init="xavier")


class _InceptionTrunk(nn.Module):
    def _take_trunk(self, source: InceptionV3Wsol) -> None:
        for name in INCEPTION_TRUNK:
            self.add_module(name, source.get_submodule(name))


class InceptionV3AcolWsol(ACoLNet, _InceptionTrunk):
    """Their ``InceptionAcol``: the trunk of :class:`camlens.networks.wsolbench.InceptionV3Wsol` (up to Mixed_6e),
    then the two ACoL heads on 768 channels (no dropout).

    Args:
        source: an InceptionV3Wsol whose trunk it takes over.
        num_classes: rows of the classifiers.
    """

    def __init__(self, source: InceptionV3Wsol, num_classes: int) -> None:
        super().__init__()
        self._take_trunk(source)
        self._add_heads(768, num_classes)
        self.new_layers: tuple[str, ...] = ("classifier_A", "classifier_B")

    def trunk(self, x: Tensor) -> Tensor:
        return inception_stages(self, x)[2]


class InceptionV3SpgWsol(SPGNet, _InceptionTrunk):
    """Their ``InceptionSpg``: the trunk, dropout, SPG_A3_1b, SPG_A3_2b (1024 wide), SPG_A4 and GAP as in
    ``InceptionCam``; B1 reads the input of Mixed_6a (288 channels), B2 the output of Mixed_6d (768), both
    through 512-wide convolutions; C reads SPG_A3_2b's output (1024 -> 512).

    Args:
        source: an InceptionV3Wsol whose trunk it takes over.
        num_classes: rows of ``SPG_A4``.
    """

    def __init__(self, source: InceptionV3Wsol, num_classes: int) -> None:
        super().__init__()
        self._take_trunk(source)
        self.dropout = nn.Dropout(0.5)
        self.SPG_A3_1b = _conv_relu(768, 1024)
        self.SPG_A3_2b = _conv_relu(1024, 1024)
        self.SPG_A4 = nn.Conv2d(1024, num_classes, 1)
        self._add_branches(288, 768, 512, 1024)
        self.new_layers: tuple[str, ...] = (
            "SPG_A3_1b",
            "SPG_A3_2b",
            "SPG_A4",
            "SPG_B_1a",
            "SPG_B_2a",
            "SPG_B_shared",
            "SPG_C",
        )

    def stages(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        early, late, out = inception_stages(self, x)
        return early, late, self.dropout(self.SPG_A3_2b(self.dropout(self.SPG_A3_1b(self.dropout(out)))))


def _inception(cls: Any, num_classes: int, weights: str | None, large_feature_map: bool) -> Any:
    skeleton = torchvision_skeleton("inception_v3", aux_logits=False, init_weights=False)
    with torch.device("meta"):
        net = cls(InceptionV3Wsol(skeleton, 1024, num_classes, large_feature_map), num_classes)
    return materialize(net, skeleton, pretrained_state("inception_v3", weights), init="xavier")


def wsol_inceptionv3_acol(
    num_classes: int = 1000, weights: str | None = None, *, large_feature_map: bool = False
) -> InceptionV3AcolWsol:
    """Choe et al.'s InceptionV3 for ACoL (:class:`InceptionV3AcolWsol`), initialized as theirs (Xavier).
    Feature map: 14x14 at 224 px; 28x28 with ``large_feature_map``.

    Args:
        num_classes: rows of the classifier.
        weights: torchvision's ImageNet weights for the backbone (None or ``"none"``: random, as theirs with
            ``--pretrained FALSE``).
        large_feature_map: their option for 28x28 maps at 224 px.

    Returns:
        The network, its new layers in ``new_layers``.
    """
    return _inception(InceptionV3AcolWsol, num_classes, weights, large_feature_map)


def wsol_inceptionv3_spg(
    num_classes: int = 1000, weights: str | None = None, *, large_feature_map: bool = False
) -> InceptionV3SpgWsol:
    """Choe et al.'s InceptionV3 for SPG (:class:`InceptionV3SpgWsol`), initialized as theirs (Xavier).
    Feature map: 14x14 at 224 px; 28x28 with ``large_feature_map``.

    Args:
        num_classes: rows of the classifier.
        weights: torchvision's ImageNet weights for the backbone (None or ``"none"``: random, as theirs with
            ``--pretrained FALSE``).
        large_feature_map: their option for 28x28 maps at 224 px.

    Returns:
        The network, its new layers in ``new_layers``.
    """
    return _inception(InceptionV3SpgWsol, num_classes, weights, large_feature_map)
