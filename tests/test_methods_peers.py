"""camlens against pytorch-grad-cam (grad-cam 1.5.7) and torchcam 0.5.0 where they implement the same method.

Both peers return min-max normalized maps, and pytorch-grad-cam applies a ReLU to every method; so the
comparisons are on normalize(ReLU(camlens map)).  TinyNet's layer has the input's resolution, so pytorch-grad-cam's
resize to the input is the identity; its fc weights are scaled up so the peers' eps (1e-6 / 1e-7 / 1e-8 in
denominators) is negligible against the gradients.  Intentional differences are tested as such.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import AblationCAM as PgcAblationCAM
from pytorch_grad_cam import EigenCAM as PgcEigenCAM
from pytorch_grad_cam import GradCAM as PgcGradCAM
from pytorch_grad_cam import GradCAMPlusPlus as PgcGradCAMPlusPlus
from pytorch_grad_cam import HiResCAM as PgcHiResCAM
from pytorch_grad_cam import LayerCAM as PgcLayerCAM
from pytorch_grad_cam import ScoreCAM as PgcScoreCAM
from pytorch_grad_cam import XGradCAM as PgcXGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torchcam import methods as tc

import camlens
from _method_refs import TinyNet, activations_and_grads
from camlens import normalize, upsample

PGC = {
    "gradcam": PgcGradCAM,
    "gradcampp": PgcGradCAMPlusPlus,
    "xgradcam": PgcXGradCAM,
    "layercam": PgcLayerCAM,
    "hirescam": PgcHiResCAM,
    "scorecam": PgcScoreCAM,
    "ablationcam": PgcAblationCAM,
}
TORCHCAM = {
    "gradcam": tc.GradCAM,
    "xgradcam": tc.XGradCAM,
    "layercam": tc.LayerCAM,
    "scorecam": tc.ScoreCAM,
    "iscam": tc.ISCAM,
}
GRADIENT = {"gradcam", "gradcampp", "xgradcam", "layercam", "hirescam"}


def _tiny() -> TinyNet:
    torch.manual_seed(3)
    model = TinyNet().eval()
    with torch.no_grad():
        model.fc.weight.mul_(100)
    return model


def _ours(method, model, layer, x, classes):
    with camlens.get_method(method)(model, layer=layer) as explainer:
        res = explainer(x, classes=classes)
    assert res.classes[:, 0].tolist() == list(classes)
    return normalize(torch.relu(res.maps[:, 0]))


@pytest.mark.parametrize("method", sorted(PGC))
def test_matches_pytorch_grad_cam(method):
    model = _tiny()
    x = torch.randn(3, 3, 8, 8)
    classes = [0, 3, 4]
    peer = PGC[method](model=model, target_layers=[model.features])
    try:
        theirs = torch.from_numpy(peer(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes]))
    finally:
        peer.activations_and_grads.release()
    assert torch.allclose(_ours(method, model, "features", x, classes), theirs, atol=2e-5), method


def test_gradcam_matches_pytorch_grad_cam_after_its_resize_on_resnet18():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    peer = PgcGradCAM(model=model, target_layers=[model.layer4])
    try:
        theirs = torch.from_numpy(peer(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in (1, 2)]))
    finally:
        peer.activations_and_grads.release()
    ours = _ours("gradcam", model, "layer4", x, [1, 2])
    assert torch.allclose(normalize(upsample(ours, 64)), theirs, atol=1e-4)


def test_eigencam_centered_matches_pytorch_grad_cam_up_to_svd_sign():
    model = _tiny()
    x = torch.randn(3, 3, 8, 8)
    peer = PgcEigenCAM(model=model, target_layers=[model.features])
    try:
        theirs = torch.from_numpy(peer(input_tensor=x, targets=None))
    finally:
        peer.activations_and_grads.release()
    with camlens.EigenCAM(model, layer="features", center=True) as explainer:
        ours = explainer(x).maps[:, 0]
    for b in range(3):
        candidates = [normalize(torch.relu(sign * ours[b])) for sign in (1, -1)]
        assert min((c - theirs[b]).abs().max().item() for c in candidates) < 2e-5


def _torchcam(method, model, x, classes):
    extractor = TORCHCAM[method](model, target_layer="features")
    try:
        if method in GRADIENT:
            scores = model(x)
        else:
            with torch.no_grad():
                scores = model(x)
        return extractor(class_idx=list(classes), scores=scores)[0]
    finally:
        extractor.remove_hooks()


@pytest.mark.parametrize("method", sorted(TORCHCAM))
def test_matches_torchcam(method):
    model = _tiny()
    x = torch.randn(3, 3, 8, 8)
    classes = [1, 3, 2]
    theirs = _torchcam(method, model, x, classes)
    assert torch.allclose(_ours(method, model, "features", x, classes), theirs, atol=2e-5), method
    assert all(p.grad is None for p in model.parameters()) or method in GRADIENT


def test_scorecam_matches_torchcam_with_upsampled_masks():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.randn(1, 3, 32, 32)
    extractor = tc.ScoreCAM(model, target_layer="layer2", batch_size=64)
    try:
        with torch.no_grad():
            model(x)
        theirs = extractor(class_idx=[3])[0]
    finally:
        extractor.remove_hooks()
    assert torch.allclose(_ours("scorecam", model, "layer2", x, [3]), theirs, atol=1e-4)


def test_torchcam_gradcampp_is_sum_of_squared_times_relu_gradients():
    """torchcam 0.5.0's GradCAMpp divides a copy (boolean-mask indexing), so its weights are sum_ij g^2 ReLU(g)
    rather than the paper's alpha-weighted ReLU(g): an intentional difference from camlens."""
    model = _tiny()
    x = torch.randn(2, 3, 8, 8)
    extractor = tc.GradCAMpp(model, target_layer="features")
    try:
        theirs = extractor(class_idx=[1, 2], scores=model(x))[0]
    finally:
        extractor.remove_hooks()
    a, g = activations_and_grads(model, "features", x, classes=torch.tensor([[1], [2]]))
    g = g[:, 0]
    weights = (g * g * torch.relu(g)).sum((-2, -1))
    want = normalize(torch.relu(torch.einsum("bk,bkhw->bhw", weights, a))).float()
    assert torch.allclose(theirs, want, atol=2e-5)
    ours = _ours("gradcampp", model, "features", x, [1, 2])
    assert not torch.allclose(ours, theirs, atol=1e-3)


def test_sscam_without_noise_is_scorecam_and_with_noise_matches_a_reference_for_any_batch_size():
    model = _tiny()
    x = torch.randn(2, 3, 8, 8)
    with (
        camlens.ScoreCAM(model, layer="features") as score,
        camlens.SSCAM(model, layer="features", num_samples=3, std=0.0) as smooth,
    ):
        assert torch.allclose(score(x, classes=[1, 2]).maps, smooth(x, classes=[1, 2]).maps, atol=1e-6)
    seed, n, std = 7, 4, 0.5
    results = []
    for batch_size in (1000, 3):  # one pass for all masks, or passes of 3 masks: the same noise for each mask
        with camlens.SSCAM(
            model,
            layer="features",
            num_samples=n,
            std=std,
            batch_size=batch_size,
            generator=torch.Generator().manual_seed(seed),
        ) as smooth:
            results.append(smooth(x, classes=[1, 2]))
    # reference: one draw of (B*K, 1, H, W) noise per sample index, as documented for a single batch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        acts = model.features(x)
        flat = acts.flatten(2)
        low, high = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
        masks = (
            torch.where(high > low, (flat - low) / (high - low).clamp_min(1e-30), 0.0)
            .view_as(acts)
            .flatten(0, 1)[:, None]
            .double()
        )
        images = x.repeat_interleave(acts.shape[1], 0).double()
        model64 = TinyNet().double()
        model64.load_state_dict(model.state_dict())
        total = 0
        for _ in range(n):
            noise = torch.randn(masks.shape, generator=gen).double()
            total = total + model64(images * (masks + std * noise))
        scores = (total / n).view(2, acts.shape[1], -1)[:, :, [1, 2]].diagonal(dim1=0, dim2=2).T  # (B, K)
        alpha = scores.softmax(1)
        want = torch.relu(torch.einsum("bk,bkhw->bhw", alpha, acts.double()))
    for res in results:
        assert torch.allclose(res.maps[:, 0].double(), want, atol=1e-5)
        assert np.isfinite(res.maps.numpy()).all()
