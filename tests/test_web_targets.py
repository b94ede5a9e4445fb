"""The web page's ``target`` field: a multi-label request and a detector's box target give the maps and scores of
the Python API for the same image, and every target the model or method cannot take is a one-line 400."""

from __future__ import annotations

import base64
import io

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image

import camlens
from camlens import GradCAM, LayerCAM
from camlens.data.images import decode_image, to_tensor
from camlens.models import LoadedModel, Preprocess
from camlens.targets import Detection, PositiveLabels, Segmentation, default_layer
from camlens.web import create_app
from test_targets import TinySegmenter, _tiny_fasterrcnn
from test_web_api import CLASSES, tiny_classifier

BOXES = ["background", "cat", "car"]


def _photo(h: int, w: int, seed: int = 0) -> bytes:
    """A smooth random picture as PNG bytes."""
    rng = np.random.default_rng(seed)
    small = torch.from_numpy(rng.random((1, 3, 5, 7))).float()
    arr = (
        F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)[0]
        .clamp(0, 1)
        .permute(1, 2, 0)
        .mul(255)
        .round()
        .byte()
        .numpy()
    )
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def classifier() -> LoadedModel:
    return tiny_classifier()


@pytest.fixture(scope="module")
def detector() -> LoadedModel:
    return LoadedModel(
        _tiny_fasterrcnn(),
        BOXES,
        Preprocess((32, 32), (0.0,) * 3, (1.0,) * 3),
        "tiny-fasterrcnn",
        {"task": "detection"},
    )


@pytest.fixture(scope="module")
def client(classifier):
    with TestClient(create_app(classifier, workers=1)) as c:
        yield c


@pytest.fixture(scope="module")
def det_client(detector):
    with TestClient(create_app(detector, workers=1)) as c:
        yield c


def _post(client, data: bytes, params: str):
    return client.post(f"/api/explain?{params}", files={"file": ("x.png", data, "application/octet-stream")})


def _heat(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")).astype(float)


def _reference_heat(cam: torch.Tensor, height: int, width: int) -> np.ndarray:
    """The map min-max normalized, resized bilinearly to the image and coloured with jet."""
    up = F.interpolate(cam.double()[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    up = (up - up.min()) / (up.max() - up.min())
    return matplotlib.colormaps["jet"](up.numpy())[..., :3] * 255


def _assert_same_map(entry: dict, cam: torch.Tensor, height: int, width: int) -> None:
    assert cam.abs().max() > 0, "the reference map is zero: the comparison would say nothing"
    assert entry["map_size"] == [cam.shape[-1], cam.shape[-2]]
    diff = np.abs(_heat(entry["heatmap"]) - _reference_heat(cam, height, width))
    assert diff.max() <= 8 and diff.mean() < 1.0  # one step of the 8-bit colour table


def test_info_and_page_offer_the_target_field(client, det_client):
    info = client.get("/api/info").json()
    assert info["task"] == "classification" and "labels[:T]" in info["targets"]
    det = det_client.get("/api/info").json()
    assert det["task"] == "detection" and det["targets"].startswith("box:C:x0,y0,x1,y1")
    assert 'id="target"' in client.get("/").text


def test_multi_label_request_gives_one_map_per_positive_label_equal_to_the_python_api(client, classifier):
    data = _photo(40, 56)
    x = classifier.preprocess(to_tensor(decode_image(data)))
    with torch.no_grad():
        probs = classifier.model(x)[0].sigmoid()
    top = probs.sort(descending=True).values
    threshold = float((top[1] + top[2]) / 2)  # exactly two positive labels
    res = _post(client, data, f"method=layercam&topk=3&target=labels:{threshold!r}")
    assert res.status_code == 200, res.text
    body = res.json()
    want = LayerCAM(classifier.model)(x, target=PositiveLabels(threshold))
    positive = sorted((probs >= threshold).nonzero()[:, 0].tolist())
    assert len(positive) == 2
    assert [e["class"] for e in body["explained"]] == positive == want.classes[0].tolist()
    assert [e["label"] for e in body["explained"]] == [CLASSES[c] for c in positive]
    for n, e in enumerate(body["explained"]):
        assert e["score"] == pytest.approx(float(probs[e["class"]]), abs=1e-6)  # the sigmoid, the target's score
        assert e["score"] == pytest.approx(float(want.target_scores[0, n]), abs=1e-6)
        _assert_same_map(e, want.maps[0, n], 40, 56)
    assert body["explained"][0]["heatmap"] != body["explained"][1]["heatmap"]


def test_class_fills_in_a_sigmoid_target_without_one(client, classifier):
    data = _photo(40, 56, seed=1)
    body = _post(client, data, "method=gradcam&class=cow&target=sigmoid").json()
    x = classifier.preprocess(to_tensor(decode_image(data)))
    with torch.no_grad():
        want = classifier.model(x)[0, 2].sigmoid()
    assert [e["class"] for e in body["explained"]] == [2]
    assert body["explained"][0]["score"] == pytest.approx(float(want), abs=1e-6)


def test_box_target_on_a_detector_gives_the_python_apis_map_for_the_box_in_image_pixels(det_client, detector):
    width, height = 48, 40
    data = _photo(height, width, seed=2)
    x = detector.preprocess(to_tensor(decode_image(data)))
    with torch.no_grad():
        found = detector.model(x)[0]
    j = int(found["scores"].argmax())
    box, label = found["boxes"][j], int(found["labels"][j])
    in_image = (box * torch.tensor([width / 32, height / 32] * 2)).tolist()
    spec = f"box:{label}:{','.join(repr(v) for v in in_image)}"
    res = _post(det_client, data, f"method=gradcam&target={spec}")
    assert res.status_code == 200, res.text
    body = res.json()
    layer = default_layer(detector.model)
    want = GradCAM(detector.model, layer)(x, target=Detection(box, label))
    assert body["layer"] == layer and body["predictions"] == []
    (entry,) = body["explained"]
    assert entry["class"] == label and entry["label"] == BOXES[label]
    assert entry["score"] == pytest.approx(float(found["scores"][j]), abs=1e-6)
    assert entry["score"] == pytest.approx(float(want.target_scores[0, 0]), abs=1e-6)
    _assert_same_map(entry, want.maps[0, 0], height, width)


def test_segment_target_on_a_segmenter_gives_the_python_apis_map():
    torch.manual_seed(0)
    seg = LoadedModel(
        TinySegmenter().eval(),
        BOXES,
        Preprocess((32, 32), (0.5,) * 3, (0.25,) * 3),
        "tiny-seg",
        {"task": "segmentation"},
    )
    data = _photo(40, 48, seed=3)
    x = seg.preprocess(to_tensor(decode_image(data)))
    with torch.no_grad():
        c = int(seg.model(x)["out"].argmax(1).flatten().mode().values)  # the class most pixels are predicted as
    with TestClient(create_app(seg, workers=1)) as client:
        body = _post(client, data, f"method=layercam&target=segment:{BOXES[c]}").json()
    layer = default_layer(seg.model)
    want = camlens.LayerCAM(seg.model, layer)(x, target=Segmentation(c))
    assert body["layer"] == layer and body["predictions"] == []
    (entry,) = body["explained"]
    assert entry["class"] == c and entry["score"] == pytest.approx(float(want.target_scores[0, 0]), rel=1e-5)
    _assert_same_map(entry, want.maps[0, 0], 40, 48)


def test_a_box_no_prediction_matches_explains_nothing(det_client):
    body = _post(det_client, _photo(40, 48), "method=gradcam&target=box:2:0,0,1,1").json()
    assert body["explained"] == []


BAD = {
    "unparseable": ("client", "method=gradcam&target=heatmap:3", "target='heatmap:3': use one of"),
    "class out of range": ("client", "method=gradcam&target=sigmoid:9", "class 9 is out of range"),
    "threshold not a probability": ("client", "method=gradcam&target=labels:2", "between 0 and 1"),
    "kind not for the task": ("client", "method=gradcam&target=segment:1", "does not fit a classification model"),
    "not fitting the model output": ("client", "method=gradcam&target=regression", "Regression: the model output"),
    "target with cam": ("client", "method=cam&target=labels", "method=cam explains classes"),
    "box on a classifier": ("client", "method=gradcam&target=box:1:0,0,4,4", "does not fit a classification"),
    "box outside the image": ("det", "method=gradcam&target=box:1:0,0,60,10", "outside the 48x40 image"),
    "malformed box": ("det", "method=gradcam&target=box:1:0,0,4", "give box:C:x0,y0,x1,y1"),
    "detector without a target": ("det", "method=gradcam", "no image-level classes"),
    "segment on a detector": ("det", "method=gradcam&target=segment:1", "does not fit a detection model"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_bad_target_is_a_one_line_400_and_the_server_stays_up(client, det_client, case):
    which, params, message = BAD[case]
    c = client if which == "client" else det_client
    data = _photo(40, 48)
    res = _post(c, data, params)
    assert res.status_code == 400, res.text
    error = res.json()["error"]
    assert message in error and "\n" not in error
    ok = _post(c, data, "method=gradcam&target=labels" if which == "client" else "method=eigencam")
    assert ok.status_code == 200, ok.text
