"""Where a method hooks into a network: found from the network's structure and one probing forward pass, never
written into backbone files.

Choe et al.'s wsolevaluation places ADL layers and SPG branches inside each backbone file (``wsol/vgg.py``,
``resnet.py``, ``inception.py``).  Here the same positions are named on the built network: by the torchvision /
wsolevaluation module names of ResNet, VGG and Inception, and generically (the last blocks before the CAM feature
map) for ``gapnet`` and networks made by the general converter.  The module whose output a method changes or reads
is hooked; the hook objects deep-copy with the network (the web server copies it per worker).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..capture import GapHead, locate_gap_head, resolve_module
from ..errors import CamlensError

PROBE_SIZE = 224  # large enough for every backbone here (InceptionV3 needs 75 px); one pass at attach time


@dataclass
class Probe:
    """The GAP head found by :func:`camlens.capture.locate_gap_head` on a probing pass, and the output shapes of
    the modules asked for."""

    head: GapHead
    shapes: dict[str, torch.Size]


def probe(model: nn.Module, names: Sequence[str] = (), size: int = PROBE_SIZE) -> Probe:
    """One forward pass in eval mode without gradients on a fixed random (1, 3, size, size) input: the GAP head
    (feature layer and classifier) and the output shape of each module in ``names``."""
    shapes: dict[str, torch.Size] = {}
    handles = []
    for name in names:
        module = resolve_module(model, name)[1]
        handles.append(module.register_forward_hook(_shape_hook(shapes, name)))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            head, _, _ = locate_gap_head(model, x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return Probe(head, shapes)


def _shape_hook(shapes: dict[str, torch.Size], name: str) -> Callable:
    def record(module: nn.Module, args: tuple, output: Any) -> None:
        if isinstance(output, Tensor):
            shapes[name] = output.shape

    return record


def classifier_of(model: nn.Module, head: GapHead) -> nn.Module:
    """The live classifier module of ``head`` (its weights as they are now, not the probe's snapshot)."""
    return model.get_submodule(head.classifier_name)


def live_class_maps(model: nn.Module, head: GapHead, features: Tensor, classes: Tensor) -> Tensor:
    """M_c = sum_k w_k^c act(f_k) + b_c (B, N, h, w) with the classifier's current weights: the class maps of a
    GAP + linear head before pooling (the 1x1-convolution form of the classifier)."""
    cls = classifier_of(model, head)
    weight, bias = cls.weight, cls.bias
    assert isinstance(weight, Tensor)
    weight = weight.flatten(1)
    bias = bias if isinstance(bias, Tensor) else weight.new_zeros(weight.shape[0])
    f = torch.relu(features) if head.feature_act == "relu" else features
    return torch.einsum("bnk,bkhw->bnhw", weight[classes], f) + bias[classes][..., None, None]


def require_linear_head(method: str, head: GapHead) -> None:
    """A GAP + linear head, or a 1x1 convolution classifier before GAP without an activation (the same map)."""
    if head.norm is not None or head.class_act != "identity":
        raise CamlensError(
            f"{method} needs a network ending in GAP + one linear classifier; {head.classifier_name!r} "
            "follows a LayerNorm or is a 1x1 convolution with a ReLU before the pooling"
        )


def _is_sequential(model: nn.Module, name: str) -> bool:
    return isinstance(getattr(model, name, None), nn.Sequential)


def resnet_like(model: nn.Module) -> bool:
    return _is_sequential(model, "layer3") and _is_sequential(model, "layer4")


def inception_like(model: nn.Module) -> bool:
    return all(isinstance(getattr(model, n, None), nn.Module) for n in ("Mixed_5d", "Mixed_6d", "Mixed_6e"))


def vgg16_like(model: nn.Module) -> bool:
    features = getattr(model, "features", None)
    return isinstance(features, nn.Sequential) and sum(isinstance(m, nn.Conv2d) for m in features) == 13


def _vgg_conv_indices(features: nn.Sequential) -> list[int]:
    return [i for i, m in enumerate(features) if isinstance(m, nn.Conv2d)]


def adl_positions(model: nn.Module) -> list[str]:
    """The modules after which Choe et al.'s code puts an ADL layer (their ``_ADL_POSITION`` and configs):

    - ResNet: after block 0 of layer3 and blocks 0 and 2 of layer4;
    - VGG16: after pool3, after conv4_3 (before pool4, where it exists) and after conv5_3;
    - InceptionV3: after Mixed_5d, after Mixed_6e and on the CAM feature map (after their head's last conv);
    - anything else with a ``features`` module (gapnet, the CAM paper's conversions, ``gapify``): after its last two
      blocks when it ends at the CAM feature map, else after ``features`` and on the head's feature map; without
      one, on the CAM feature map alone."""
    if resnet_like(model):
        count = len(model.get_submodule("layer4"))  # type: ignore[arg-type]
        if count < 3:
            raise CamlensError(
                f"ADL: layer4 of {type(model).__name__} has {count} blocks; Choe et al. place "
                "ADL after its blocks 0 and 2"
            )
        return ["layer3.0", "layer4.0", "layer4.2"]
    if vgg16_like(model):
        features: nn.Sequential = model.features  # type: ignore[assignment]
        convs = _vgg_conv_indices(features)
        after_conv10 = max(i for i in range(convs[9], convs[10]) if not isinstance(features[i], nn.MaxPool2d))
        return [f"features.{convs[7] - 1}", f"features.{after_conv10}", f"features.{len(features) - 1}"]
    head = probe(model).head
    if inception_like(model):
        return ["Mixed_5d", "Mixed_6e", head.layer_name]
    blocks = _feature_blocks(model, head)
    if blocks is not None and blocks[1] and len(blocks[0]) >= 2:
        return blocks[0][-2:]
    if blocks is not None and not blocks[1] and blocks[0]:
        return ["features", head.layer_name]
    return [head.layer_name]


def _feature_blocks(model: nn.Module, head: GapHead) -> tuple[list[str], bool] | None:
    """The qualified names of the children of the network's ``features`` module (a Sequential, or the traced graph
    of a converted backbone), and whether ``features`` itself ends at the CAM feature map (gapnet) rather than
    feeding a head of its own (the CAM paper's conv + ReLU); None without a ``features`` module."""
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Module):
        return None
    names = [f"features.{n}" for n, _ in features.named_children()]
    return names, head.layer_name == "features" or head.layer_name.startswith("features.")


def spg_branch_points(model: nn.Module, head: GapHead) -> tuple[str, str]:
    """The two modules whose outputs feed SPG's side branches B1 and B2 (branch C reads the CAM feature map):

    - ResNet: after block 0 of layer3 and after layer3 (Choe et al.'s SPG_A1 / SPG_A2 split of layer3);
    - VGG16: after pool4 and after conv5_3 (their SPG_A_1 + pooling, SPG_A_2);
    - InceptionV3: after Mixed_5d and after Mixed_6d (where their code taps B1 and B2);
    - any other network with a ``features`` module (a Sequential or a converted backbone's traced graph): after its
      third- and second-to-last blocks when it ends at the CAM feature map (gapnet), else after its last two (the
      CAM paper's conversions and ``gapify``, whose own conv + ReLU give the map C reads)."""
    if resnet_like(model):
        return "layer3.0", "layer3"
    if inception_like(model):
        return "Mixed_5d", "Mixed_6d"
    features = getattr(model, "features", None)
    if vgg16_like(model):
        convs = _vgg_conv_indices(features)  # type: ignore[arg-type]
        pool4 = [i for i in range(convs[9], convs[10]) if isinstance(features[i], nn.MaxPool2d)]  # type: ignore[index]
        return f"features.{pool4[0] if pool4 else convs[10] - 1}", f"features.{len(features) - 1}"  # type: ignore[arg-type]
    blocks = _feature_blocks(model, head)
    if blocks is not None and len(blocks[0]) >= 3:
        names, at_end = blocks
        return (names[-3], names[-2]) if at_end else (names[-2], names[-1])
    raise CamlensError(
        f"SPG does not know where to place its side branches on {type(model).__name__}; "
        "give branches=(LAYER1, LAYER2), two layers before the CAM feature map"
    )


class ReplaceOutput:
    """Forward hook that passes a module's output through ``fn`` (an ADL layer); a plain object, so copying the
    network (``copy.deepcopy``) copies the layer it calls with it."""

    def __init__(self, fn: nn.Module) -> None:
        self.fn = fn

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        return self.fn(output)


class Taps:
    """Forward hooks that keep the outputs of some modules during :meth:`recording` (the training step that reads
    them), and nothing otherwise, so inference keeps no tensors alive."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.names = list(names)
        self.values: dict[str, Tensor] = {}
        self._on = False
        self._handles = [resolve_module(model, n)[1].register_forward_hook(_TapHook(self, n)) for n in self.names]

    def store(self, name: str, output: Any) -> None:
        if self._on:
            self.values[name] = output

    def recording(self) -> "_Recording":
        return _Recording(self)

    def take(self) -> list[Tensor]:
        missing = [n for n in self.names if n not in self.values]
        if missing:
            raise CamlensError(f"layers {missing} did not run in the forward pass")
        out = [self.values[n] for n in self.names]
        self.values.clear()
        return out

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


class _TapHook:
    def __init__(self, taps: Taps, name: str) -> None:
        self.taps, self.name = taps, name

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.taps.store(self.name, output)


class _Recording:
    def __init__(self, taps: Taps) -> None:
        self.taps = taps

    def __enter__(self) -> None:
        self.taps.values.clear()
        self.taps._on = True

    def __exit__(self, *exc: object) -> None:
        self.taps._on = False
