"""Mixed precision: every method under ``torch.autocast`` (bfloat16 on CPU) and on a bfloat16 model gives float32
maps within the stated bound of the float32 model's maps (docs/howto/ndim.md, "Mixed precision").

The bound is relative to the largest value of the float32 map, on maps whose terms do not cancel (a classifier
with non-negative weights at a post-ReLU layer), so it measures the rounding of the model's own low-precision
passes: bfloat16 keeps 8 significant bits (each rounding 2^-9 relative).  Where the terms of sum_k w_k A_k
cancel, the same absolute error is larger relative to the map, by the cancellation factor."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import camlens

METHODS = [
    "cam",
    "gradcam",
    "gradcampp",
    "xgradcam",
    "layercam",
    "hirescam",
    "scorecam",
    "sscam",
    "iscam",
    "ablationcam",
    "eigencam",
]
# max |M_low - M_32| / max |M_32| per map; measured on this network (3 seeds): 4e-3 to 7.4e-3, Ablation-CAM 0.13
BFLOAT16_BOUND = 2e-2
# Ablation-CAM's weights 1 - y_k / y are differences of two rounded scores: their rounding is absolute (~2^-8)
ABLATION_BFLOAT16_BOUND = 0.25


def bound(name: str) -> float:
    return ABLATION_BFLOAT16_BOUND if name == "ablationcam" else BFLOAT16_BOUND


def small_net(seed: int = 0) -> nn.Sequential:
    """conv-BN-ReLU-pool-conv-BN-ReLU-conv-ReLU (module "8", 8x8 at 16 px) - GAP - linear with weights >= 0."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 12, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, 5),
    ).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        model[-1].weight.abs_()
    return model


def options(name: str) -> dict:
    layer = {} if name == "cam" else {"layer": "8"}
    if name == "sscam":  # the same noise draws in both precisions
        return {**layer, "num_samples": 2, "generator": torch.Generator().manual_seed(0)}
    if name == "iscam":
        return {**layer, "num_samples": 3}
    return layer


def relative_error(got: camlens.CAMResult, want: camlens.CAMResult) -> float:
    scale = want.maps.abs().amax((-2, -1)).clamp_min(1e-12)
    return ((got.maps - want.maps).abs().amax((-2, -1)) / scale).max().item()


@pytest.fixture(scope="module")
def reference():
    model, x = small_net(), torch.randn(2, 3, 16, 16)
    out = {}
    for name in METHODS:
        with camlens.get_method(name)(model, **options(name)) as explainer:
            out[name] = explainer(x, topk=2)
    return model, x, out


@pytest.mark.parametrize("name", METHODS)
def test_maps_under_bfloat16_autocast_are_float32_and_within_the_stated_bound(name, reference):
    model, x, want = reference
    with camlens.get_method(name)(model, **options(name)) as explainer, torch.autocast("cpu", dtype=torch.bfloat16):
        got = explainer(x, classes=want[name].classes)
    assert got.maps.dtype == torch.float32, f"{name}: maps in {got.maps.dtype}, not float32"
    err = relative_error(got, want[name])
    message = f"{name}: autocast maps differ by {err:.2e} of the map (bound {bound(name)}; 0: no bfloat16 ran)"
    assert 0 < err <= bound(name), message


@pytest.mark.parametrize("name", METHODS)
def test_maps_of_a_bfloat16_model_are_float32_and_within_the_stated_bound(name, reference):
    model, x, want = reference
    half = small_net()
    half.load_state_dict(model.state_dict())
    half = half.to(torch.bfloat16)
    with camlens.get_method(name)(half, **options(name)) as explainer:
        got = explainer(x.to(torch.bfloat16), classes=want[name].classes)
    assert got.maps.dtype == torch.float32, f"{name}: maps in {got.maps.dtype}, not float32"
    err = relative_error(got, want[name])
    assert 0 < err <= bound(name), f"{name}: bfloat16-model maps differ by {err:.2e} of the map (bound {bound(name)})"


def test_cam_identity_holds_to_bfloat16_rounding_under_autocast():
    """mean_xy M + b = logit: the maps are computed in float32 from the bfloat16 features, so the identity holds
    against the logits the bfloat16 classifier returned up to that classifier's own rounding (2^-8 relative)."""
    model, x = small_net(), torch.randn(3, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = camlens.CAM(model)(x, topk=2)
    explained = res.logits.float().gather(1, res.classes)
    err = (res.maps.mean((-2, -1)) + res.bias - explained).abs().max().item()
    assert err <= 2**-7 * max(1.0, explained.abs().max().item()), err
