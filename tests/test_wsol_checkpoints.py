"""Checkpoints of Choe et al.'s code (clovaai/wsolevaluation) load with no flags and give their logits and maps.

The state dicts are made here, key by key, from their source (read at github.com/clovaai/wsolevaluation):
- ``wsol/vgg.py``: ``configs_dict`` + ``make_layers`` (the ``features`` numbering), ``VggCam``, ``VggAcol``,
  ``VggSpg`` (their ``__init__`` for the head keys and shapes, ``forward`` for the maths);
- ``wsol/resnet.py``: ``Bottleneck``, ``ResNetCam``/``ResNetAcol``/``ResNetSpg``/``ResNetAdl`` (``_make_layer``
  with ``_ADL_POSITION`` inserting ADL into the Sequentials, ``ResNetSpg._make_layer(split=True)``);
- ``wsol/inception.py``: ``InceptionCam``/``InceptionAcol``/``InceptionSpg``/``InceptionAdl`` (their blocks keep
  torchvision's module names, ``Original code: torchvision/models/inception.py``, so the trunk keys are taken from
  torchvision's model; the heads are written out);
- ``wsol/method/acol.py`` (``_acol_logits``, ``_erase_attention``), ``wsol/method/util.py`` (``normalize_tensor``),
  ``main.py`` (``_torch_save_model``: ``{'architecture', 'epoch', 'state_dict', 'optimizer'}``).
Their forward passes are re-implemented below in float64 with torch.nn.functional, from that source.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import camlens.models as models
from camlens import CamlensError
from camlens.cli import main
from camlens.models import load_model
from camlens.networks import build_network
from camlens.networks._common import skeleton_only, torchvision_skeleton
from camlens.networks.wsolcheckpoint import camlens_state, misfit, read_layout, resolve
from camlens.wsolnet import build_explainer

C = 3  # classes
ACOL_THRESHOLD = 0.6  # not in their files: given as --wsol-param threshold=0.6 (theirs: --acol_threshold)
ARCH = {"vgg16": "vgg16", "resnet50": "resnet50", "inception_v3": "inception_v3"}

# wsol/vgg.py configs_dict
VGG_CFG = {
    ("cam", False): [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    ("cam", True): [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, 512, 512, 512],
    ("acol", False): [64, 64, "M1", 128, 128, "M1", 256, 256, 256, "M1", 512, 512, 512, "M1", 512, 512, 512, "M2"],
    ("acol", True): [64, 64, "M1", 128, 128, "M1", 256, 256, 256, "M1", 512, 512, 512, "M2", 512, 512, 512, "M2"],
    ("spg", False): [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"],
    ("spg", True): [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"],
    ("adl", False): [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", "A", 512, 512, 512, "A", "M", 512, 512, 512, "A"],
    ("adl", True): [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", "A", 512, 512, 512, "A", 512, 512, 512, "A"],
}
RESNET_BLOCKS = (3, 4, 6, 3)
RESNET_ADL = ([], [], [], [0], [0, 2])  # wsol/resnet.py _ADL_POSITION


# ---- their key layouts: (key, shape) in order ----


def _conv(name: str, cout: int, cin: int, k: int, bias: bool = True) -> list[tuple[str, tuple]]:
    return [(f"{name}.weight", (cout, cin, k, k))] + ([(f"{name}.bias", (cout,))] if bias else [])


def _bn(name: str, c: int) -> list[tuple[str, tuple]]:
    return [(f"{name}.{k}", (c,)) for k in ("weight", "bias", "running_mean", "running_var")] + [
        (f"{name}.num_batches_tracked", ())
    ]


def _acol_heads(cin: int) -> list[tuple[str, tuple]]:
    return [
        kv
        for b in "AB"
        for kv in _conv(f"classifier_{b}.0", 1024, cin, 3)
        + _conv(f"classifier_{b}.2", 1024, 1024, 3)
        + _conv(f"classifier_{b}.4", C, 1024, 1)
    ]


def _spg_sides(b1: int, b2: int, width: int, c_in: int) -> list[tuple[str, tuple]]:
    return (
        _conv("SPG_B_1a.0", width, b1, 3)
        + _conv("SPG_B_2a.0", width, b2, 3)
        + _conv("SPG_B_shared.0", width, width, 3)
        + _conv("SPG_B_shared.2", 1, width, 1)
        + _conv("SPG_C.0", 512, c_in, 3)
        + _conv("SPG_C.2", 1, 512, 1)
    )


def vgg_keys(layout: str, large: bool) -> list[tuple[str, tuple]]:
    keys, cin, index = [], 3, 0
    for v in VGG_CFG[(layout, large)]:
        if isinstance(v, int):
            keys += _conv(f"features.{index}", v, cin, 3)
            cin, index = v, index + 2
        else:
            index += 1
    if layout in ("cam", "adl"):
        return keys + _conv("conv6", 1024, 512, 3) + [("fc.weight", (C, 1024)), ("fc.bias", (C,))]
    if layout == "acol":
        return keys + _acol_heads(512)
    for i, (a, b) in enumerate([(256, 512), (512, 512), (512, 512)]):
        keys += _conv(f"SPG_A_1.{2 * i}", b, a if i == 0 else 512, 3)
    for i in range(3):
        keys += _conv(f"SPG_A_2.{2 * i}", 512, 512, 3)
    keys += _conv("SPG_A_3.0", 512, 512, 3) + _conv("SPG_A_3.2", 512, 512, 3) + _conv("SPG_A_4", C, 512, 1)
    return keys + _spg_sides(512, 512, 512, 512)


def _resnet_block_names(layout: str) -> list[list[str]]:
    """Their prefix of every bottleneck, layer by layer."""
    names = []
    for layer, count in enumerate(RESNET_BLOCKS, 1):
        if layout == "spg" and layer == 3:
            names.append(["SPG_A1.0"] + [f"SPG_A2.{j - 1}" for j in range(1, count)])
            continue
        shift = RESNET_ADL[layer] if layout == "adl" else []
        names.append([f"layer{layer}.{j + sum(p < j for p in shift)}" for j in range(count)])
    return names


def resnet_keys(layout: str) -> list[tuple[str, tuple]]:
    keys = _conv("conv1", 64, 3, 7, bias=False) + _bn("bn1", 64)
    inplanes = 64
    for planes, blocks in zip((64, 128, 256, 512), _resnet_block_names(layout)):
        for j, name in enumerate(blocks):
            keys += _conv(f"{name}.conv1", planes, inplanes, 1, False) + _bn(f"{name}.bn1", planes)
            keys += _conv(f"{name}.conv2", planes, planes, 3, False) + _bn(f"{name}.bn2", planes)
            keys += _conv(f"{name}.conv3", 4 * planes, planes, 1, False) + _bn(f"{name}.bn3", 4 * planes)
            if j == 0:
                keys += _conv(f"{name}.downsample.0", 4 * planes, inplanes, 1, False) + _bn(
                    f"{name}.downsample.1", 4 * planes
                )
            inplanes = 4 * planes
    if layout in ("cam", "adl"):
        return keys + [("fc.weight", (C, 2048)), ("fc.bias", (C,))]
    if layout == "acol":
        return keys + _acol_heads(2048)
    return keys + _conv("SPG_A4", C, 2048, 1) + _spg_sides(1024, 1024, 1024, 2048)


def inception_keys(layout: str) -> list[tuple[str, tuple]]:
    trunk = torchvision_skeleton("inception_v3", aux_logits=False, init_weights=False).state_dict()
    keys = [(k, tuple(v.shape)) for k, v in trunk.items() if k.startswith(("Conv2d_", "Mixed_5", "Mixed_6"))]
    if layout == "acol":
        return keys + _acol_heads(768)
    keys += _conv("SPG_A3_1b.0", 1024, 768, 3) + _conv("SPG_A3_2b.0", 1024, 1024, 3) + _conv("SPG_A4", C, 1024, 1)
    return keys + (_spg_sides(288, 768, 512, 1024) if layout == "spg" else [])


def their_keys(backbone: str, layout: str, large: bool) -> list[tuple[str, tuple]]:
    if backbone == "vgg16":
        return vgg_keys(layout, large)
    return resnet_keys(layout) if backbone == "resnet50" else inception_keys(layout)


def their_state(backbone: str, layout: str, large: bool, seed: int = 0) -> dict[str, Tensor]:
    """Random weights with their keys and shapes, scaled so activations stay O(1) through the network."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in their_keys(backbone, layout, large):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif len(shape) == 1:
            state[key] = 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = math.prod(shape[1:])
            state[key] = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
    for key in [k for k in state if k.endswith("running_var")]:  # BatchNorm variances and scales
        for name in (key, key.replace("running_var", "weight")):
            state[name] = torch.rand(state[name].shape, generator=g) + 0.5
    return state


# ---- their forward passes, float64 ----


def _c(sd: dict, name: str, x: Tensor, stride: int = 1, padding: int = 0) -> Tensor:
    bias = sd.get(f"{name}.bias")
    return F.conv2d(x, sd[f"{name}.weight"].double(), None if bias is None else bias.double(), stride, padding)


def _bn_f(sd: dict, name: str, x: Tensor, eps: float = 1e-5) -> Tensor:
    return F.batch_norm(
        x,
        sd[f"{name}.running_mean"].double(),
        sd[f"{name}.running_var"].double(),
        sd[f"{name}.weight"].double(),
        sd[f"{name}.bias"].double(),
        False,
        0.0,
        eps,
    )


def _norm(m: Tensor) -> Tensor:  # normalize_tensor on one map per row
    flat = m.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo)).view_as(m)


def _acol(sd: dict, feature: Tensor, label: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    def head(b: str, f: Tensor) -> Tensor:
        x = F.relu(_c(sd, f"classifier_{b}.0", f, padding=1))
        return _c(sd, f"classifier_{b}.4", F.relu(_c(sd, f"classifier_{b}.2", x, padding=1)))

    rows = torch.arange(len(label))
    a = head("A", feature)
    attention = _norm(a[rows, label])[:, None]
    b = head("B", feature * (attention < threshold).double())
    return a.mean((2, 3)), torch.maximum(_norm(a[rows, label]), _norm(b[rows, label]))


def vgg_forward(sd: dict, layout: str, large: bool, x: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
    index = 0
    for v in VGG_CFG[(layout, large)]:
        if isinstance(v, int):
            x, index = F.relu(_c(sd, f"features.{index}", x, padding=1)), index + 2
            continue
        x = {
            "M": lambda t: F.max_pool2d(t, 2, 2),
            "M1": lambda t: F.max_pool2d(t, 3, 2, 1),
            "M2": lambda t: F.max_pool2d(t, 3, 1, 1),
            "A": lambda t: t,
        }[v](x)
        index += 1
    rows = torch.arange(len(label))
    if layout in ("cam", "adl"):
        x = F.relu(_c(sd, "conv6", x, padding=1))
        logits = F.linear(x.mean((2, 3)), sd["fc.weight"].double(), sd["fc.bias"].double())
        return logits, (sd["fc.weight"].double()[label][:, :, None, None] * x).mean(1)
    if layout == "acol":
        return _acol(sd, F.avg_pool2d(x, 3, 1, 1), label, ACOL_THRESHOLD)
    for i in (0, 2, 4):
        x = F.relu(_c(sd, f"SPG_A_1.{i}", x, padding=1))
    if not large:
        x = F.max_pool2d(x, 3, 2, 1)
    for i in (0, 2, 4):
        x = F.relu(_c(sd, f"SPG_A_2.{i}", x, padding=1))
    for i in (0, 2):
        x = F.relu(_c(sd, f"SPG_A_3.{i}", x, padding=1))
    feat_map = _c(sd, "SPG_A_4", x)
    return feat_map.mean((2, 3)), feat_map[rows, label]


def resnet_forward(sd: dict, layout: str, large: bool, x: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
    x = F.max_pool2d(F.relu(_bn_f(sd, "bn1", _c(sd, "conv1", x, 2, 3))), 3, 2, 1)
    for layer, blocks in enumerate(_resnet_block_names(layout), 1):
        for j, name in enumerate(blocks):
            stride = {1: 1, 2: 2, 3: 1 if large else 2, 4: 1}[layer] if j == 0 else 1
            out = F.relu(_bn_f(sd, f"{name}.bn1", _c(sd, f"{name}.conv1", x)))
            out = F.relu(_bn_f(sd, f"{name}.bn2", _c(sd, f"{name}.conv2", out, stride, 1)))
            out = _bn_f(sd, f"{name}.bn3", _c(sd, f"{name}.conv3", out))
            identity = _bn_f(sd, f"{name}.downsample.1", _c(sd, f"{name}.downsample.0", x, stride)) if j == 0 else x
            x = F.relu(out + identity)
    rows = torch.arange(len(label))
    if layout in ("cam", "adl"):
        logits = F.linear(x.mean((2, 3)), sd["fc.weight"].double(), sd["fc.bias"].double())
        return logits, (sd["fc.weight"].double()[label][:, :, None, None] * x).mean(1)
    if layout == "acol":
        return _acol(sd, x, label, ACOL_THRESHOLD)
    feat_map = _c(sd, "SPG_A4", x)
    return feat_map.mean((2, 3)), feat_map[rows, label]


def inception_forward(sd: dict, layout: str, large: bool, x: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
    """Their InceptionCam/Acol/Spg forward; torchvision's InceptionA/C blocks (the same modules by their
    "Original code" note) run the mixed layers, Mixed_6a's stride-1 form and the stem are written out."""
    tv = torchvision_skeleton("inception_v3", aux_logits=False, init_weights=False)
    tv.load_state_dict({k: v for k, v in sd.items() if k.startswith(("Conv2d_", "Mixed_"))}, strict=False, assign=True)
    tv = tv.double().eval()

    def basic(name: str, t: Tensor, stride: int = 1, padding: int = 0) -> Tensor:
        return F.relu(_bn_f(sd, f"{name}.bn", _c(sd, f"{name}.conv", t, stride, padding), eps=0.001))

    x = basic("Conv2d_1a_3x3", x, 2, 1)
    x = basic("Conv2d_2b_3x3", basic("Conv2d_2a_3x3", x), 1, 1)
    x = F.max_pool2d(x, 3, 2, 1, ceil_mode=True)
    x = basic("Conv2d_4a_3x3", basic("Conv2d_3b_1x1", x))
    x = F.max_pool2d(x, 3, 2, 1, ceil_mode=True)
    x = tv.Mixed_5d(tv.Mixed_5c(tv.Mixed_5b(x)))
    if not large:
        x = F.max_pool2d(x, 3, 2, ceil_mode=True)
    b = basic("Mixed_6a.branch3x3dbl_2", basic("Mixed_6a.branch3x3dbl_1", x), 1, 1)
    x = torch.cat(
        [basic("Mixed_6a.branch3x3", x, 1, 1), basic("Mixed_6a.branch3x3dbl_3", b, 1, 1), F.max_pool2d(x, 3, 1, 1)], 1
    )
    feature = tv.Mixed_6e(tv.Mixed_6d(tv.Mixed_6c(tv.Mixed_6b(x))))
    if layout == "acol":
        return _acol(sd, feature, label, ACOL_THRESHOLD)
    x = F.relu(_c(sd, "SPG_A3_2b.0", F.relu(_c(sd, "SPG_A3_1b.0", feature, padding=1)), padding=1))
    feat_map = _c(sd, "SPG_A4", x)
    return feat_map.mean((2, 3)), feat_map[torch.arange(len(label)), label]


FORWARD = {"vgg16": vgg_forward, "resnet50": resnet_forward, "inception_v3": inception_forward}
SIZE = {"vgg16": 64, "resnet50": 64, "inception_v3": 64}


@pytest.fixture
def reads(monkeypatch):
    """load_model reading a state dict from memory, with the ``architecture`` field their main.py writes."""

    def use(state: dict, architecture: str | None) -> None:
        meta = {} if architecture is None else {"wsolevaluation": {"architecture": architecture, "epoch": 1}}
        monkeypatch.setattr(models, "_read_state", lambda path: (dict(state), dict(meta)))

    return use


# ---- every backbone x layout x size: keys and shapes (meta tensors, no arithmetic) ----


@pytest.mark.parametrize("large", [False, True])
@pytest.mark.parametrize("layout", ["cam", "adl", "acol", "spg"])
@pytest.mark.parametrize("backbone", ["vgg16", "resnet50", "inception_v3"])
def test_every_reference_layout_is_recognised_and_fits_exactly(backbone, layout, large):
    state = {k: torch.empty(shape, device="meta") for k, shape in their_keys(backbone, layout, large)}
    found = read_layout(state, backbone)
    file_layout = "cam" if (backbone, layout) == ("inception_v3", "adl") else layout  # their InceptionAdl: no new keys
    assert (found.backbone, found.layout, found.num_classes) == (backbone, file_layout, C)
    # large_feature_map renames keys only in VGG16's cam and adl features; elsewhere the file cannot tell
    assert found.large_feature_map == (large if backbone == "vgg16" and layout in ("cam", "adl") else None)
    stated = "adl" if file_layout != layout else None  # only InceptionV3's ADL needs saying
    settled, method = resolve(found, stated, large, "f")
    assert method == layout
    with skeleton_only():
        net = build_network(settled.arch, C, None, large_feature_map=large)
    assert misfit(net.state_dict(), camlens_state(state, settled)) is None


# ---- numeric equality on every backbone x layout x feature-map size ----

CASES = [
    (backbone, layout, large)
    for backbone in ("vgg16", "resnet50", "inception_v3")
    for layout in ("cam", "adl", "acol", "spg")
    for large in (False, True)
]


@pytest.mark.parametrize("backbone,layout,large", CASES)
def test_logits_and_maps_equal_their_forward_and_return_cam(reads, backbone, layout, large):
    state = their_state(backbone, layout, large)
    reads(state, backbone)
    flag = None if backbone == "vgg16" and layout in ("cam", "adl") else large  # VGG16 cam/adl: read from the keys
    # the file says which method, except ADL on InceptionV3 (no ADL key there: the same keys as CAM)
    stated = "adl" if (backbone, layout) == ("inception_v3", "adl") else None
    loaded = load_model(
        "ckpt.pth.tar",
        large_feature_map=flag,
        wsol_method=stated,
        wsol_params={"threshold": ACOL_THRESHOLD} if layout == "acol" else None,
    )
    assert loaded.arch == {
        "acol": f"wsol-{backbone.replace('_', '')}-acol",
        "spg": f"wsol-{backbone.replace('_', '')}-spg",
    }.get(layout, f"wsol-{backbone.replace('_', '')}")
    assert loaded.meta["wsol_method"]["name"] == layout and hasattr(loaded.model, "wsol_adl") == (layout == "adl")
    x = torch.randn(2, 3, SIZE[backbone], SIZE[backbone], generator=torch.Generator().manual_seed(1))
    result = build_explainer(loaded.model)(x)  # the network's own forward gives its logits
    labels = result.classes[:, 0]
    assert torch.equal(labels, result.logits.argmax(1))
    with torch.no_grad():
        ref_logits, ref_maps = FORWARD[backbone](state, layout, large, x.double(), labels)
    scale = float(ref_logits.abs().max())
    assert torch.allclose(result.logits.double(), ref_logits, atol=1e-4 * scale, rtol=0)
    maps = result.maps[:, 0].double()
    assert maps.shape == ref_maps.shape
    side = SIZE[backbone] // (8 if large else 16)
    assert maps.shape[-1] == side  # the strides of the file's large_feature_map
    if backbone != "inception_v3" and layout in ("cam", "adl"):
        ref_maps = ref_maps * (1024 if backbone == "vgg16" else 2048)  # theirs: mean over K of w_k f_k, no bias
    atol = 1e-4 * float(ref_maps.abs().max()) if layout != "acol" else 1e-4
    assert torch.allclose(maps, ref_maps, atol=atol, rtol=0)


# ---- bad input: one-line errors ----


def test_keys_of_no_known_layout_are_a_one_line_error(reads):
    reads({"encoder.weight": torch.zeros(2, 2)}, None)
    with pytest.raises(CamlensError, match="no wsolevaluation layout; pass --arch") as err:
        load_model("x.pth")
    assert "\n" not in str(err.value)
    reads({"encoder.weight": torch.zeros(2, 2)}, "vgg16")
    with pytest.raises(CamlensError, match="says architecture 'vgg16' but its keys"):
        load_model("x.pth")


def test_vgg_numbering_of_no_configuration_is_named():
    state = {k: torch.empty(s, device="meta") for k, s in vgg_keys("cam", False)}
    state["features.26.weight"] = state.pop("features.28.weight")
    with pytest.raises(CamlensError, match=r"features convolutions \[0, 2, 5, .*26\] .* match none"):
        read_layout(state, "vgg16")


def test_acol_file_without_its_second_branch_names_the_missing_keys(reads):
    state = {k: v for k, v in their_state("inception_v3", "acol", False).items() if not k.startswith("classifier_B")}
    reads(state, "inception_v3")
    with pytest.raises(
        CamlensError,
        match=r"does not fit wsol-inceptionv3-acol .*6 missing key\(s\) "
        r"\(classifier_B\.0\.weight",
    ):
        load_model("acol.pth.tar", large_feature_map=False)


@pytest.mark.parametrize(
    "method,needs",
    [
        ("acol", "ACoL's heads classifier_A and classifier_B"),
        ("spg", "SPG's SPG_B_1a"),
        ("adl", "ADL's renumbered layers"),
    ],
)
def test_a_method_whose_layers_the_file_lacks_is_an_error(method, needs):
    state = {k: torch.empty(s, device="meta") for k, s in vgg_keys("cam", False)}
    with pytest.raises(CamlensError, match=f"--wsol-method {method} needs {needs}"):
        resolve(read_layout(state, "vgg16"), method, None, "vgg16_cam.pth.tar")


def test_overrides_the_file_contradicts_are_errors(reads):
    state = {k: torch.empty(s, device="meta") for k, s in vgg_keys("cam", True)}
    with pytest.raises(CamlensError, match="large_feature_map=True, not False"):
        resolve(read_layout(state, "vgg16"), None, False, "f")
    reads(their_state("resnet50", "cam", False), "resnet50")
    with pytest.raises(CamlensError, match="--arch resnet50 would run it with other strides"):
        load_model("resnet50_cam.pth.tar", arch="resnet50")
    with pytest.raises(CamlensError, match=r"not wsol-vgg16: drop --arch"):
        load_model("resnet50_cam.pth.tar", arch="wsol-vgg16", large_feature_map=False)


def test_unrecorded_large_feature_map_warns_and_the_flag_sets_the_strides(reads):
    reads(their_state("resnet50", "cam", False), "resnet50")
    with pytest.warns(UserWarning, match="do not record large_feature_map for resnet50"):
        small = load_model("resnet50_cam.pth.tar")
    large = load_model("resnet50_cam.pth.tar", large_feature_map=True, wsol_method="cutmix")
    x = torch.randn(1, 3, 64, 64)
    assert build_explainer(small.model)(x).maps.shape[-1] == 4
    assert build_explainer(large.model)(x).maps.shape[-1] == 8
    assert large.meta["wsol_method"]["name"] == "cutmix" and large.meta["arch_options"]["large_feature_map"]


def test_cli_explains_localizes_a_pth_tar_with_no_flags(tmp_path, capsys):
    from PIL import Image

    torch.save(
        {
            "architecture": "vgg16",
            "epoch": 9,
            "state_dict": {f"module.{k}": v for k, v in their_state("vgg16", "cam", True).items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "nesterov": True, "params": [0]}]},
        },
        tmp_path / "vgg16_cam.pth.tar",
    )
    Image.new("RGB", (48, 40), (120, 30, 200)).save(tmp_path / "a.png")
    common = ["--checkpoint", str(tmp_path / "vgg16_cam.pth.tar"), "--size", "64", "--quiet"]
    assert main(["explain", str(tmp_path / "a.png"), *common, "--out", str(tmp_path / "e")]) == 0
    assert main(["localize", str(tmp_path / "a.png"), *common, "--out", str(tmp_path / "l")]) == 0
    assert (tmp_path / "l" / "boxes.json").is_file()
    assert (
        main(["explain", str(tmp_path / "a.png"), *common, "--wsol-method", "spg", "--out", str(tmp_path / "x")]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("camlens: error: ") and "--wsol-method spg needs SPG's" in err[-1]


# ---- training on their networks: their losses' inputs ----


def _their_network(backbone: str, layout: str, large: bool):
    state = their_state(backbone, layout, large)
    settled, _ = resolve(read_layout(state, backbone), None, large, "f")
    with skeleton_only():
        net = build_network(settled.arch, C, None, large_feature_map=large)
    net.load_state_dict(state, assign=True)
    return net, state


def test_acol_loss_on_their_network_is_their_ce_a_plus_ce_b():
    from camlens.training.wsol import ACoL

    net, state = _their_network("vgg16", "acol", False)
    method = ACoL(threshold=0.6)
    assert method.attach(net) == ()  # their heads are the network's: nothing added
    assert not hasattr(net, "acol_classifier")
    x, y = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 2])
    with torch.no_grad():
        loss, logits = method.loss(net.train(), x, y)
        # their AcolBase._acol_logits with the labels, then get_loss: CE(logits) + CE(logit_b)
        index, h = 0, x.double()
        for v in VGG_CFG[("acol", False)]:
            if isinstance(v, int):
                h, index = F.relu(_c(state, f"features.{index}", h, padding=1)), index + 2
            else:
                h, index = F.max_pool2d(h, 3, 2 if v == "M1" else 1, 1), index + 1
        feature = F.avg_pool2d(h, 3, 1, 1)

        def head(b: str, f: Tensor) -> Tensor:
            t = F.relu(_c(state, f"classifier_{b}.2", F.relu(_c(state, f"classifier_{b}.0", f, padding=1)), padding=1))
            return _c(state, f"classifier_{b}.4", t)

        a = head("A", feature)
        keep = (_norm(a[torch.arange(2), y]) < 0.6).double()[:, None]
        expected = F.cross_entropy(a.mean((2, 3)), y) + F.cross_entropy(head("B", feature * keep).mean((2, 3)), y)
    assert torch.allclose(logits.double(), a.mean((2, 3)), atol=1e-5 * float(a.abs().max()))
    assert abs(float(loss) - float(expected)) < 1e-4


def test_spg_on_their_network_trains_their_branches_at_their_taps():
    from camlens.training.wsol import SPG

    net, state = _their_network("vgg16", "spg", False)
    method = SPG()
    assert method.attach(net) == ()
    assert not any(name.startswith("spg_") for name, _ in net.named_children())
    x, y = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)), torch.tensor([1, 0])
    with torch.no_grad():
        loss, logits = method.loss(net.train(), x, y)
        out = net.spg_outputs(x)
        # their VggSpg.forward: B1 after SPG_A_1 and the 3x3/2 pooling, B2 after SPG_A_2, C after SPG_A_3
        h = x.double()
        for i in (0, 2, 5, 7, 10, 12, 14):
            h = F.relu(_c(state, f"features.{i}", h, padding=1))
            if i in (2, 7, 14):
                h = F.max_pool2d(h, 2, 2)
        for i in (0, 2, 4):
            h = F.relu(_c(state, f"SPG_A_1.{i}", h, padding=1))
        x1 = F.max_pool2d(h, 3, 2, 1)

        def shared(t: Tensor) -> Tensor:
            return _c(state, "SPG_B_shared.2", F.relu(_c(state, "SPG_B_shared.0", t, padding=1)))

        b1 = shared(F.relu(_c(state, "SPG_B_1a.0", x1, padding=1)))
    assert torch.allclose(out["logits_b1"].double(), b1, atol=1e-5 * float(b1.abs().max()))
    assert torch.isfinite(loss) and float(loss) > float(F.cross_entropy(logits, y))  # the three BCE terms add
    assert net.last_outputs is None  # the loss took them: nothing kept alive after the step


def test_overrides_on_files_that_are_not_wsolevaluation_are_applied_or_checked(tmp_path):
    from camlens.models import GapNet, Preprocess, save_checkpoint

    net = build_network("wsol-vgg16", 2, None, width=8, large_feature_map=True)
    path = save_checkpoint(
        tmp_path / "v.safetensors", net, arch="wsol-vgg16", class_names=["a", "b"], preprocess=Preprocess((64, 64))
    )
    with pytest.raises(CamlensError, match="records large_feature_map=True; drop the large-feature-map option"):
        load_model(path, large_feature_map=False)
    with pytest.raises(CamlensError, match="records the WSOL method cam; drop --wsol-method acol"):
        load_model(path, wsol_method="acol")
    torch.save(GapNet(4).state_dict(), tmp_path / "g.pt")
    loaded = load_model(tmp_path / "g.pt", arch="gapnet", wsol_method="has", wsol_params={"drop_rate": 0.25})
    recorded = loaded.meta["wsol_method"]
    assert (recorded["name"], recorded["drop_rate"]) == ("has", 0.25)  # training-only defaults are not recorded


@pytest.mark.parametrize(
    "name,mode",
    [
        ("wsol-vgg16-acol", "xavier"),
        ("wsol-vgg16-spg", "xavier"),
        ("wsol-resnet50-acol", "he"),
        ("wsol-resnet50-spg", "xavier"),
        ("wsol-inceptionv3-acol", "xavier"),
        ("wsol-inceptionv3-spg", "xavier"),
    ],
)
def test_their_networks_take_their_initialization(monkeypatch, name, mode):
    """Their ``initialize_weights(self.modules(), init_mode=...)``: 'he' in ResNetAcol, 'xavier' in VggAcol,
    VggSpg, ResNetSpg, InceptionAcol and InceptionSpg (convolutions; zero biases, BatchNorm 1/0)."""
    import camlens.networks.wsolref as wsolref

    seen = []
    monkeypatch.setattr(wsolref, "materialize", lambda net, skeleton, state, *, init: seen.append(init) or net)
    build_network(name, C, None)
    assert seen == [mode]
