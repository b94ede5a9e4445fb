"""Every layer method against an independent float64 reference of its formula, on several architectures; the
CAM identities on GAP networks; classes, targets, layers, token reshapes and fusion."""

from __future__ import annotations

import functools

import pytest
import timm
import torch
import torchvision
from torch import nn

import camlens
from _method_refs import (
    GRADIENT_REFS,
    TinyNet,
    activations_and_grads,
    assert_close,
    ref_ablationcam,
    ref_eigencam,
    ref_scorecam,
)
from camlens import CAM, AblationCAM, EigenCAM, GradCAM, HiResCAM, ScoreCAM, XGradCAM, tokens_to_grid
from camlens.capture import CamlensError, find_spatial_layer
from camlens.methods.activation import pass_model

GRADIENT_METHODS = ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam"]


@functools.cache
def _model(arch: str) -> nn.Module:
    torch.manual_seed(1)
    if arch == "tiny":
        return TinyNet().eval()
    if arch == "resnet18":
        return torchvision.models.resnet18(num_classes=7).eval()
    if arch == "mobilenet_v2":
        return torchvision.models.mobilenet_v2(num_classes=6).eval()
    if arch == "densenet121":
        return torchvision.models.densenet121(num_classes=5).eval()
    if arch == "vit":
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=5).eval()
    raise KeyError(arch)


# (arch, layer, input size); densenet's "features" is followed by an in-place ReLU
CASES = [
    ("tiny", "features", 8),
    ("resnet18", "layer3", 64),
    ("mobilenet_v2", "features.16", 64),
    ("densenet121", "features", 64),
]


@pytest.mark.parametrize("arch,layer,size", CASES)
@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_gradient_method_matches_float64_reference(method, arch, layer, size):
    model = _model(arch)
    x = torch.randn(2, 3, size, size)
    with camlens.get_method(method)(model, layer=layer) as explainer:
        res = explainer(x, topk=2)
    a, g = activations_and_grads(model, layer, x, classes=res.classes)
    assert_close(res.maps, GRADIENT_REFS[method](a, g), what=f"{method} on {arch}")


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_gradient_method_on_vit_tokens_matches_reference(method):
    model = _model("vit")
    x = torch.randn(2, 3, 64, 64)
    layer = "blocks.11.norm1"
    with camlens.get_method(method)(model, layer=layer, reshape=tokens_to_grid) as explainer:
        res = explainer(x, classes=[[0, 3], [4, 1]])
    assert res.maps.shape == (2, 2, 4, 4)
    a, g = activations_and_grads(model, layer, x, classes=res.classes, reshape=tokens_to_grid)
    assert_close(res.maps, GRADIENT_REFS[method](a, g), what=f"{method} on ViT")


def test_several_classes_per_sample_equal_separate_single_class_calls():
    model = _model("resnet18")
    x = torch.randn(3, 3, 64, 64)
    table = torch.tensor([[0, 5, 2], [6, 1, 3], [4, 4, 0]])
    for cls in (GradCAM, camlens.GradCAMPlusPlus, camlens.LayerCAM):
        with cls(model, layer="layer2") as explainer:
            joint = explainer(x, classes=table).maps
            for n in range(3):
                single = explainer(x, classes=table[:, n]).maps[:, 0]
                assert torch.allclose(joint[:, n], single, atol=1e-6, rtol=1e-5), cls.__name__


@pytest.mark.parametrize("arch", ["tiny", "resnet18"])
def test_gradcam_at_last_layer_is_relu_cam_over_positions(arch):
    model = _model(arch)
    x = torch.randn(2, 3, 8 if arch == "tiny" else 96, 8 if arch == "tiny" else 96)
    with CAM(model) as cam, GradCAM(model) as gradcam, HiResCAM(model) as hires, XGradCAM(model) as xgrad:
        c = cam(x, topk=3)
        g = gradcam(x, topk=3)
        h = hires(x, topk=3)
        xg = xgrad(x, topk=3)
    assert g.layer == c.layer and torch.equal(g.classes, c.classes)
    positions = c.maps.shape[-2] * c.maps.shape[-1]
    assert torch.allclose(g.maps, torch.relu(c.maps) / positions, atol=1e-6, rtol=1e-4)
    # HiResCAM equals CAM / Z signs included; XGrad-CAM's weights reduce to w_k / Z as well
    assert torch.allclose(h.maps, c.maps / positions, atol=1e-6, rtol=1e-4)
    assert torch.allclose(xg.maps, c.maps / positions, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize(
    "method,reference,batch_size", [(ScoreCAM, ref_scorecam, 40), (AblationCAM, ref_ablationcam, 50)]
)
@pytest.mark.parametrize("arch,layer,size", [("tiny", "features", 8), ("resnet18", "layer2", 32)])
def test_perturbation_methods_match_their_float64_reference(method, reference, batch_size, arch, layer, size):
    model = _model(arch)
    x = torch.randn(2, 3, size, size)
    with method(model, layer=layer, batch_size=batch_size) as explainer:
        res = explainer(x, topk=2)
    assert_close(res.maps, reference(model, layer, x, res.classes), what=f"{method.name} on {arch}")


def test_scorecam_constant_channels_share_the_baseline_score():
    model = TinyNet(channels=4).eval()
    with torch.no_grad():
        model.features[2].weight[1:3].zero_()  # channels 1 and 2: constant (their bias, then ReLU)
    x = torch.randn(1, 3, 8, 8)
    calls = []
    handle = model.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape[0]))
    try:
        with ScoreCAM(model, layer="features", optimize=False) as explainer:
            res = explainer(x, classes=[2])
    finally:
        handle.remove()
    assert calls == [1, 3]  # the plain pass, then 3 distinct masks: channel 0, channel 3, the shared zero mask
    assert_close(res.maps, ref_scorecam(model, "features", x, res.classes), what="scorecam with constant channels")


def test_scorecam_inference_copy_gives_the_same_maps():
    model = _model("resnet18")
    x = torch.randn(1, 3, 32, 32)
    with (
        ScoreCAM(model, layer="layer2", optimize=True) as fast,
        ScoreCAM(model, layer="layer2", optimize=False) as plain,
    ):
        a, b = fast(x).maps, plain(x).maps
        assert pass_model(model, x, model(x)) is not model  # the optimized copy was built and kept
    assert torch.allclose(camlens.normalize(a), camlens.normalize(b), atol=1e-4)


def test_scorecam_pass_copy_is_shared_per_model_and_rebuilt_when_weights_change():
    model = _model("resnet18")
    x = torch.randn(1, 3, 32, 32)
    with ScoreCAM(model, layer="layer2") as explainer:
        explainer(x, classes=[1])
    first = pass_model(model, x, model(x))
    assert pass_model(model, x, model(x)) is first  # a second explainer on the same model reuses it
    with torch.no_grad():
        model.fc.weight.mul_(-2.0)
    with ScoreCAM(model, layer="layer2") as fast, ScoreCAM(model, layer="layer2", optimize=False) as plain:
        got, want = fast(x, classes=[1]).maps, plain(x, classes=[1]).maps
    assert pass_model(model, x, model(x)) is not first
    assert torch.allclose(camlens.normalize(got), camlens.normalize(want), atol=1e-4)


def test_scorecam_approximate_mode_stays_within_its_stated_error(monkeypatch):
    monkeypatch.setattr(camlens.hardware, "cpu_flags", lambda: frozenset({"avx512_bf16"}))  # bfloat16 on any CPU
    model = _model("resnet18")
    x = torch.randn(2, 3, 32, 32)
    with ScoreCAM(model, layer="layer2") as exact, ScoreCAM(model, layer="layer2", approximate=True) as approx:
        want = exact(x, classes=[1, 2])
        got = approx(x, classes=[1, 2])
    assert pass_model(model, x, model(x), approximate=True) is not model  # the bfloat16 copy ran the passes
    err = (camlens.normalize(got.maps) - camlens.normalize(want.maps)).abs().max().item()
    assert 0 < err <= 5e-3, f"bfloat16 passes moved the normalized map by {err:.3g} (docstring: <= 5e-3)"
    assert got.maps.dtype == torch.float32 and torch.equal(got.classes, want.classes)


class _FitsFourRows(nn.Module):
    """A model whose device 'runs out of memory' on more than 4 rows a pass."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if len(x) > 4:
            raise torch.OutOfMemoryError("out of memory (simulated)")
        return self.inner(x)


def test_scorecam_default_batch_halves_until_the_passes_fit_in_memory():
    model = _FitsFourRows(_model("resnet18")).eval()
    x = torch.randn(2, 3, 32, 32)
    with (
        ScoreCAM(model, layer="inner.layer3", optimize=False) as auto,
        ScoreCAM(model, layer="inner.layer3", optimize=False, batch_size=4) as fixed,
    ):
        assert torch.equal(auto(x, classes=[1, 2]).maps, fixed(x, classes=[1, 2]).maps)
    with ScoreCAM(model, layer="inner.layer3", optimize=False, batch_size=8) as asked:  # the user's size stands
        with pytest.raises(torch.OutOfMemoryError):
            asked(x, classes=[1, 2])


def test_scorecam_rejects_a_precision_it_has_no_error_bound_for():
    with pytest.raises(CamlensError, match=r"approximate=torch.float64: use False, True \(bfloat16\) or torch.float16"):
        ScoreCAM(_model("tiny"), approximate=torch.float64)


def test_ablationcam_repeats_the_input_when_the_tail_mixes_earlier_tensors():
    model = _model("resnet18")
    x = torch.randn(2, 3, 32, 32)
    layer = "layer2.0.conv2"  # the block's residual comes from before this layer
    with AblationCAM(model, layer=layer, batch_size=64) as explainer:
        res = explainer(x, classes=[1, 2])
        assert explainer._repeat_input
    assert_close(res.maps, ref_ablationcam(model, layer, x, res.classes), what="ablationcam mid-block")


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("arch,layer,size", [("tiny", "features", 8), ("mobilenet_v2", "features.18", 64)])
def test_eigencam_matches_float64_svd(arch, layer, size, center):
    model = _model(arch)
    x = torch.randn(2, 3, size, size)
    with EigenCAM(model, layer=layer, center=center) as explainer:
        res = explainer(x, topk=2)
    want = ref_eigencam(model, layer, x, center=center)
    assert_close(res.maps[:, 0], want, rtol=1e-3, what="eigencam")
    assert torch.equal(res.maps[:, 0], res.maps[:, 1])


def test_target_callable_explains_any_scalar():
    model = _model("tiny")
    x = torch.randn(2, 3, 8, 8)
    target = lambda out: out[:, 1] - out[:, 3]  # noqa: E731
    with GradCAM(model) as explainer:
        res = explainer(x, target=target)
        two = explainer(x, target=[target, lambda out: out[:, 0]])
    assert res.classes.tolist() == [[-1], [-1]] and two.maps.shape == (2, 2, 8, 8)
    a, g = activations_and_grads(model, "features", x, target=target)
    assert_close(res.maps, GRADIENT_REFS["gradcam"](a, g), what="gradcam of a target")
    assert torch.allclose(two.maps[:, :1], res.maps)
    with pytest.raises(CamlensError, match="one scalar per sample"):
        GradCAM(model)(x, target=lambda out: out)


class DictOut(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return {"logits": self.inner(x), "aux": x.mean()}


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "ablationcam", "eigencam"])
def test_dict_outputs_use_their_logits(method):
    inner = _model("tiny")
    x = torch.randn(2, 3, 8, 8)
    with (
        camlens.get_method(method)(DictOut(inner).eval(), layer="inner.features") as a,
        camlens.get_method(method)(inner, layer="features") as b,
    ):
        assert torch.allclose(a(x, topk=2).maps, b(x, topk=2).maps, atol=1e-6)


def test_automatic_layer_is_the_last_spatial_module():
    assert find_spatial_layer(_model("resnet18"), torch.randn(1, 3, 64, 64)) == "layer4"
    assert find_spatial_layer(_model("densenet121"), torch.randn(1, 3, 64, 64)) == "features"
    assert find_spatial_layer(_model("mobilenet_v2"), torch.randn(1, 3, 64, 64)) == "features"
    with GradCAM(_model("tiny")) as explainer:
        assert explainer(torch.randn(1, 3, 8, 8)).layer == "features"


def test_automatic_token_layer_is_the_last_one_with_gradient_at_several_tokens():
    with GradCAM(_model("vit"), reshape=tokens_to_grid) as explainer:
        res = explainer(torch.randn(1, 3, 64, 64))
    assert res.layer == "blocks.11.norm1" and res.maps.shape == (1, 1, 4, 4)


def test_tokens_to_grid_infers_prefix_and_aspect():
    tokens = torch.arange(2 * 13 * 3, dtype=torch.float).view(2, 13, 3)  # 1 class token + 3 x 4 grid
    grid = tokens_to_grid(tokens, (48, 64))
    assert grid.shape == (2, 3, 3, 4)
    assert torch.equal(grid[0, :, 1, 2], tokens[0, 1 + 1 * 4 + 2])
    assert tokens_to_grid(torch.zeros(1, 5, 7, 8)).shape == (1, 8, 5, 7)
    with pytest.raises(CamlensError, match="prefix_tokens"):
        tokens_to_grid(torch.zeros(1, 7, 3), (32, 32), prefix_tokens=0)


def test_several_layers_are_fused_by_the_documented_rule():
    model = _model("resnet18")
    x = torch.randn(2, 3, 64, 64)
    with (
        GradCAM(model, layer=["layer3", "layer4"], fuse="max") as both,
        GradCAM(model, layer="layer3") as l3,
        GradCAM(model, layer="layer4") as l4,
    ):
        fused = both(x, classes=[1, 2])
        m3, m4 = l3(x, classes=[1, 2]).maps, l4(x, classes=[1, 2]).maps
    assert fused.layer == "layer3+layer4" and fused.maps.shape == (2, 1, 4, 4)
    want = torch.maximum(camlens.normalize(m3), camlens.upsample(camlens.normalize(m4), 4))
    assert torch.allclose(fused.maps, want, atol=1e-6)
    assert torch.allclose(
        camlens.fuse([m3, m4], "mean"), (camlens.normalize(m3) + camlens.upsample(camlens.normalize(m4), 4)) / 2
    )


def test_layer_given_as_module_or_name_and_cli_style_construction():
    model = _model("resnet18")
    x = torch.randn(1, 3, 64, 64)
    for name in camlens.METHODS:
        if name in ("cam", "sscam", "iscam") or camlens.METHODS[name].needs_attention:
            continue
        explainer = camlens.get_method(name)(model, layer=None)
        assert explainer.layer is None
        explainer.close()
    with GradCAM(model, layer=model.layer3) as a, GradCAM(model, layer="layer3") as b:
        assert torch.equal(a(x).maps, b(x).maps) and a(x).layer == "layer3"
