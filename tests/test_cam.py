"""CAM: exact to M_c = sum_k w_k^c f_k and to logit_c = mean M_c + b_c on every supported head."""

import threading

import pytest
import timm
import torch
import torchvision.models as tvm
from torch import nn

import camlens
from camlens import CAM, CamlensError, NotAGapClassifierError

TORCHVISION = [
    "resnet18",
    "wide_resnet50_2",
    "densenet121",
    "mobilenet_v2",
    "efficientnet_b0",
    "regnet_y_400mf",
    "shufflenet_v2_x0_5",
    "convnext_tiny",
    "squeezenet1_1",
]
TIMM = ["resnet18", "convnext_nano", "efficientnet_b0", "regnetx_002"]


def _perturb_norms(model: nn.Module) -> nn.Module:
    """Random BN statistics and affine parameters, so identities are not helped by default initialization."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)) and m.weight is not None:
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _check_identity(model: nn.Module, x: torch.Tensor, tol: float = 1e-4) -> camlens.CAMResult:
    with CAM(model) as cam:
        res = cam(x, topk=3)
    explained = res.logits.gather(1, res.classes)
    scale = explained.abs().max().clamp_min(1)
    assert torch.allclose(res.maps.mean((-2, -1)) + res.bias, explained, atol=tol * scale, rtol=0), (
        "mean of the raw CAM plus the offset must equal the logit"
    )
    assert res.maps.shape[:2] == res.classes.shape == (x.shape[0], 3)
    return res


@pytest.mark.parametrize("arch", TORCHVISION)
def test_cam_mean_plus_bias_equals_logit_torchvision(arch):
    model = _perturb_norms(tvm.get_model(arch, weights=None, num_classes=7))
    classifier = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    nn.init.uniform_(classifier.bias, -1, 1)  # a non-zero classifier bias, so the offset matters
    _check_identity(model, torch.randn(2, 3, 80, 80))


@pytest.mark.parametrize("arch", TIMM)
def test_cam_mean_plus_bias_equals_logit_timm(arch):
    model = _perturb_norms(timm.create_model(arch, pretrained=False, num_classes=5))
    _check_identity(model, torch.randn(2, 3, 80, 80))


def test_convnext_layernorm_after_pooling_is_folded_exactly():
    model = _perturb_norms(tvm.convnext_tiny(num_classes=4)).double()
    with CAM(model) as cam:
        res = cam(torch.randn(2, 3, 64, 64, dtype=torch.float64), classes="all")
        assert cam.head.norm is not None
    # Per-sample folding: mu and sigma of the pooled vector are per image, so each sample has its own weights.
    torch.testing.assert_close(res.maps.mean((-2, -1)) + res.bias, res.logits, atol=1e-10, rtol=0)


def test_squeezenet_maps_are_the_networks_own_class_maps():
    model = _perturb_norms(tvm.squeezenet1_1(num_classes=6)).double()
    x = torch.randn(2, 3, 96, 96, dtype=torch.float64)
    with CAM(model) as cam:
        res = cam(x, classes="all")
    reference = model.classifier[:3](model.features(x))  # conv 1x1 + ReLU, before the pooling
    torch.testing.assert_close(res.maps, reference)
    torch.testing.assert_close(res.maps.mean((-2, -1)), res.logits)


class FunctionalHead(nn.Module):
    """features -> (functional, not in-place) ReLU -> GAP -> Linear, like DenseNet without the in-place op."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 3, stride=2, padding=1))
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.features(x)).mean((2, 3)))


def test_functional_relu_before_pooling_is_detected_and_applied():
    model = FunctionalHead().double().eval()
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    with CAM(model) as cam:
        res = cam(x, classes="all")
        assert cam.head.feature_act == "relu"
    torch.testing.assert_close(res.maps.mean((-2, -1)) + res.bias, res.logits)


def _reference_cam(features: torch.Tensor, weight: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The formula with plain loops: M_c(x, y) = sum_k w_k^c f_k(x, y)."""
    b, k, h, w = features.shape
    out = torch.zeros(b, classes.shape[1], h, w, dtype=torch.float64)
    for i in range(b):
        for n, c in enumerate(classes[i].tolist()):
            for ch in range(k):
                out[i, n] += weight[c, ch].double() * features[i, ch].double()
    return out


class TinyGap(nn.Module):
    def __init__(self, classes=5, conv_classifier=False):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Conv2d(6, classes, 1) if conv_classifier else nn.Linear(6, classes)

    def forward(self, x):
        pooled = self.pool(self.body(x))
        return self.head(pooled).flatten(1) if isinstance(self.head, nn.Conv2d) else self.head(pooled.flatten(1))


@pytest.mark.parametrize("conv_classifier", [False, True])
def test_maps_match_a_plain_loop_of_the_formula(conv_classifier):
    model = TinyGap(conv_classifier=conv_classifier).eval()
    x = torch.randn(3, 3, 7, 9)
    classes = torch.tensor([[0, 4], [2, 2], [3, 1]])
    with CAM(model) as cam:
        res = cam(x, classes)
    expected = _reference_cam(model.body(x), model.head.weight.flatten(1), classes)
    torch.testing.assert_close(res.maps.double(), expected, atol=1e-5, rtol=1e-5)
    assert res.layer == "body"
    torch.testing.assert_close(res.bias, model.head.bias[classes])


def test_class_selection_forms():
    model = TinyGap(classes=5).eval()
    x = torch.randn(2, 3, 8, 8)
    with CAM(model) as cam:
        top = cam(x, topk=2)
        assert torch.equal(top.classes, top.logits.topk(2).indices)
        assert cam(x, 3).classes.tolist() == [[3], [3]]
        assert cam(x, [1, 4]).classes.tolist() == [[1], [4]]
        assert cam(x, "all").classes.tolist() == [list(range(5))] * 2
        per_sample = cam(x, [1, 4])
        single = cam(x[1:], 4)
        torch.testing.assert_close(per_sample.maps[1], single.maps[0])
        with pytest.raises(CamlensError, match="out of range"):
            cam(x, 5)
        with pytest.raises(CamlensError, match="one class per sample"):
            cam(x, [1, 2, 3])
        with pytest.raises(CamlensError, match="topk"):
            cam(x, topk=9)


def test_hooks_are_removed_on_exit_and_on_exception():
    model = TinyGap().eval()
    with pytest.raises(RuntimeError):
        with CAM(model) as cam:
            cam(torch.randn(1, 3, 8, 8))
            cam(torch.randn(1, 5, 8, 8))  # wrong channel count: the forward raises inside the block
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_nothing_grows_across_calls():
    model = TinyGap().eval()
    with CAM(model) as cam:
        for _ in range(5):
            cam(torch.randn(2, 3, 8, 8))
        assert sum(len(m._forward_hooks) for m in model.modules()) == 1


def test_works_under_inference_mode_and_keeps_grad_mode():
    model = TinyGap().eval()
    with CAM(model) as cam:
        with torch.inference_mode():
            res = cam(torch.randn(2, 3, 8, 8))
        assert torch.is_grad_enabled()
        plain = cam(torch.randn(2, 3, 8, 8))
    assert res.maps.is_inference() and not plain.maps.requires_grad


def test_one_explainer_serves_several_threads():
    model = TinyGap().eval()
    inputs = [torch.randn(2, 3, 12, 12) for _ in range(8)]
    with CAM(model) as cam:
        expected = [cam(x).maps for x in inputs]
        results = [None] * len(inputs)

        def work(i):
            for _ in range(20):
                results[i] = cam(inputs[i]).maps

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for got, want in zip(results, expected):
        torch.testing.assert_close(got, want)


def test_bf16_autocast_maps_are_float32_and_close():
    model = _perturb_norms(tvm.resnet18(num_classes=5))
    x = torch.randn(2, 3, 64, 64)
    with CAM(model) as cam:
        exact = cam(x, classes="all")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = cam(x, classes="all")
    assert low.maps.dtype == torch.float32
    torch.testing.assert_close(low.maps.mean((-2, -1)) + low.bias, low.logits.float(), atol=2e-2, rtol=2e-2)
    assert torch.corrcoef(torch.stack([low.maps.flatten(), exact.maps.flatten()]))[0, 1] > 0.99


@pytest.mark.parametrize("arch", ["vgg11", "mobilenet_v3_small"])
def test_multilayer_heads_get_a_clear_error_pointing_to_gradient_methods(arch):
    model = tvm.get_model(arch, weights=None, num_classes=5).eval()
    with CAM(model) as cam, pytest.raises(NotAGapClassifierError, match="GradCAM"):
        cam(torch.randn(1, 3, 64, 64))


def test_layer_and_classifier_override_by_name_and_module():
    model = tvm.resnet18(num_classes=5).eval()
    x = torch.randn(1, 3, 64, 64)
    with CAM(model, layer="layer4", classifier=model.fc) as cam:
        res = cam(x)
    assert res.layer == "layer4"
    with CAM(model, layer="layer3") as cam, pytest.raises(NotAGapClassifierError):
        cam(x)  # layer3 has 256 channels, the classifier wants 512
    with pytest.raises(CamlensError, match="no layer named 'layer9'"):
        with CAM(model, layer="layer9") as cam:
            cam(x)
