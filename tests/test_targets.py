"""Built-in targets: each map is built from the gradient of exactly the target's score (checked against autograd
of that score written out by hand), per-image targets stay right in the perturbation methods (a batch equals a
loop over single images), and targets that do not fit the output fail with one line."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import detection, segmentation

import camlens
from _method_refs import TinyNet
from camlens import CamlensError, EigenCAM, GradCAM, HiResCAM
from camlens.targets import (
    Detection,
    Logit,
    PositiveLabels,
    Regression,
    Segmentation,
    Sigmoid,
    Softmax,
    default_layer,
    parse_target,
)


def direct_hirescam(model: nn.Module, layer: str, x: torch.Tensor, score) -> torch.Tensor:
    """sum_k (d y_b / d A_bk) A_bk for y = score(output) (B,), by plain autograd through the whole model."""
    store = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, a, out: store.__setitem__("a", out))
    try:
        with torch.enable_grad():
            y = score(model(x))
            (g,) = torch.autograd.grad(y.sum(), store["a"])
    finally:
        handle.remove()
    return (g * store["a"]).sum(1).detach()


def assert_close(got, want, rel=1e-5):
    scale = want.abs().max().clamp_min(1e-12)
    assert (got - want).abs().max() <= rel * scale, f"max diff {(got - want).abs().max():.3g} vs scale {scale:.3g}"


# ----- classification and regression


@pytest.mark.parametrize(
    "cls, fn", [(Logit, lambda z: z), (Softmax, lambda z: z.softmax(-1)), (Sigmoid, lambda z: z.sigmoid())]
)
def test_classification_target_map_is_the_gradient_of_that_score(cls, fn):
    model = TinyNet(classes=5).eval()
    x = torch.randn(3, 3, 8, 8)
    per_sample = torch.tensor([4, 0, 2])
    res = HiResCAM(model, "features")(x, target=cls(per_sample))
    want = direct_hirescam(model, "features", x, lambda z: fn(z)[torch.arange(3), per_sample])
    assert_close(res.maps[:, 0], want)
    assert res.classes[:, 0].tolist() == per_sample.tolist()
    assert_close(res.target_scores[:, 0], fn(model(x))[torch.arange(3), per_sample].detach())


def test_logit_without_class_explains_each_samples_top_class_like_classes():
    model = TinyNet(classes=5).eval()
    x = torch.randn(3, 3, 8, 8)
    by_target = GradCAM(model)(x, target=Logit())
    by_class = GradCAM(model)(x)
    assert torch.equal(by_target.classes, by_class.classes)
    assert torch.allclose(by_target.maps, by_class.maps, atol=1e-7)


def test_positive_labels_give_one_sigmoid_map_per_positive_label_and_zero_padding():
    model = TinyNet(classes=6).eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        z = model(x)
    threshold = float(z.sigmoid().median())
    positive = z.sigmoid() >= threshold
    res = HiResCAM(model, "features")(x, target=PositiveLabels(threshold))
    assert res.maps.shape[1] == int(positive.sum(1).max())
    for b in range(3):
        labels = positive[b].nonzero()[:, 0].tolist()
        slots = res.classes[b].tolist()
        assert slots[: len(labels)] == labels and all(c == -1 for c in slots[len(labels) :])
        for n, c in enumerate(labels):
            want = direct_hirescam(model, "features", x[b : b + 1], lambda out: out.sigmoid()[:, c])  # noqa: B023 (called now)
            assert_close(res.maps[b, n], want[0])
            assert_close(res.target_scores[b, n], z.sigmoid()[b, c])
        assert (res.maps[b, len(labels) :] == 0).all() and res.target_scores[b, len(labels) :].isnan().all()


class Regressor(nn.Module):
    def __init__(self, outputs: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh())
        self.head = nn.Linear(6, outputs)

    def forward(self, x):
        return self.head(self.features(x).pow(2).mean((-2, -1)))


@pytest.mark.parametrize("outputs, index", [(1, None), (3, 2)])
def test_regression_target_map_is_the_gradient_of_the_output(outputs, index):
    model = Regressor(outputs).eval()
    x = torch.randn(2, 3, 8, 8)
    res = HiResCAM(model, "features")(x, target=Regression(index))
    want = direct_hirescam(model, "features", x, lambda y: y[:, 0 if index is None else index])
    assert_close(res.maps[:, 0], want)


# ----- segmentation


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    return segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3).eval()


def test_segmentation_target_over_predicted_pixels_is_the_gradient_of_their_summed_scores(segmenter):
    x = torch.rand(2, 3, 48, 48)
    layer = default_layer(segmenter)
    with torch.no_grad():
        out = segmenter(x)["out"]
    category = int(out.argmax(1).flatten().mode().values)  # a class some pixels are predicted as
    predicted = out.argmax(1) == category
    res = HiResCAM(segmenter, layer)(x, target=Segmentation(category))
    want = direct_hirescam(segmenter, layer, x, lambda o: (o["out"][:, category] * predicted).sum((-2, -1)))
    assert_close(res.maps[:, 0], want)
    assert res.classes[:, 0].tolist() == [category, category]


def test_segmentation_target_over_a_given_mask_per_image(segmenter):
    x = torch.rand(2, 3, 48, 48)
    mask = torch.zeros(2, 48, 48)
    mask[0, :20, :20] = 1
    mask[1, 30:, 10:40] = 0.5
    layer = default_layer(segmenter)
    res = HiResCAM(segmenter, layer)(x, target=Segmentation(1, mask))
    want = direct_hirescam(segmenter, layer, x, lambda o: (o["out"][:, 1] * mask).sum((-2, -1)))
    assert_close(res.maps[:, 0], want)


# ----- detection

DETECTORS = {  # few candidates, so that a pass on two 64 px images takes a fraction of a second
    "fasterrcnn_resnet50_fpn": {
        "box_score_thresh": 0.0,
        "rpn_pre_nms_top_n_test": 30,
        "rpn_post_nms_top_n_test": 30,
        "box_detections_per_img": 10,
    },
    "retinanet_resnet50_fpn": {"score_thresh": 0.0, "topk_candidates": 30, "detections_per_img": 10},
    "fcos_resnet50_fpn": {"score_thresh": 0.0, "topk_candidates": 30, "detections_per_img": 10},
}


def _a_predicted_box(found: dict) -> int:
    """Index of a predicted box with positive area (random weights also predict degenerate ones)."""
    sizes = (found["boxes"][:, 2:] - found["boxes"][:, :2]).prod(1)
    return int(sizes.argmax())


@pytest.mark.parametrize("name", list(DETECTORS))
def test_detection_target_map_is_the_gradient_of_the_matched_boxs_score(name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(
        name, weights=None, weights_backbone=None, num_classes=4, min_size=64, max_size=64, **DETECTORS[name]
    ).eval()
    x = torch.rand(2, 3, 64, 64)
    layer = default_layer(model)
    assert layer == "backbone.body.layer4"
    picked = {}

    def score(out):  # picks a box per image; the given box is that box itself (IoU 1), so its score is explained
        picked["boxes"] = torch.stack([found["boxes"][_a_predicted_box(found)].detach() for found in out])
        picked["labels"] = [int(found["labels"][_a_predicted_box(found)]) for found in out]
        return torch.stack([found["scores"][_a_predicted_box(found)] for found in out])

    want = direct_hirescam(model, layer, x, score)
    res = HiResCAM(model, layer)(x, target=Detection(picked["boxes"], picked["labels"]))
    assert_close(res.maps[:, 0], want)
    assert res.classes[:, 0].tolist() == picked["labels"]


def test_eigencam_explains_a_detector_without_a_target():
    model = _tiny_fasterrcnn()
    x = torch.rand(1, 3, 32, 32)
    res = EigenCAM(model, "backbone")(x)
    store = {}
    handle = model.backbone.register_forward_hook(lambda m, a, out: store.__setitem__("a", out))
    with torch.no_grad():
        model(x)
    handle.remove()
    a = store["a"][0].flatten(1).T  # (hw, K)
    v = torch.linalg.svd(a, full_matrices=False).Vh[0]
    proj = a @ v
    proj = -proj if proj.min().abs() > proj.max().abs() else proj
    assert res.classes.tolist() == [[-1]] and res.logits.shape == (1, 0)
    assert_close(res.maps[0, 0].flatten(), proj, rel=1e-4)


class TinyBackbone(nn.Sequential):
    """Two strided convolutions: 8 channels at 1/4 resolution, so Score-CAM scores only 8 masks per image."""

    out_channels = 8

    def __init__(self) -> None:
        super().__init__(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())


def _tiny_fasterrcnn() -> nn.Module:
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    torch.manual_seed(0)
    return detection.FasterRCNN(
        TinyBackbone(),
        num_classes=3,
        min_size=32,
        max_size=32,
        box_score_thresh=0.0,
        box_detections_per_img=30,
        rpn_anchor_generator=AnchorGenerator(((8, 16),), ((1.0,),)),
        box_roi_pool=MultiScaleRoIAlign(["0"], 4, 2),
    ).eval()


class TinySegmenter(nn.Module):
    """A torchvision-style segmenter: features, 1x1 classifier, upsampled, returned as {"out": (B, C, H, W)}."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 6, 3, 2, 1), nn.ReLU())
        self.classifier = nn.Conv2d(6, 3, 1)

    def forward(self, x):
        scores = nn.functional.interpolate(self.classifier(self.backbone(x)), size=x.shape[-2:], mode="bilinear")
        return OrderedDict(out=scores)


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_per_image_detection_target_in_perturbation_batches_equals_a_loop_over_images(method):
    model = _tiny_fasterrcnn()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
    picks = [_a_predicted_box(found) for found in out]
    boxes = torch.stack([found["boxes"][j] for found, j in zip(out, picks)])
    labels = [int(found["labels"][j]) for found, j in zip(out, picks)]
    explainer = camlens.get_method(method)(model, "backbone", batch_size=64)
    batched = explainer(x, target=Detection(boxes, labels))
    for b in range(3):
        single = explainer(x[b : b + 1], target=Detection(boxes[b], labels[b]))
        assert_close(batched.maps[b], single.maps[0], rel=1e-4)
    assert (batched.maps.flatten(1).amax(1) > 0).all()


@pytest.mark.parametrize("method", ["scorecam", "iscam", "ablationcam"])
def test_per_image_segmentation_mask_in_perturbation_batches_equals_a_loop_over_images(method):
    model = TinySegmenter().eval()
    x = torch.rand(3, 3, 16, 16)
    mask = torch.rand(3, 16, 16) > 0.6
    kw = {"num_samples": 2} if method == "iscam" else {}
    explainer = camlens.get_method(method)(model, "backbone", batch_size=4, **kw)  # passes mix the images' copies
    batched = explainer(x, target=Segmentation(2, mask))
    for b in range(3):
        single = explainer(x[b : b + 1], target=Segmentation(2, mask[b]))
        assert_close(batched.maps[b], single.maps[0], rel=1e-5)


def test_a_callable_taking_rows_receives_each_rows_source_sample():
    model = TinySegmenter().eval()
    x = torch.rand(2, 3, 16, 16)
    weights = torch.tensor([1.0, -1.0])
    seen = []

    def target(output, rows):
        seen.append(rows.clone())
        return output["out"][:, 0].mean((-2, -1)) * weights[rows]

    camlens.ScoreCAM(model, "backbone", batch_size=5)(x, target=target)
    masked = torch.cat(seen[:-1])  # then the unperturbed batch, for target_scores
    assert masked.tolist() == sorted(masked.tolist()) and set(masked.tolist()) == {0, 1}
    assert seen[-1].tolist() == [0, 1]


# ----- errors


def test_targets_that_do_not_fit_the_output_fail_with_one_line():
    classifier = TinyNet(classes=5).eval()
    x = torch.randn(2, 3, 8, 8)
    cases = [
        (classifier, Segmentation(1), "per-pixel class scores"),
        (classifier, Detection([0, 0, 4, 4], 1), "detector's output"),
        (classifier, Logit(7), "out of range"),
        (classifier, Regression(), "needs an index"),
        (classifier, Softmax([1, 2, 3]), "one per sample"),
        (TinySegmenter().eval(), Logit(0), "needs \\(batch, classes\\)"),
        (TinySegmenter().eval(), Segmentation(1, torch.ones(4, 4)), "resolution"),
    ]
    for model, target, message in cases:
        with pytest.raises(CamlensError, match=message) as err:
            GradCAM(model)(x if model is classifier else torch.rand(2, 3, 16, 16), target=target)
        assert "\n" not in str(err.value)


def test_a_box_outside_the_image_fails_with_one_line():
    model = _tiny_fasterrcnn()
    with pytest.raises(CamlensError, match="outside the 32x32 input"):
        GradCAM(model, "backbone")(torch.rand(1, 3, 32, 32), target=Detection([10, 10, 40, 20], 1))


def test_parse_target_reads_every_kind_and_names_what_is_wrong():
    names = ["cat", "dog", "person"]
    assert parse_target("softmax:dog", names).category == 1
    assert parse_target("logit", names).category is None
    assert parse_target("labels:0.3", names).threshold == 0.3
    assert parse_target("regression:2").index == 2
    assert parse_target("segment:person", names).category == 2
    recipe = parse_target("box:cat:10,20,30,40", names)
    assert recipe.box == (10, 20, 30, 40) and recipe.category == 0
    target = recipe.build([(100, 200)], (50, 50))  # boxes scale from image pixels to the model input
    assert target.box.tolist() == [[5.0, 5.0, 15.0, 10.0]]
    for spec, message in [
        ("box:cat:1,2,3", "x0,y0,x1,y1"),
        ("labels:2", "between 0 and 1"),
        ("seg:1", "use one of"),
        ("softmax:horse", "neither a class index"),
        ("logit:5", "out of range"),
        ("box:cat:30,0,10,5", "x0 < x1"),
    ]:
        with pytest.raises(CamlensError, match=message):
            parse_target(spec, names)
    with pytest.raises(CamlensError, match="outside the 20x20 image"):
        recipe.check(20, 20)
