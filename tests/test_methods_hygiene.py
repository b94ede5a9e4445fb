"""Hooks, gradients and graphs left behind, errors for people, and no NaN or division by zero, for every layer
method."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torchvision
from torch import nn

import camlens
from _method_refs import TinyNet
from camlens import CamlensError, GradCAM, ScoreCAM

LAYER_METHODS = [name for name, cls in camlens.METHODS.items() if name != "cam" and not cls.needs_attention]
CHEAP = {"sscam": {"num_samples": 2}, "iscam": {"num_samples": 2}}


def _make(name, model, **kw):
    return camlens.get_method(name)(model, **{**CHEAP.get(name, {}), **kw})


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize("name", LAYER_METHODS)
def test_hooks_removed_on_exit_and_grads_untouched(name):
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    with _make(name, model, layer="layer4") as explainer:
        res = explainer(x, topk=2)
        assert _hooks(model) == 1
    assert _hooks(model) == 0
    assert all(p.grad is None for p in model.parameters())
    for t in (res.logits, res.maps):
        assert t.grad_fn is None and not t.requires_grad
    assert torch.isfinite(res.maps).all()


@pytest.mark.parametrize("name", LAYER_METHODS)
def test_hooks_removed_when_the_call_raises(name):
    model = TinyNet().eval()
    with pytest.raises(CamlensError, match="out of range"):
        with _make(name, model) as explainer:
            explainer(torch.randn(1, 3, 8, 8), classes=[99])
    assert _hooks(model) == 0


def test_idle_hooks_leave_the_users_forward_unchanged():
    model = TinyNet().eval()
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with GradCAM(model) as explainer:
        explainer(x.detach())
        out = model(x)  # the user's own pass while the explainer is alive: autograd reaches the input
        out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_no_graph_survives_the_call():
    model = TinyNet().eval()
    with GradCAM(model) as explainer:
        res = explainer(torch.randn(2, 3, 8, 8), topk=3)
    ref = weakref.ref(res.logits)
    assert res.logits.grad_fn is None
    del res
    gc.collect()
    assert ref() is None


def test_inplace_relu_after_the_layer_does_not_change_the_captured_activation():
    model = torchvision.models.densenet121(num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    captured = {}
    handle = model.features.register_forward_hook(lambda m, a, out: captured.__setitem__("a", out.clone()))
    try:
        with camlens.HiResCAM(model, layer="features") as explainer, torch.no_grad():
            model(x)
            maps = explainer(x, classes=[0]).maps
    finally:
        handle.remove()
    assert (captured["a"] < 0).any()  # norm5's output before DenseNet's in-place ReLU
    with torch.enable_grad():
        a = captured["a"].requires_grad_()
        logit = model.classifier(torch.relu(a).mean((-2, -1)))[0, 0]
        (g,) = torch.autograd.grad(logit, a)
    assert torch.allclose(maps[0, 0], (g * a).sum(1)[0].detach(), atol=1e-6)


def test_gradient_methods_refuse_inference_mode_with_a_clear_error():
    model = TinyNet().eval()
    with GradCAM(model) as explainer, torch.inference_mode():
        with pytest.raises(CamlensError, match="inference_mode"):
            explainer(torch.randn(1, 3, 8, 8))
    with ScoreCAM(model) as explainer, torch.inference_mode():
        assert explainer(torch.randn(1, 3, 8, 8)).maps.shape == (1, 1, 8, 8)


class AfterOutput(nn.Module):
    """``probe`` runs after the logits are computed; ``frozen`` feeds the logits only through a detach."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 4, 3, padding=1)
        self.frozen = nn.Conv2d(3, 4, 3, padding=1)
        self.probe = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        f = self.features(x)
        z = self.frozen(x).detach()
        out = self.fc(torch.cat([f.mean((-2, -1)), z.mean((-2, -1))], 1))
        self.probe(f)
        return out


@pytest.mark.parametrize("layer", ["probe", "frozen"])
def test_layer_that_cannot_reach_the_output_gives_a_clear_error(layer):
    model = AfterOutput().eval()
    with GradCAM(model, layer=layer) as explainer:
        with pytest.raises(CamlensError, match="does not depend on layer|no gradient reaches") as info:
            explainer(torch.randn(1, 3, 6, 6))
    assert not isinstance(info.value, IndexError)
    assert _hooks(model) == 0


def test_unknown_or_idle_layer_errors_name_the_problem():
    model = TinyNet().eval()
    with pytest.raises(CamlensError, match="no layer named"):
        GradCAM(model, layer="nope")(torch.randn(1, 3, 8, 8))
    idle = TinyNet().eval()
    idle.unused = nn.Conv2d(3, 3, 1)
    with pytest.raises(CamlensError, match="did not run"):
        GradCAM(idle, layer="unused")(torch.randn(1, 3, 8, 8))


def test_perturbation_methods_require_eval_mode():
    model = TinyNet().train()
    with pytest.raises(CamlensError, match="model.eval"):
        ScoreCAM(model)(torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("name", LAYER_METHODS)
def test_constant_input_gives_finite_maps(name):
    model = TinyNet().eval()
    with _make(name, model) as explainer:
        for value in (0.0, 1.0):
            res = explainer(torch.full((2, 3, 8, 8), value), topk=2)
            assert torch.isfinite(res.maps).all(), name
            assert torch.isfinite(camlens.normalize(res.maps)).all()


def test_zero_gradient_and_zero_sum_channels_get_zero_weight_not_nan():
    model = TinyNet(channels=3).eval()
    with torch.no_grad():
        model.fc.weight[:, 1] = 0  # channel 1 gets zero gradient
        model.features[2].weight[2].zero_()
        model.features[2].bias[2] = -1.0  # channel 2 is all zero after ReLU: its sum is 0
    x = torch.randn(1, 3, 8, 8)
    for name in ("gradcampp", "xgradcam"):
        with camlens.get_method(name)(model) as explainer:
            maps = explainer(x, topk=3).maps
        assert torch.isfinite(maps).all() and maps.abs().sum() > 0, name


def test_ablationcam_with_a_zero_score_uses_the_plain_difference():
    model = TinyNet().eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        logit = model(x)[0, 2]
        model.fc.bias[2] -= logit  # the explained score is exactly 0 now (up to rounding)
    target = lambda out: out[:, 2] - out[:, 2].detach().round(decimals=3) * 0  # noqa: E731
    with camlens.AblationCAM(model) as explainer:
        res = explainer(x, target=target)
    assert torch.isfinite(res.maps).all()
