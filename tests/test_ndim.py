"""1-D signals and 3-D volumes: the CAM family on (B, K, L) and (B, K, D, H, W) feature maps of small GAP
networks, against float64 references of each formula written over flattened positions (so one reference
serves every rank), the CAM identity, pytorch-grad-cam on 3-D where it runs, and the rank-aware post-processing
(normalize, upsample, fuse)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camlens
from _method_refs import activations_and_grads, assert_close, layer_output, module, ref_channel_mask
from camlens import CAM, CamlensError, normalize, upsample
from camlens.capture import find_classifier, is_classifier

CONV = {1: nn.Conv1d, 3: nn.Conv3d}
POOL = {1: nn.MaxPool1d, 3: nn.MaxPool3d}
AVG = {1: nn.AdaptiveAvgPool1d, 3: nn.AdaptiveAvgPool3d}
SHAPE = {1: (2, 2, 16), 3: (2, 1, 6, 6, 6)}  # (B, C, *S): layer "features" at half resolution (8 / 3x3x3)
GRADIENT_METHODS = ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam"]


class GapNet(nn.Module):
    """conv-ReLU-maxpool(2)-conv-ReLU (``features``) - GAP - linear, or with ``squeeze`` SqueezeNet's head: a 1x1
    convolution classifier, ReLU, then adaptive average pooling."""

    def __init__(self, rank: int, classes: int = 4, channels: int = 5, squeeze: bool = False, stride: int = 2):
        super().__init__()
        conv, cin = CONV[rank], SHAPE[rank][1]
        layers = [conv(cin, 6, 3, padding=1), nn.ReLU()] + ([POOL[rank](2)] if stride == 2 else [])
        self.features = nn.Sequential(*layers, conv(6, channels, 3, padding=1), nn.ReLU())
        self.squeeze = squeeze
        if squeeze:
            self.classifier = nn.Sequential(conv(channels, classes, 1), nn.ReLU(), AVG[rank](1), nn.Flatten())
        else:
            self.pool, self.fc = AVG[rank](1), nn.Linear(channels, classes)

    def forward(self, x):
        f = self.features(x)
        return self.classifier(f) if self.squeeze else self.fc(self.pool(f).flatten(1))


@functools.cache
def net(rank: int, squeeze: bool = False, stride: int = 2) -> GapNet:
    torch.manual_seed(10 + rank)
    model = GapNet(rank, squeeze=squeeze, stride=stride).eval()
    if not squeeze:
        with torch.no_grad():
            model.fc.bias.uniform_(-1, 1)
    return model


def inputs(rank: int) -> torch.Tensor:
    torch.manual_seed(20 + rank)
    return torch.randn(SHAPE[rank])


# ------------------------------------------------------------------ references over flattened positions


def _per_map(a, g, rule):
    """rule(A, G, K, P) -> list of P values, on nested lists A[k][p], G[k][p]; maps shaped like a's positions."""
    batch, count = g.shape[:2]
    K, positions = a.shape[1], a.shape[2:]
    A_all, G_all = a.flatten(2).tolist(), g.flatten(3).tolist()
    out = torch.zeros(batch, count, positions.numel(), dtype=torch.float64)
    for b in range(batch):
        for n in range(count):
            out[b, n] = torch.tensor(rule(A_all[b], G_all[b][n], K, positions.numel()), dtype=torch.float64)
    return out.view(batch, count, *positions)


def _weighted(A, wts, K, P, relu):
    m = [sum(wts[k] * A[k][p] for k in range(K)) for p in range(P)]
    return [max(v, 0.0) for v in m] if relu else m


def _gradcam(A, G, K, P):
    return _weighted(A, [sum(G[k]) / P for k in range(K)], K, P, relu=True)


def _gradcampp(A, G, K, P):
    wts = []
    for k in range(K):
        s, total = sum(A[k]), 0.0
        for gv in G[k]:
            den = 2 * gv**2 + s * gv**3
            total += (gv**2 / den if den != 0 else 0.0) * max(gv, 0.0)
        wts.append(total)
    return _weighted(A, wts, K, P, relu=True)


def _xgradcam(A, G, K, P):
    wts = [sum(A[k][p] * G[k][p] for p in range(P)) / sum(A[k]) if sum(A[k]) != 0 else 0.0 for k in range(K)]
    return _weighted(A, wts, K, P, relu=False)


def _layercam(A, G, K, P):
    return [max(0.0, sum(max(G[k][p], 0.0) * A[k][p] for k in range(K))) for p in range(P)]


def _hirescam(A, G, K, P):
    return [sum(G[k][p] * A[k][p] for k in range(K)) for p in range(P)]


RULES = {
    "gradcam": _gradcam,
    "gradcampp": _gradcampp,
    "xgradcam": _xgradcam,
    "layercam": _layercam,
    "hirescam": _hirescam,
}


def _combine(a, weights):
    """ReLU(sum_k w[b, n, k] A[b, k]) by loops over flattened positions; weights nested lists (B, N, K)."""
    batch, K, positions = a.shape[0], a.shape[1], a.shape[2:]
    flat = a.flatten(2).tolist()
    out = [[_weighted(flat[b], w, K, positions.numel(), relu=True) for w in weights[b]] for b in range(batch)]
    return torch.tensor(out, dtype=torch.float64).view(batch, len(weights[0]), *positions)


def _softmax(values):
    top = max(values)
    e = [float(np.exp(v - top)) for v in values]
    return [v / sum(e) for v in e]


def ref_masked_scores(model, x, classes, coefficients, noise=None):
    """Score-CAM family: y_k = mean_i y(X * (c_i H_k + delta_ik)), H_k = Up(s(A_k)) with s the min-max over all
    positions and Up linear/trilinear (align_corners=False) to the input size; alpha = softmax_k; ReLU of the sum."""
    m64, _, a = layer_output(model, "features", x)
    batch, K = a.shape[:2]
    mode = {3: "linear", 5: "trilinear"}[x.ndim]
    weights = []
    with torch.no_grad():
        for b in range(batch):
            scores = []
            for k in range(K):
                mask = ref_channel_mask(a[b, k], x.shape[2:], mode)
                total = 0
                for i, c in enumerate(coefficients):
                    delta = 0 if noise is None else noise[i][b * K + k].double()
                    total = total + m64(x[b : b + 1].double() * (c * mask + delta))[0]
                scores.append(total / len(coefficients))
            scores = torch.stack(scores)  # (K, C)
            weights.append([_softmax(scores[:, int(c)].tolist()) for c in classes[b]])
    return _combine(a, weights)


def ref_ablation(model, x, classes):
    """y_k with channel k of the layer set to 0 at every position, w_k = (y - y_k) / y, ReLU of the sum."""
    m64, out, a = layer_output(model, "features", x)
    weights = []
    with torch.no_grad():
        for b in range(a.shape[0]):
            ablated = []
            for k in range(a.shape[1]):

                def zero(mod, args, o, k=k):
                    o = o.clone()
                    o[:, k] = 0
                    return o

                handle = module(m64, "features").register_forward_hook(zero)
                ablated.append(m64(x[b : b + 1].double())[0])
                handle.remove()
            y = out[b]
            weights.append([[((y[c] - ablated[k][c]) / y[c]).item() for k in range(a.shape[1])] for c in classes[b]])
    return _combine(a, weights)


def ref_eigen(model, x, center):
    _, _, a = layer_output(model, "features", x)
    maps = []
    for b in range(a.shape[0]):
        mat = a[b].flatten(1).T.numpy()  # (P, K)
        if center:
            mat = mat - mat.mean(0)
        proj = mat @ np.linalg.svd(mat, full_matrices=False)[2][0]
        maps.append(torch.from_numpy(-proj if abs(proj.min()) > abs(proj.max()) else proj).view(a.shape[2:]))
    return torch.stack(maps)


# ---------------------------------------------------------------------------------------------- CAM


@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("squeeze", [False, True], ids=["gap-linear", "1x1-conv-head"])
def test_cam_mean_over_positions_plus_bias_equals_logit(rank, squeeze):
    model, x = net(rank, squeeze), inputs(rank)
    res = CAM(model)(x, classes="all")
    assert res.layer == "features" and res.maps.shape[2:] == ((8,) if rank == 1 else (3, 3, 3))
    positions = tuple(range(2, res.maps.ndim))
    torch.testing.assert_close(res.maps.mean(positions) + res.bias, res.logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rank", [1, 3])
def test_cam_is_the_classifier_weighted_sum_of_the_features_in_float64(rank):
    model, x = net(rank), inputs(rank)
    res = CAM(model)(x, topk=2)
    _, _, a = layer_output(model, "features", x)
    w = model.fc.weight.double()
    weights = [[w[c].tolist() for c in row] for row in res.classes.tolist()]
    flat = a.flatten(2).tolist()
    want = torch.tensor(
        [
            [_weighted(flat[b], wc, a.shape[1], a.shape[2:].numel(), relu=False) for wc in weights[b]]
            for b in range(a.shape[0])
        ],
        dtype=torch.float64,
    ).view(res.maps.shape)
    assert_close(res.maps, want, what=f"CAM {rank}-D")


@pytest.mark.parametrize("rank", [1, 3])
def test_squeezenet_head_maps_are_relu_of_the_1x1_convolution(rank):
    model, x = net(rank, squeeze=True), inputs(rank)
    res = CAM(model)(x, classes=[[0, 2], [3, 1]])
    _, _, a = layer_output(model, "features", x)
    conv = model.classifier[0].double()
    with torch.no_grad():
        full = F.relu(conv(a))
    want = torch.stack([full[b, res.classes[b]] for b in range(2)])
    assert_close(res.maps, want, what=f"1x1 Conv{rank}d head")
    assert torch.equal(res.bias, torch.zeros_like(res.bias))


def test_one_classifier_rule_accepts_1x1_convolutions_of_any_rank_only():
    assert all(is_classifier(c(4, 3, 1)) for c in (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    assert not is_classifier(nn.Conv3d(4, 3, 3)) and not is_classifier(nn.Conv2d(4, 4, 1, groups=2))
    assert is_classifier(nn.Linear(4, 3), 3) and not is_classifier(nn.Linear(4, 3), 5)
    assert find_classifier(net(3, squeeze=True))[0] == "classifier.0"
    assert find_classifier(net(1))[0] == "fc"
    with pytest.raises(CamlensError, match="no Linear or 1x1 convolution"):
        find_classifier(nn.Sequential(nn.Conv3d(1, 2, 3)))


# ---------------------------------------------------------------------------------- layer methods


@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_gradient_method_matches_float64_reference(method, rank):
    model, x = net(rank), inputs(rank)
    with camlens.get_method(method)(model) as explainer:
        res = explainer(x, topk=2)
    assert explainer.layer_names == ["features"]
    a, g = activations_and_grads(model, "features", x, classes=res.classes)
    assert_close(res.maps, _per_map(a, g, RULES[method]), what=f"{method} {rank}-D")


@pytest.mark.parametrize("rank", [1, 3])
def test_gradcam_at_the_last_layer_is_relu_cam_over_positions(rank):
    model, x = net(rank), inputs(rank)
    cam = CAM(model)(x, topk=3)
    with camlens.GradCAM(model, layer="features") as explainer:
        grad = explainer(x, classes=cam.classes)
    torch.testing.assert_close(grad.maps, F.relu(cam.maps) / cam.maps[0, 0].numel(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("method", ["scorecam", "iscam", "sscam"])
def test_score_cam_family_matches_float64_reference_with_linear_or_trilinear_masks(method, rank):
    model, x = net(rank), inputs(rank)
    classes = torch.tensor([[0, 3], [2, 1]])
    extra = {
        "iscam": {"num_samples": 2},
        "sscam": {"num_samples": 2, "std": 0.5, "generator": torch.Generator().manual_seed(5)},
    }.get(method, {})
    with camlens.get_method(method)(model, layer="features", batch_size=3, **extra) as explainer:
        res = explainer(x, classes=classes)
    noise = None
    coefficients = [1.0]
    if method == "iscam":
        coefficients = [i * (i + 1) / 4 for i in (1, 2)]  # c_i = i(i+1) / 2n
    if method == "sscam":  # the draws SS-CAM documents: per variant, one (B*K, 1, *S) draw from the generator
        gen = torch.Generator().manual_seed(5)
        count = x.shape[0] * model.fc.in_features
        noise = [0.5 * torch.randn((count, 1, *x.shape[2:]), generator=gen) for _ in range(2)]
        coefficients = [1.0, 1.0]
    assert_close(res.maps, ref_masked_scores(model, x, classes, coefficients, noise), what=f"{method} {rank}-D")


@pytest.mark.parametrize("rank", [1, 3])
def test_ablation_cam_matches_float64_reference(rank):
    model, x = net(rank), inputs(rank)
    with camlens.AblationCAM(model, layer="features") as explainer:
        res = explainer(x, topk=2)
    assert_close(res.maps, ref_ablation(model, x, res.classes), what=f"Ablation-CAM {rank}-D")


@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("center", [False, True])
def test_eigen_cam_matches_float64_svd(rank, center):
    model, x = net(rank), inputs(rank)
    with camlens.EigenCAM(model, layer="features", center=center) as explainer:
        res = explainer(x, topk=2)
    want = ref_eigen(model, x, center)
    assert_close(res.maps[:, 0], want, what=f"Eigen-CAM {rank}-D")
    assert torch.equal(res.maps[:, 0], res.maps[:, 1])


def test_score_cam_refuses_a_layer_of_another_rank_than_the_input():
    class Collapse(nn.Module):  # a spectrogram model: (B, 1, F, T) in, a 1-D layer over time
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 3, padding=1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            self.frames = self.conv(x).mean(2)
            return self.fc(self.frames.mean(-1))

    model = Collapse().eval()
    layer_maps = camlens.GradCAM(model, layer="conv")(torch.randn(1, 1, 4, 6)).maps
    assert layer_maps.shape == (1, 1, 4, 6)
    with pytest.raises(CamlensError, match="same spatial rank"):
        camlens.ScoreCAM(model, layer="conv", reshape=lambda t: t.mean(2))(torch.randn(1, 1, 4, 6))


# ------------------------------------------------------------------------------ pytorch-grad-cam 3-D


PGC_3D = ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam"]  # its ScoreCAM and AblationCAM fail on 5-D


@pytest.mark.parametrize("method", PGC_3D + ["eigencam"])
def test_matches_pytorch_grad_cam_on_3d(method):
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(4)
    model = GapNet(3, stride=1).eval()  # layer at the input's resolution: pytorch-grad-cam's zoom is the identity
    with torch.no_grad():
        model.fc.weight.mul_(100)  # its eps (1e-7) negligible against the gradients
    x = inputs(3)
    names = {
        "gradcam": "GradCAM",
        "gradcampp": "GradCAMPlusPlus",
        "xgradcam": "XGradCAM",
        "layercam": "LayerCAM",
        "hirescam": "HiResCAM",
        "eigencam": "EigenCAM",
    }
    peer = getattr(pgc, names[method])(model=model, target_layers=[model.features])
    try:
        theirs = torch.from_numpy(peer(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in (0, 3)]))
    finally:
        peer.activations_and_grads.release()
    options = {"center": True} if method == "eigencam" else {}
    with camlens.get_method(method)(model, layer="features", **options) as explainer:
        res = explainer(x, classes=[0, 3])
    ours = normalize(F.relu(res.maps[:, 0]), spatial_dims=3)
    if method == "eigencam":  # the sign of an SVD vector is arbitrary; pytorch-grad-cam keeps numpy's
        flipped = normalize(F.relu(-res.maps[:, 0]), spatial_dims=3)
        ours = torch.stack(
            [o if (o - t).abs().max() < (f - t).abs().max() else f for o, f, t in zip(ours, flipped, theirs)]
        )
    assert theirs.shape == ours.shape == (2, 6, 6, 6)
    assert torch.allclose(ours, theirs, atol=1e-4), (method, (ours - theirs).abs().max().item())


# --------------------------------------------------------------------------------- post-processing


def test_normalize_min_maxes_over_the_given_spatial_dims():
    signals = torch.tensor([[[1.0, 3.0, 5.0], [2.0, 2.0, 2.0]]])
    torch.testing.assert_close(normalize(signals, spatial_dims=1), torch.tensor([[[0.0, 0.5, 1.0], [0.0, 0.0, 0.0]]]))
    volume = torch.arange(16.0).view(1, 2, 2, 2, 2)  # two maps of 2x2x2: each spans 7
    want = (torch.arange(16.0) % 8 / 7).view(1, 2, 2, 2, 2)
    torch.testing.assert_close(normalize(volume, spatial_dims=3), want)
    assert not torch.allclose(normalize(volume), want)  # per 2x2 slice: what the 2-D default would do
    with pytest.raises(CamlensError, match="spatial_dims=4"):
        normalize(volume, spatial_dims=4)


def test_upsample_picks_linear_or_trilinear_from_the_size_and_keeps_every_size():
    out = upsample(torch.tensor([[0.0, 4.0]]), (4,))  # centres at 0.25 and 0.75 between the inputs
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0, 3.0, 4.0]]))
    depth = torch.tensor([0.0, 4.0]).view(1, 1, 2, 1, 1).expand(1, 1, 2, 3, 3)
    out = upsample(depth, (4, 5, 6))
    assert out.shape == (1, 1, 4, 5, 6)
    torch.testing.assert_close(out[0, 0, :, 2, 3], torch.tensor([0.0, 1.0, 3.0, 4.0]))
    assert torch.equal(out, out[:, :, :, :1, :1].expand_as(out))  # constant along height and width
    with pytest.raises(CamlensError, match="does not resize 3-D maps"):
        upsample(depth, (4, 5, 6), mode="bilinear")


def test_fuse_of_3d_layers_upsamples_each_to_the_largest_and_takes_the_max():
    a, b = torch.rand(1, 1, 2, 2, 2), torch.rand(1, 1, 4, 4, 4)
    fused = camlens.fuse([a, b], spatial_dims=3)
    want = torch.maximum(upsample(normalize(a, spatial_dims=3), (4, 4, 4)), normalize(b, spatial_dims=3))
    torch.testing.assert_close(fused, want)


def test_fused_layer_maps_of_a_1d_network_are_in_unit_range_at_the_finest_layer():
    model, x = net(1), inputs(1)
    with camlens.GradCAM(model, layer=["features.0", "features"]) as explainer:
        res = explainer(x)
    assert res.maps.shape == (2, 1, 16) and res.spatial_dims == 1
    assert res.maps.min() >= 0 and res.maps.max() <= 1


# ------------------------------------------------------------------------------ faithfulness metrics


def _linear_model(features: int, classes: int = 3) -> nn.Module:
    torch.manual_seed(7)
    return nn.Sequential(nn.Flatten(), nn.Linear(features, classes)).eval()


def test_deletion_of_a_linear_logit_leaves_the_sum_over_the_samples_kept():
    from camlens.metrics.faithfulness import deletion_curve

    model, x = _linear_model(2 * 10), torch.randn(1, 2, 10)
    relevance = torch.randn(1, 10)
    curve = deletion_curve(model, x, relevance, 1, steps=10, score="logit")
    w, b = model[1].weight[1].view(2, 10), model[1].bias[1]
    order = relevance[0].argsort(descending=True, stable=True)
    want = [b + (w * x[0])[:, order[k:]].sum() for k in range(11)]
    torch.testing.assert_close(curve.scores[0], torch.stack(want).detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode,baseline", [("deletion", "zeros"), ("insertion", "mean")])
def test_perturbation_curves_of_a_volume_equal_those_of_its_voxels_as_a_signal(mode, baseline):
    from camlens.metrics.faithfulness import perturbation_curve

    model, volume = _linear_model(2 * 3 * 4 * 5), torch.randn(2, 2, 3, 4, 5)
    maps = torch.rand(2, 1, 3, 4, 5)
    options = dict(mode=mode, baseline=baseline, steps=7, batch_size=5)
    as_volume = perturbation_curve(model, volume, maps, [0, 2], **options)
    as_signal = perturbation_curve(model, volume.flatten(2), maps.flatten(2), [0, 2], **options)
    torch.testing.assert_close(as_volume.scores, as_signal.scores)
    torch.testing.assert_close(as_volume.fractions, as_signal.fractions)


def test_average_drop_on_signals_masks_each_sample_by_the_normalized_map():
    from camlens.metrics.faithfulness import confidence_change

    model, x = _linear_model(2 * 8), torch.randn(3, 2, 8)
    maps = torch.rand(3, 4)  # upsampled linearly to the 8 samples
    change = confidence_change(model, x, maps, [0, 1, 2])
    weights = normalize(upsample(maps, (8,)), spatial_dims=1)
    with torch.no_grad():
        masked = model(x * weights[:, None]).softmax(-1)[torch.arange(3), [0, 1, 2]]
    torch.testing.assert_close(change.masked, masked)


def test_rise_blur_of_a_volume_is_the_cube_of_its_1d_kernel():
    from camlens.metrics.faithfulness import rise_blur

    k1 = rise_blur(F.pad(torch.ones(1, 1, 1), (5, 5)))[0, 0]  # the 11-tap kernel, from a centred delta
    plane = rise_blur(F.pad(torch.ones(1, 1, 1, 1), (5, 5, 5, 5)))[0, 0]
    cube = rise_blur(F.pad(torch.ones(1, 1, 1, 1, 1), (5, 5, 5, 5, 5, 5)))[0, 0]
    torch.testing.assert_close(plane, torch.outer(k1, k1))
    torch.testing.assert_close(cube, k1[:, None, None] * k1[None, :, None] * k1[None, None, :])


@pytest.mark.parametrize("tolerance,hit", [(5, 0.0), (6, 1.0)])
def test_pointing_game_on_volumes_and_signals_uses_a_strict_euclidean_tolerance(tolerance, hit):
    from camlens.metrics.faithfulness import pointing_game

    masks = torch.zeros(1, 8, 8, 8, dtype=torch.bool)
    masks[0, 1, 1, 1] = True
    maps = torch.zeros(1, 8, 8, 8)
    maps[0, 4, 5, 1] = 1.0  # distance sqrt(9 + 16) = 5 from the truth
    assert pointing_game(maps, masks=masks, tolerance=tolerance).tolist() == [hit]
    signal_masks = torch.zeros(1, 20, dtype=torch.bool)
    signal_masks[0, 2] = True
    signal_maps = torch.zeros(1, 1, 10)
    signal_maps[0, 0, 4] = 1.0  # upsampled to 20 samples: peak at samples 8 and 9 (distances 6, 7)
    assert pointing_game(signal_maps, masks=signal_masks, tolerance=tolerance + 2).tolist() == [hit]


def test_what_stays_2d_says_so_in_one_line():
    from camlens.boxes import paper_boxes, wsol_sweep
    from camlens.metrics.faithfulness import FaithfulnessConfig, faithfulness_scores, pointing_game, road
    from camlens.metrics.localization import BoxAccuracy

    model, volume, maps = _linear_model(2 * 64), torch.randn(1, 2, 4, 4, 4), torch.rand(1, 4, 4, 4)
    errors = []
    for call in (
        lambda: road(model, volume, maps, 0),
        lambda: faithfulness_scores(model, volume, maps, 0),
        lambda: pointing_game(maps, boxes=torch.tensor([[0.0, 0, 2, 2]]), size=(4, 4, 4)),
        lambda: paper_boxes(torch.rand(1, 1, 4, 4, 4)),
        lambda: wsol_sweep(maps),
        lambda: BoxAccuracy().update(maps, [torch.tensor([[0.0, 0, 2, 2]])]),
    ):
        with pytest.raises(CamlensError) as err:
            call()
        errors.append(str(err.value))
    assert all("2-D" in e and "\n" not in e for e in errors), errors
    kept = FaithfulnessConfig(metrics=("average_drop", "deletion_auc", "insertion_auc"), steps=4)
    assert set(faithfulness_scores(model, volume, maps, 0, config=kept)) == set(kept.metrics)


# ------------------------------------------------------------------------------------------- figures


def test_volume_panels_blend_one_map_scale_into_slices_and_the_maximum_projection():
    from camlens.render import colorize, volume_panels

    volume, cam = torch.rand(1, 9, 6, 5), torch.rand(3, 3, 3)
    panels = volume_panels(volume, cam, slices=3, axis=0, alpha=0.4)
    heat = upsample(normalize(cam, spatial_dims=3), (9, 6, 5))
    assert panels.indices == [0, 4, 8] and panels.slices.shape == (3, 3, 6, 5)
    torch.testing.assert_close(panels.mip_map, heat.amax(0))
    grey = (volume - volume.min()) / (volume.max() - volume.min())
    torch.testing.assert_close(panels.slices[1], (0.6 * grey[0, 4] + 0.4 * colorize(heat[4])).clamp(0, 1))
    torch.testing.assert_close(panels.mip, (0.6 * grey[0].amax(0) + 0.4 * colorize(heat.amax(0))).clamp(0, 1))


def test_figures_for_signals_volumes_and_images_are_written_by_rank(tmp_path):
    from PIL import Image

    from camlens.render import map_figure

    paths = [
        map_figure(torch.randn(2, 40), torch.rand(10), tmp_path / "signal.png", title="1-D"),
        map_figure(torch.rand(1, 6, 8, 8), torch.rand(3, 4, 4), tmp_path / "volume.png", slices=4),
        map_figure(torch.rand(3, 16, 16), torch.rand(4, 4), tmp_path / "image.png"),
    ]
    sizes = [Image.open(p).size for p in paths]
    assert sizes[0] == (1000, 420) and sizes[2] == (1000, 360) and sizes[1][0] > sizes[1][1] > 0
    with pytest.raises(CamlensError, match="no figure"):
        map_figure(torch.rand(5), torch.rand(2), tmp_path / "x.png")
