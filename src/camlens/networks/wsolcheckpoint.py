"""Reading the checkpoints of Choe et al.'s code (clovaai/wsolevaluation ``main.py``, ``Trainer._torch_save_model``:
``{'architecture': args.architecture, 'epoch': ..., 'state_dict': model.state_dict(), 'optimizer': ...}`` in a
``.pth.tar``; ``architecture`` is the backbone alone: ``vgg16``, ``resnet50`` or ``inception_v3``).

The state dict's key names tell the backbone and the network type their ``architecture_type`` chose (``cam`` for
CAM, HaS and CutMix, which train the same network; ``adl``, ``acol``, ``spg``), and the class count is the
classifier's row count.  ``large_feature_map`` changes tensor names only in VGG16's CAM and ADL layouts (pool4's
index is gone); elsewhere it changes strides and parameter-free poolings, which no tensor records, so it is taken
from the caller or, failing that, their default (False) with a warning.

ADL's layers have no parameters but sit inside their Sequentials, so their VGG16 and ResNet50 files number the
layers after them differently: :func:`camlens_state` renumbers those keys to camlens's networks, where ADL is
attached by hooks (:class:`camlens.training.wsol.ADLMethod`) at the same positions.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Mapping

from torch import Tensor

from ..errors import CamlensError

BACKBONES = {"vgg16": "wsol-vgg16", "resnet50": "wsol-resnet50", "inception_v3": "wsol-inceptionv3"}
LAYOUTS = ("cam", "adl", "acol", "spg")
# Which of their network types a camlens WSOL method needs (HaS and CutMix train their CAM network).
METHOD_LAYOUT = {"cam": "cam", "has": "cam", "cutmix": "cam", "adl": "adl", "acol": "acol", "spg": "spg"}

# Indices of the 13 convolutions in their VGG16 ``features`` (wsol/vgg.py, ``configs_dict`` through
# ``make_layers``): 'M' pools and 'A' ADL layers take one index each, a convolution two (with its ReLU).
VGG_CONVS = {
    ("cam", False): (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
    ("cam", True): (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 23, 25, 27),
    ("adl", False): (0, 2, 5, 7, 10, 12, 14, 18, 20, 22, 26, 28, 30),
    ("adl", True): (0, 2, 5, 7, 10, 12, 14, 18, 20, 22, 25, 27, 29),
}
# Their ResNet50 ADL (wsol/resnet.py, ``_ADL_POSITION``): an ADL after block 0 of layer3 and after blocks 0
# and 2 of layer4, so their block indices (left) are camlens's (right) shifted.
RESNET_ADL_BLOCKS = {"layer3": {0: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5}, "layer4": {0: 0, 2: 1, 3: 2}}


@dataclass(frozen=True)
class ReferenceLayout:
    """What a wsolevaluation state dict says about the network that wrote it.

    Attributes:
        backbone: their architecture name (``vgg16``, ``resnet50``, ``inception_v3``).
        layout: their network type (``cam``, ``adl``, ``acol``, ``spg``).
        large_feature_map: True/False where the key names tell, None where no tensor depends on it.
        num_classes: rows of the classifier.
    """

    backbone: str
    layout: str
    large_feature_map: bool | None
    num_classes: int

    @property
    def arch(self) -> str:
        """The camlens network that has this layout (``wsol-resnet50``, ``wsol-vgg16-acol``, ...)."""
        base = BACKBONES[self.backbone]
        return f"{base}-{self.layout}" if self.layout in ("acol", "spg") else base


def _vgg_conv_indices(state: Mapping[str, Tensor]) -> tuple[int, ...]:
    found = {int(m.group(1)) for k in state if (m := re.fullmatch(r"features\.(\d+)\.weight", k))}
    return tuple(sorted(found))


def _classifier_rows(state: Mapping[str, Tensor], key: str) -> int:
    return int(state[key].shape[0])


def read_layout(state: Mapping[str, Tensor], architecture: str | None = None) -> ReferenceLayout | None:
    """The :class:`ReferenceLayout` of a state dict with wsolevaluation's key names, or None when its keys are
    not theirs (or are also torchvision's: a ResNet50 CAM state dict without the ``architecture`` field).

    Args:
        state: the state dict (``module.`` prefixes removed).
        architecture: the checkpoint's ``architecture`` field, when it has one.

    Returns:
        The layout, or None.

    Raises:
        CamlensError: an ``architecture`` field they do not have, keys of another backbone than it names, or a
            VGG16 ``features`` numbering none of their configurations gives.
    """
    if architecture is not None and architecture not in BACKBONES:
        raise CamlensError(
            f"the checkpoint's architecture {architecture!r} is none of wsolevaluation's {', '.join(BACKBONES)}"
        )
    if "Mixed_6e.branch1x1.conv.weight" in state:
        backbone = "inception_v3"
    elif "layer1.0.conv1.weight" in state:
        backbone = "resnet50"
    elif "features.0.weight" in state and "classifier.0.weight" not in state:
        backbone = "vgg16"
    elif architecture is not None:
        raise CamlensError(
            f"the checkpoint says architecture {architecture!r} but its keys ({_sample(state)}) are "
            "not those of wsolevaluation's vgg16, resnet50 or inception_v3"
        )
    else:
        return None
    if architecture is not None and architecture != backbone:
        raise CamlensError(f"the checkpoint says architecture {architecture!r} but its keys are those of {backbone}")
    large: bool | None = None
    if "classifier_A.4.weight" in state:
        layout, rows = "acol", _classifier_rows(state, "classifier_A.4.weight")
    elif "SPG_B_1a.0.weight" in state or "SPG_C.0.weight" in state:
        layout = "spg"
        rows = _classifier_rows(state, "SPG_A_4.weight" if backbone == "vgg16" else "SPG_A4.weight")
    elif backbone == "vgg16":
        convs = _vgg_conv_indices(state)
        matches = [key for key, indices in VGG_CONVS.items() if indices == convs]
        if not matches or "fc.weight" not in state:
            raise CamlensError(
                f"VGG16 checkpoint: its features convolutions {list(convs)} and head "
                f"({'fc' if 'fc.weight' in state else 'no fc'}) match none of wsolevaluation's "
                "layouts (cam, adl; 14x14 or 28x28)"
            )
        ((layout, large),) = matches
        rows = _classifier_rows(state, "fc.weight")
    elif backbone == "resnet50":
        if "fc.weight" not in state:
            raise CamlensError(
                f"ResNet50 checkpoint without fc, classifier_A or SPG_A4 ({_sample(state)}): "
                "none of wsolevaluation's layouts"
            )
        layout = "adl" if "layer3.6.conv1.weight" in state else "cam"
        if layout == "cam" and architecture is None:
            return None  # torchvision's resnet50 has the same keys
        rows = _classifier_rows(state, "fc.weight")
    else:
        if "SPG_A4.weight" not in state:
            raise CamlensError(
                f"InceptionV3 checkpoint without SPG_A4 or classifier_A ({_sample(state)}): none "
                "of wsolevaluation's layouts"
            )
        layout, rows = "cam", _classifier_rows(state, "SPG_A4.weight")  # their ADL adds no keys
    return ReferenceLayout(backbone, layout, large, rows)


def _sample(state: Mapping[str, Tensor]) -> str:
    keys = list(state)
    return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")


def resolve(
    layout: ReferenceLayout, method: str | None, large_feature_map: bool | None, source: str
) -> tuple[ReferenceLayout, str]:
    """The layout with ``large_feature_map`` settled and the camlens WSOL method to attach, from what the file
    says and the caller's overrides (``method``: cam, has, cutmix, adl, acol, spg).

    Args:
        layout: :func:`read_layout`'s answer.
        method: the caller's WSOL method, or None to take the file's network type (``cam`` for cam, HaS, CutMix).
        large_feature_map: the caller's value, or None.
        source: the checkpoint's name, for messages.

    Returns:
        (the layout with a bool ``large_feature_map``, the method name).

    Raises:
        CamlensError: an unknown method, a method whose layers the checkpoint lacks, or a ``large_feature_map``
            the key names contradict.
    """
    name = method.lower() if method is not None else layout.layout
    if name not in METHOD_LAYOUT:
        raise CamlensError(f"--wsol-method {method!r}: choose from {', '.join(METHOD_LAYOUT)}")
    needed = METHOD_LAYOUT[name]
    if needed == "adl" and layout.backbone == "inception_v3":
        needed = "cam"  # their InceptionAdl has InceptionCam's keys
    if needed != layout.layout:
        what = {
            "acol": "ACoL's heads classifier_A and classifier_B",
            "spg": "SPG's SPG_B_1a, SPG_B_2a, SPG_B_shared and SPG_C branches",
            "adl": "ADL's renumbered layers",
            "cam": "the plain CAM network",
        }[needed]
        raise CamlensError(
            f"{source}: --wsol-method {name} needs {what}, but the checkpoint has wsolevaluation's "
            f"{layout.layout} layout of {layout.backbone}; drop --wsol-method or pass "
            f"{layout.layout}"
        )
    large = layout.large_feature_map
    if large is not None and large_feature_map is not None and large != large_feature_map:
        raise CamlensError(
            f"{source}: its VGG16 features numbering is that of large_feature_map={large}, "
            f"not {large_feature_map}; drop the large-feature-map option"
        )
    if large is None:
        large = large_feature_map
    if large is None:
        large = False
        warnings.warn(
            f"{source}: wsolevaluation files do not record large_feature_map for {layout.backbone} "
            f"({layout.layout}), and no tensor depends on it; assuming False (their default): pass "
            "--large-feature-map if it was trained with 28x28 maps",
            stacklevel=3,
        )
    return ReferenceLayout(layout.backbone, layout.layout, large, layout.num_classes), name


def camlens_state(state: Mapping[str, Tensor], layout: ReferenceLayout) -> dict[str, Tensor]:
    """``state`` with the keys of camlens's network for ``layout``: ADL's VGG16 and ResNet50 layers renumbered
    (:data:`VGG_CONVS`, :data:`RESNET_ADL_BLOCKS`), everything else unchanged.

    Args:
        state: their state dict.
        layout: its :class:`ReferenceLayout`, ``large_feature_map`` settled.

    Returns:
        A new dict with the same tensors.
    """
    if layout.layout != "adl" or layout.backbone == "inception_v3":
        return dict(state)
    out: dict[str, Tensor] = {}
    if layout.backbone == "vgg16":
        large = bool(layout.large_feature_map)
        moves = dict(zip(VGG_CONVS[("adl", large)], VGG_CONVS[("cam", large)]))
        for key, value in state.items():
            m = re.fullmatch(r"features\.(\d+)\.(.+)", key)
            out[f"features.{moves.get(int(m.group(1)), m.group(1))}.{m.group(2)}" if m else key] = value
        return out
    for key, value in state.items():
        m = re.fullmatch(r"(layer[34])\.(\d+)\.(.+)", key)
        if m and int(m.group(2)) in RESNET_ADL_BLOCKS[m.group(1)]:
            key = f"{m.group(1)}.{RESNET_ADL_BLOCKS[m.group(1)][int(m.group(2))]}.{m.group(3)}"
        out[key] = value
    return out


def misfit(expected: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> str | None:
    """What keeps ``state`` from loading into a model whose state dict is ``expected``.

    Args:
        expected: the model's state dict (meta tensors do: only names and shapes are read).
        state: the tensors to load.

    Returns:
        Missing keys, unused keys and the first shape that differs, in one line; None when it fits exactly.
    """
    missing = [k for k in expected if k not in state]
    unused = [k for k in state if k not in expected]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    if unused:
        parts.append(f"{len(unused)} unused key(s) ({', '.join(unused[:3])}{', ...' if len(unused) > 3 else ''})")
    for key, tensor in expected.items():
        if key in state and tuple(state[key].shape) != tuple(tensor.shape):
            parts.append(f"{key} is {tuple(state[key].shape)}, the network's {tuple(tensor.shape)}")
            break
    return "; ".join(parts) or None
