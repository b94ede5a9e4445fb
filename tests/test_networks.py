"""CAM network builders and gapify: the layers removed and added, the feature resolution at 224 px, the CAM
identity mean(M_c) + b_c = logit_c, the new-layer names, pretrained tensors landing on the right modules, and
checkpoints that rebuild the same network."""

import pytest
import torch
import torchvision.models as tvm
from torch import nn

import camlens
from camlens import CAM, CamlensError
from camlens.models import Preprocess, build_model, load_model, save_checkpoint
from camlens.networks import ConvGapNet, build_network, feature_resolution, gapify, new_layer_names
from camlens.networks._common import torchvision_skeleton

HEAD = ("conv", "fc")
INCEPTION_HEAD = ("SPG_A3_1b", "SPG_A3_2b", "SPG_A4")
# name, options, feature map at 224 px, new layers
BUILDERS = [
    ("vgg16-cam", {}, (14, 14), HEAD),
    ("vgg16-cam", {"groups": 1}, (14, 14), HEAD),
    ("googlenet-cam", {}, (14, 14), HEAD),
    ("alexnet-cam", {}, (13, 13), HEAD),
    ("wsol-vgg16", {}, (14, 14), ("conv6", "fc")),
    ("wsol-vgg16", {"large_feature_map": True}, (28, 28), ("conv6", "fc")),
    ("wsol-resnet50", {}, (14, 14), ("layer4", "fc")),
    ("wsol-resnet50", {"large_feature_map": True}, (28, 28), ("layer4", "fc")),
    ("wsol-inceptionv3", {}, (14, 14), INCEPTION_HEAD),
    ("wsol-inceptionv3", {"large_feature_map": True}, (28, 28), INCEPTION_HEAD),
]


def _small(name: str, **options) -> nn.Module:
    """The network with a 16-channel new convolution (where it has one) and 5 classes, in eval mode."""
    width = {} if name == "wsol-resnet50" else {"width": 16}
    return build_network(name, 5, None, **width, **options).eval()


def _perturb(model: nn.Module) -> nn.Module:
    """Random BN statistics and classifier biases, so the identity is not helped by the initialization."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
        classifier = isinstance(m, nn.Linear) or (
            isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.out_channels == 5
        )
        if classifier and m.bias is not None:
            nn.init.uniform_(m.bias, -1, 1)
    return model


def _check_identity(model: nn.Module, x: torch.Tensor) -> camlens.CAMResult:
    with torch.no_grad(), CAM(model) as cam:
        res = cam(x, topk=2)
    explained = res.logits.gather(1, res.classes)
    torch.testing.assert_close(
        res.maps.mean((-2, -1)) + res.bias,
        explained,
        atol=1e-4 * explained.abs().max().item(),
        rtol=0,
        msg="mean of the raw CAM plus the offset must equal the logit",
    )
    return res


@pytest.mark.parametrize(
    ("name", "options", "resolution", "new"),
    BUILDERS,
    ids=[f"{b[0]}{'-' + '-'.join(map(str, b[1].values())) if b[1] else ''}" for b in BUILDERS],
)
def test_builder_resolution_identity_and_new_layers(name, options, resolution, new):
    model = _perturb(_small(name, **options))
    assert feature_resolution(model, 224) == resolution, "the feature map at 224 px the docstring states"
    assert new_layer_names(model) == new
    modules = dict(model.named_modules())
    assert all(n in modules for n in new), "new_layers are qualified module names"
    size = 64 if name == "alexnet-cam" else 32  # the smallest inputs that leave maps larger than 1x1
    res = _check_identity(model, torch.randn(1, 3, size, size))
    assert tuple(res.maps.shape[-2:]) == feature_resolution(model, size), "the meta pass predicts the real maps"
    assert model.arch_options == {**model.arch_options, **options}


def test_feature_resolution_agrees_with_a_real_forward_at_224():
    model = _small("alexnet-cam")
    with torch.no_grad(), CAM(model) as cam:
        maps = cam(torch.randn(1, 3, 224, 224)).maps
    assert tuple(maps.shape[-2:]) == feature_resolution(model, 224) == (13, 13)


def _convs(seq: nn.Module) -> list[nn.Conv2d]:
    return [m for m in seq.modules() if isinstance(m, nn.Conv2d)]


def test_paper_vgg16_keeps_conv5_3_and_its_relu_then_the_grouped_1024_conv():
    model = build_network("vgg16-cam", 5)
    assert len(model.features) == 30 and isinstance(model.features[-1], nn.ReLU), "pool5 and the FC layers are gone"
    assert len(_convs(model.features)) == 13 and not any(isinstance(m, nn.Linear) for m in model.features.modules())
    conv = model.conv
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.padding, conv.groups) == (
        512,
        1024,
        (3, 3),
        (1, 1),
        2,
    )
    assert model.fc.in_features == 1024 and model.fc.out_features == 5 and model.dropout.p == 0.5
    assert build_network("vgg16-cam", 5, groups=1).conv.groups == 1


def test_paper_googlenet_is_cut_after_inception4e_and_alexnet_keeps_13x13():
    g = build_network("googlenet-cam", 5, width=16)
    names = [n for n, _ in g.features.named_children()]
    assert names[-1] == "inception4e" and "inception5a" not in names and "maxpool4" not in names
    assert g.conv.in_channels == 832
    a = build_network("alexnet-cam", 5, width=16)
    pool = a.features[12]
    assert len(a.features) == 13 and len(_convs(a.features)) == 5
    assert isinstance(pool, nn.MaxPool2d) and (pool.kernel_size, pool.stride, pool.padding) == (3, 1, 1)


def test_wsol_vgg16_has_the_reference_state_dict_keys():
    """wsolevaluation's make_layers indices: conv layers of the '14x14' and '28x28' configs, then conv6 and fc."""
    for large, convs in (
        (False, [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]),
        (True, [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 23, 25, 27]),
    ):
        model = build_network("wsol-vgg16", 5, width=8, large_feature_map=large)
        expected = {f"features.{i}.{p}" for i in convs for p in ("weight", "bias")}
        expected |= {"conv6.weight", "conv6.bias", "fc.weight", "fc.bias"}
        assert set(model.state_dict()) == expected
        assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == (3 if large else 4)


def test_wsol_resnet50_strides_and_inception_changes():
    r = build_network("wsol-resnet50", 5)
    assert r.layer4[0].conv2.stride == (1, 1) and r.layer4[0].downsample[0].stride == (1, 1)
    assert r.layer3[0].conv2.stride == (2, 2)
    assert build_network("wsol-resnet50", 5, large_feature_map=True).layer3[0].conv2.stride == (1, 1)
    assert r.fc.out_features == 5
    i = build_network("wsol-inceptionv3", 5, width=16)
    assert i.Conv2d_1a_3x3.conv.padding == (1, 1)
    assert i.Mixed_6a.branch3x3.conv.stride == (1, 1) and i.Mixed_6a.branch3x3dbl_3.conv.padding == (1, 1)
    keys = set(i.state_dict())
    assert {"SPG_A3_1b.0.weight", "SPG_A3_2b.0.weight", "SPG_A4.weight", "Mixed_6e.branch_pool.bn.running_var"} <= keys
    assert not any(k.startswith(("Mixed_7", "AuxLogits", "fc.")) for k in keys)
    assert (i.SPG_A4.kernel_size, i.SPG_A4.out_channels) == ((1, 1), 5)


def _fake_state(arch: str, **kwargs) -> dict[str, torch.Tensor]:
    """Random tensors under torchvision's names and shapes (the huge FC layers, always dropped, left out)."""
    skeleton = torchvision_skeleton(arch, **kwargs)
    return {
        k: (torch.randn(v.shape) if v.is_floating_point() else torch.zeros(v.shape, dtype=v.dtype))
        for k, v in skeleton.state_dict().items()
        if v.numel() < 5_000_000
    }


@pytest.mark.parametrize(
    ("name", "arch", "options", "pairs"),
    [
        (
            "wsol-vgg16",
            "vgg16",
            {"large_feature_map": True},
            {
                "features.0.weight": "features.0.weight",
                "features.21.bias": "features.21.bias",
                "features.23.weight": "features.24.weight",
                "features.27.weight": "features.28.weight",
            },
        ),
        (
            "googlenet-cam",
            "googlenet",
            {},
            {
                "features.inception4e.branch1.conv.weight": "inception4e.branch1.conv.weight",
                "features.conv1.bn.running_var": "conv1.bn.running_var",
            },
        ),
        (
            "wsol-inceptionv3",
            "inception_v3",
            {},
            {
                "Mixed_6a.branch3x3.conv.weight": "Mixed_6a.branch3x3.conv.weight",
                "Conv2d_1a_3x3.bn.weight": "Conv2d_1a_3x3.bn.weight",
            },
        ),
        (
            "wsol-resnet50",
            "resnet50",
            {},
            {"layer4.0.conv2.weight": "layer4.0.conv2.weight", "bn1.running_mean": "bn1.running_mean"},
        ),
    ],
)
def test_pretrained_tensors_land_on_the_kept_modules(monkeypatch, name, arch, options, pairs):
    """The weight-loading path without a download: a state dict under torchvision's names is moved onto the
    modules each builder keeps, whatever they are called there; every other tensor is a freshly initialized one."""
    kwargs = {"aux_logits": False, "init_weights": False} if arch in ("googlenet", "inception_v3") else {}
    state = _fake_state(arch, **kwargs)
    module = "wsolbench" if name.startswith("wsol") else "paper"
    monkeypatch.setattr(f"camlens.networks.{module}.pretrained_state", lambda a, w: state if w else None)
    model = build_network(name, 5, "DEFAULT", **options)
    own = model.state_dict()
    for mine, theirs in pairs.items():
        assert own[mine].data_ptr() == state[theirs].data_ptr(), f"{mine} must hold torchvision's {theirs}"
    assert all(p.requires_grad for p in model.parameters()), "loaded weights stay trainable parameters"
    taken = {t.data_ptr() for t in state.values()}
    fresh = sorted(k for k, v in own.items() if v.data_ptr() not in taken and not k.endswith("num_batches_tracked"))
    assert fresh and all(k.startswith(tuple(n + "." for n in model.new_layers if n != "layer4")) for k in fresh), fresh


def test_checkpoint_records_builder_options_and_rebuilds_the_network(tmp_path):
    model = _perturb(build_model("wsol-vgg16", 3, None, width=8, large_feature_map=True)).eval()
    path = save_checkpoint(
        tmp_path / "v.safetensors",
        model,
        arch="wsol-vgg16",
        class_names=["a", "b", "c"],
        preprocess=Preprocess((32, 32)),
    )
    loaded = load_model(path)
    assert loaded.meta["arch_options"] == {"width": 8, "large_feature_map": True}
    assert loaded.model.arch_options == model.arch_options
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x))


def test_builder_options_are_checked():
    with pytest.raises(CamlensError, match="no option depth; its options: width, groups, dropout"):
        build_network("vgg16-cam", 5, depth=3)
    with pytest.raises(CamlensError, match="groups=3 must divide"):
        build_network("vgg16-cam", 5, groups=3)
    with pytest.raises(CamlensError, match="unknown CAM network 'vgg19-cam'"):
        build_network("vgg19-cam")
    with pytest.raises(CamlensError, match="resnet18 takes no builder options"):
        build_model("resnet18", 5, None, width=3)


def test_gapify_cuts_at_the_named_layer_and_adds_the_head():
    backbone = _perturb(tvm.resnet18(num_classes=10)).eval()
    model = gapify(backbone, cut="layer3", width=32, num_classes=4).eval()
    assert isinstance(model, ConvGapNet) and new_layer_names(model) == HEAD
    assert not any(n.startswith(("layer4", "fc")) for n, _ in model.features.named_modules())
    assert model.features.get_submodule("layer3.1.conv2") is backbone.layer3[1].conv2, "layers shared, not copied"
    assert feature_resolution(model, 224) == (14, 14)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        b = backbone
        by_hand = b.layer3(b.layer2(b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(x)))))))
        torch.testing.assert_close(model.features(x), by_hand, rtol=0, atol=0)
    _check_identity(model, x)


def test_gapify_returns_a_gap_classifier_unchanged_but_for_its_classes():
    model = tvm.resnet18(num_classes=10).eval()
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    same = gapify(model, num_classes=10, input_size=64)
    assert same is model and new_layer_names(same) == ()
    out = gapify(model, num_classes=3, input_size=64)
    assert out is model and out.fc.out_features == 3 and out.fc.in_features == 512 and new_layer_names(out) == ("fc",)
    after = out.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    _check_identity(out.eval(), torch.randn(1, 3, 64, 64))


def test_gapify_takes_a_hand_cut_backbone_whole():
    body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    model = gapify(body, width=6, num_classes=2).eval()
    assert model.features is body and feature_resolution(model, 224) == (112, 112)
    _check_identity(model, torch.randn(1, 3, 16, 16))


def test_gapify_by_name_round_trips_through_a_checkpoint(tmp_path):
    model = build_model("gapify", 4, None, backbone="resnet18", cut="layer2", width=8).eval()
    assert feature_resolution(model, 224) == (28, 28)
    path = save_checkpoint(
        tmp_path / "g.safetensors", model, arch="gapify", class_names=list("abcd"), preprocess=Preprocess((32, 32))
    )
    loaded = load_model(path)
    assert loaded.meta["arch_options"]["cut"] == "layer2"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x))


@pytest.mark.parametrize(
    ("cut", "size", "message"),
    [
        ("layer9", 224, "no layer named 'layer9' in ResNet"),
        ("fc", 224, "the cut at 'fc' has no spatial output: shape \\(1, 10\\)"),
        ("avgpool", 224, "the cut at 'avgpool' leaves a 1x1 map at 224 px"),
        ("layer4", 32, "the cut at 'layer4' leaves a 1x1 map at 32 px"),
    ],
)
def test_gapify_bad_cuts_are_one_line_errors(cut, size, message):
    with pytest.raises(CamlensError, match=message) as info:
        gapify(tvm.resnet18(num_classes=10), cut=cut, num_classes=3, input_size=size)
    assert "\n" not in str(info.value)


def test_gapify_without_cut_needs_a_spatial_model_and_a_class_count():
    with pytest.raises(CamlensError, match="the backbone Sequential has no spatial output: shape \\(1, 4\\)"):
        gapify(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), num_classes=2)
    with pytest.raises(CamlensError, match="give num_classes"):
        gapify(tvm.resnet18(num_classes=10), cut="layer3")
