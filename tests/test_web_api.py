"""The HTTP API of `camlens serve`, through an HTTP client against the real app around a tiny random GapNet."""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import re
import threading
from pathlib import Path

import httpx
import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image, features
from scipy import ndimage

from camlens.capture import layer_names
from camlens.data.images import decode_image, to_tensor
from camlens.methods import METHODS
from camlens.models import GapNet, LoadedModel, Preprocess
from camlens.web import create_app
from camlens.web.engine import ExplainerCache

CLASSES = ["ant", "bee", "cow", "dog"]
CNN_METHODS = [m for m in sorted(METHODS) if not METHODS[m].needs_attention]  # rollout, gae, legrad: ViTs only
MAX_BYTES = 2_000_000
MAX_PIXELS = 1_000_000


def tiny_classifier() -> LoadedModel:
    """The 4-class GapNet the web tests serve (also tests/test_web_targets.py)."""
    torch.manual_seed(0)
    return LoadedModel(
        GapNet(len(CLASSES), width=8).eval(), CLASSES, Preprocess((32, 32), (0.5,) * 3, (0.25,) * 3), "gapnet"
    )


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return tiny_classifier()


@pytest.fixture(scope="module")
def client(loaded):
    app = create_app(loaded, max_upload_bytes=MAX_BYTES, max_pixels=MAX_PIXELS, workers=2)
    with TestClient(app) as c:
        yield c


def _encode(arr: np.ndarray, fmt: str, mode: str | None = None, **kw) -> bytes:
    img = Image.fromarray(arr)
    if mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _photo(h: int = 40, w: int = 56, seed: int = 0) -> np.ndarray:
    """A smooth random picture (random noise would make every format's artefacts dominate)."""
    rng = np.random.default_rng(seed)
    small = torch.from_numpy(rng.random((1, 3, 5, 7))).float()
    return (
        F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)[0]
        .clamp(0, 1)
        .permute(1, 2, 0)
        .mul(255)
        .round()
        .byte()
        .numpy()
    )


def _post(client, data: bytes, params: str = "", name: str = "file", filename: str = "x.bin"):
    return client.post(f"/api/explain{params}", files={name: (filename, data, "application/octet-stream")})


def _decode_url(url: str) -> np.ndarray:
    head, payload = url.split(",", 1)
    assert re.fullmatch(r"data:image/(png|jpeg);base64", head), head
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB")).astype(np.int16)


def _reference_maps(loaded: LoadedModel, data: bytes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax scores and every class's CAM, M_c = sum_k w_k^c f_k, in float64 from GapNet's own parts."""
    image = to_tensor(decode_image(data))
    x = loaded.preprocess(image)
    net = loaded.model
    with torch.no_grad():
        feats = net.features(x).double()[0]
        logits = net.fc(net.pool(net.features(x)).flatten(1))[0]
        maps = torch.einsum("ck,khw->chw", net.fc.weight.double(), feats)
    return image, logits.softmax(-1), maps


def _jet(map01: torch.Tensor) -> np.ndarray:
    return matplotlib.colormaps["jet"](map01.numpy())[..., :3] * 255


def _norm(m: torch.Tensor) -> torch.Tensor:
    return (m - m.min()) / (m.max() - m.min())


GOOD = {
    "png_rgb": lambda: _encode(_photo(), "PNG"),
    "jpeg": lambda: _encode(_photo(), "JPEG", quality=95),
    "gif_palette": lambda: _encode(_photo(), "GIF", "P"),
    "png_grayscale": lambda: _encode(_photo(), "PNG", "L"),
    "png_rgba": lambda: _encode(np.dstack([_photo(), np.full((40, 56), 200, np.uint8)]), "PNG"),
    "bmp": lambda: _encode(_photo(), "BMP"),
    "tiff": lambda: _encode(_photo(), "TIFF"),
    "webp": lambda: _encode(_photo(), "WEBP", lossless=True),
}


def test_health_and_info_list_the_model_classes_methods_and_layers(client, loaded):
    assert client.get("/healthz").json() == {"status": "ok", "running": {"fast": 0, "expensive": 0}, "stopped": 0}
    info = client.get("/api/info").json()
    assert info["model"] == "gapnet" and info["classes"] == CLASSES
    assert [m["name"] for m in info["methods"]] == CNN_METHODS
    assert info["layers"] == layer_names(loaded.model)
    assert info["input_size"] == [32, 32]
    assert info["limits"]["max_upload_bytes"] == MAX_BYTES and info["limits"]["max_pixels"] == MAX_PIXELS


def test_page_and_its_assets_are_served_locally_with_no_external_url(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert {"/static/app.js", "/static/style.css"} <= set(refs)
    for text in [page.text] + [client.get(r).text for r in refs if r.startswith("/static/")]:
        assert not re.search(r"https?://", text), "the page must not load anything from another origin"
    for ref in refs:
        assert ref.startswith(("/static/", "data:")), ref
        if ref.startswith("/static/"):
            assert client.get(ref).status_code == 200
    for element in ('id="file"', 'id="method"', 'id="layer"', 'id="topk"', 'id="opacity"', 'id="boxes"'):
        assert element in page.text


@pytest.mark.parametrize("fmt", sorted(GOOD))
def test_every_format_and_mode_gives_the_models_own_scores_and_maps(client, loaded, fmt):
    if fmt == "webp" and not features.check("webp"):
        pytest.skip("this Pillow has no WebP support")
    data = GOOD[fmt]()
    res = _post(client, data, "?topk=2", filename="no-extension")
    assert res.status_code == 200, res.text
    body = res.json()
    image, probs, maps = _reference_maps(loaded, data)
    assert body["image_size"] == [56, 40] and body["display_size"] == [56, 40]
    assert [p["class"] for p in body["predictions"]] == probs.argsort(descending=True).tolist()
    assert [p["label"] for p in body["predictions"]] == [CLASSES[c] for c in probs.argsort(descending=True).tolist()]
    for pred in body["predictions"]:
        assert pred["score"] == pytest.approx(float(probs[pred["class"]]), abs=1e-6)
    assert [e["class"] for e in body["explained"]] == [p["class"] for p in body["predictions"][:2]]
    for e in body["explained"]:
        assert e["map_size"] == [8, 8]  # stride 4 on a 32 px input
        # the heatmap is this class's map, min-max normalized, resized to the image and coloured (one LUT step of slack)
        ref = _jet(
            F.interpolate(_norm(maps[e["class"]])[None, None], size=(40, 56), mode="bilinear", align_corners=False)[
                0, 0
            ]
        )
        heat = _decode_url(e["heatmap"])
        assert np.abs(heat - ref).max() <= 8 and np.abs(heat - ref).mean() < 1.0
        overlay = _decode_url(e["overlay"])
        shown = np.asarray(Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)))
        assert np.abs(overlay - (0.5 * shown + 0.5 * heat)).max() <= 1.0  # (1 - a) image + a heat at a = 0.5


def test_overlay_is_the_image_at_opacity_zero_and_the_heatmap_at_one(client):
    data = GOOD["png_rgb"]()
    zero = _post(client, data, "?alpha=0").json()["explained"][0]
    one = _post(client, data, "?alpha=1").json()["explained"][0]
    assert np.array_equal(_decode_url(zero["overlay"]), _photo().astype(np.int16))
    assert np.array_equal(_decode_url(one["overlay"]), _decode_url(one["heatmap"]))


class ColourNet(torch.nn.Module):
    """A hand-set GAP classifier whose class maps are known: feature c = ReLU(x_c - mean of the other two
    channels) at full resolution, and logit c = mean of feature c, so the CAM of 'red' is the redness map."""

    def __init__(self) -> None:
        super().__init__()
        conv = torch.nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            conv.weight.copy_((1.5 * torch.eye(3) - 0.5 * torch.ones(3, 3))[..., None, None])
            conv.bias.zero_()
        self.features = torch.nn.Sequential(conv, torch.nn.ReLU())
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(3, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(3))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def _squares(h: int = 60, w: int = 90) -> bytes:
    arr = np.full((h, w, 3), 128, np.uint8)
    arr[10:30, 50:80] = (255, 0, 0)
    arr[35:55, 10:30] = (0, 0, 255)
    return _encode(arr, "PNG")


@pytest.fixture(scope="module")
def colours() -> LoadedModel:
    return LoadedModel(
        ColourNet().eval(), ["red", "green", "blue"], Preprocess((32, 32), (0.5,) * 3, (0.25,) * 3), "colournet"
    )


def _reference_box(map01: torch.Tensor) -> list[int]:
    """The largest 8-connected component of {map > 20% of its max}, as [x0, y0, x1, y1] (exclusive edges)."""
    mask = (map01 > 0.2 * map01.max()).numpy()
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count == 0:
        return [0, 0, 0, 0]  # a constant map has no region above 20% of its max
    largest = 1 + int(np.argmax(ndimage.sum(mask, labels, range(1, count + 1))))
    ys, xs = np.nonzero(labels == largest)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def _colour_maps(loaded: LoadedModel, data: bytes) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model.features(loaded.preprocess(to_tensor(decode_image(data))))[0]


@pytest.mark.parametrize("max_side, scale", [(1024, 1), (45, 2)])
def test_box_is_the_paper_protocol_on_the_map_resized_to_the_image(colours, max_side, scale):
    """Red and blue squares: each class's box is its square (up to the blur of the 32 px input), is exactly the
    20%-of-max largest component of the shown heatmap, and is given in the original image's pixels."""
    data = _squares()
    with TestClient(create_app(colours, max_side=max_side)) as c:
        body = _post(c, data, "?topk=3").json()
    dw, dh = 90 // scale, 60 // scale
    assert body["image_size"] == [90, 60] and body["display_size"] == [dw, dh]
    assert [p["label"] for p in body["predictions"][:2]] == ["red", "blue"]
    maps = _colour_maps(colours, data)
    boxes = {}
    for e in body["explained"]:
        assert e["map_size"] == [32, 32] and _decode_url(e["overlay"]).shape == (dh, dw, 3)
        up = F.interpolate(_norm(maps[e["class"]])[None, None], size=(dh, dw), mode="bilinear", align_corners=False)[
            0, 0
        ]
        assert e["box"] == [scale * v for v in _reference_box(up)]
        boxes[e["label"]] = e["box"]
    assert np.abs(np.subtract(boxes["red"], [50, 10, 80, 30])).max() <= 4
    assert np.abs(np.subtract(boxes["blue"], [10, 35, 30, 55])).max() <= 4
    assert boxes["green"] == [0, 0, 0, 0]  # no green anywhere: a zero map, and the zero box


@pytest.mark.parametrize("method", CNN_METHODS)
def test_every_registered_method_explains_the_top_classes(client, method):
    res = _post(client, GOOD["jpeg"](), f"?method={method}&topk=3")
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["method"] == method
    assert [e["class"] for e in body["explained"]] == [p["class"] for p in body["predictions"][:3]]
    for e in body["explained"]:
        assert e["label"] == CLASSES[e["class"]] and 0 < e["score"] < 1
        x0, y0, x1, y1 = e["box"]  # the zero box where a random net's map has no positive part
        assert e["box"] == [0, 0, 0, 0] or (0 <= x0 < x1 <= 56 and 0 <= y0 < y1 <= 40)


def test_class_and_layer_can_come_from_the_query_or_the_form(client):
    data = GOOD["png_rgb"]()
    by_index = _post(client, data, "?class=2").json()
    by_label = client.post(
        "/api/explain", files={"file": ("x", data)}, data={"class": "cow", "layer": "features"}
    ).json()
    assert [e["class"] for e in by_index["explained"]] == [2] == [e["class"] for e in by_label["explained"]]
    assert by_label["layer"] == "features"
    assert by_index["explained"] == by_label["explained"]  # 'features' is the layer CAM finds by itself
    form_wins = client.post("/api/explain?topk=1", files={"file": ("x", data)}, data={"topk": "3"}).json()
    assert len(form_wins["explained"]) == 3


def _png_header_claiming(width: int, height: int) -> bytes:
    """A valid-looking PNG header for a huge image, with almost no data: a decompression bomb's first bytes."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


BAD = {
    # name: (how to send it, expected status, words in the error)
    "zero_byte_file": (lambda c: _post(c, b""), 400, "empty"),
    "empty_body": (
        lambda c: c.post("/api/explain", content=b"", headers={"content-type": "multipart/form-data; boundary=x"}),
        400,
        "no file",
    ),
    "text_file": (lambda c: _post(c, b"just some text\n" * 20, filename="cat.jpg"), 415, "not an image"),
    "html_named_png": (
        lambda c: _post(c, b"<html><script>alert(1)</script></html>", filename="x.png"),
        415,
        "not an image",
    ),
    "truncated_jpeg": (lambda c: _post(c, GOOD["jpeg"]()[:400]), 422, "truncated"),
    "huge_dimensions": (lambda c: _post(c, _encode(np.zeros((1001, 1000, 3), np.uint8), "PNG")), 422, "over the limit"),
    "bomb_header": (lambda c: _post(c, _png_header_claiming(60000, 60000)), 422, "limit"),
    "wrong_field_name": (lambda c: _post(c, GOOD["png_rgb"](), name="image"), 400, "field 'file'"),
    "not_multipart": (
        lambda c: c.post("/api/explain", content=GOOD["png_rgb"](), headers={"content-type": "image/png"}),
        415,
        "multipart",
    ),
    "malformed_multipart": (
        lambda c: c.post(
            "/api/explain",
            content=b"--x\r\nbad\r\n\r\n--y--",
            headers={"content-type": "multipart/form-data; boundary=x"},
        ),
        400,
        "",
    ),
    "over_upload_bytes": (lambda c: _post(c, b"\0" * (MAX_BYTES + 1)), 413, "limit"),
    "unknown_method": (lambda c: _post(c, GOOD["png_rgb"](), "?method=nope"), 400, "unknown method"),
    "topk_zero": (lambda c: _post(c, GOOD["png_rgb"](), "?topk=0"), 400, "topk"),
    "topk_too_big": (lambda c: _post(c, GOOD["png_rgb"](), "?topk=5"), 400, "between 1 and 4"),
    "topk_not_a_number": (lambda c: _post(c, GOOD["png_rgb"](), "?topk=two"), 400, "not an integer"),
    "class_out_of_range": (lambda c: _post(c, GOOD["png_rgb"](), "?class=4"), 400, "out of range"),
    "class_negative": (lambda c: _post(c, GOOD["png_rgb"](), "?class=-1"), 400, "out of range"),
    "class_unknown_label": (lambda c: _post(c, GOOD["png_rgb"](), "?class=zebra"), 400, "neither"),
    "unknown_layer": (lambda c: _post(c, GOOD["png_rgb"](), "?layer=nope"), 400, "no layer named"),
    "layer_not_before_the_gap_head": (lambda c: _post(c, GOOD["png_rgb"](), "?layer=features.0"), 400, "features.0"),
    "alpha_out_of_range": (lambda c: _post(c, GOOD["png_rgb"](), "?alpha=1.5"), 400, "alpha"),
    "alpha_nan": (lambda c: _post(c, GOOD["png_rgb"](), "?alpha=nan"), 400, "alpha"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_a_4xx_json_error_and_the_server_stays_up(client, case):
    send, status, words = BAD[case]
    res = send(client)
    assert res.status_code == status, res.text
    assert res.headers["content-type"] == "application/json"
    error = res.json()["error"]
    assert words in error and "Traceback" not in error and "\n" not in error
    assert client.get("/healthz").status_code == 200
    assert _post(client, GOOD["png_rgb"]()).status_code == 200


def test_an_unexpected_failure_is_a_500_json_without_traceback(loaded, monkeypatch):
    import camlens.web.app as web_app

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(web_app, "explain_payload", broken)
    with TestClient(create_app(loaded), raise_server_exceptions=False) as c:
        res = _post(c, GOOD["png_rgb"]())
        assert res.status_code == 500 and res.json() == {"error": "internal error; the server log has the details"}
        assert c.get("/healthz").status_code == 200


def test_uploads_over_the_spool_size_never_touch_the_disk(client, monkeypatch, tmp_path):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    big = _encode(np.random.default_rng(0).integers(0, 255, (700, 700, 3), dtype=np.uint8), "PNG")
    assert 1_200_000 < len(big) < MAX_BYTES  # over Starlette's 1 MB spool threshold
    assert _post(client, big).status_code == 200
    assert list(tmp_path.iterdir()) == []


def test_full_server_answers_503_instead_of_queueing_without_bound(loaded):
    with TestClient(create_app(loaded, max_pending=0)) as c:
        res = _post(c, GOOD["png_rgb"]())
        assert res.status_code == 503 and "busy" in res.json()["error"] and res.headers["retry-after"] == "1"


def _requests() -> list[tuple[bytes, str]]:
    methods = CNN_METHODS
    return [
        (_encode(_photo(30 + i, 50 - i, seed=i), "PNG"), f"?topk={1 + i % 3}&method={methods[i % len(methods)]}")
        for i in range(16)
    ]


async def _parallel(app, requests):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        return await asyncio.gather(*[c.post(f"/api/explain{q}", files={"file": ("x", d)}) for d, q in requests])


def test_sixteen_parallel_clients_get_exactly_the_sequential_answers(client, loaded):
    requests = _requests()
    sequential = [_post(client, d, q).json() for d, q in requests]
    app = create_app(loaded, workers=2, max_expensive=16)  # 6 of the 16 use perturbation methods
    try:
        parallel = asyncio.run(_parallel(app, requests))
    finally:
        app.state.close()
    assert [r.status_code for r in parallel] == [200] * 16
    assert [r.json() for r in parallel] == sequential


def test_a_one_pass_explainer_waits_to_prepare_while_score_cam_traces_the_model(loaded, monkeypatch):
    """torch.fx patches nn.Module.__call__ for every thread while Score-CAM traces its inference copy, so a
    one-pass explainer finding its layer (a forward pass) in that window ran into the tracer (a NameError)."""
    scorecam, gradcam = METHODS["scorecam"], METHODS["gradcam"]
    tracing, one_pass_preparing = threading.Event(), threading.Event()
    overlapped: list[bool] = []
    trace, find_layer = scorecam.prepare, gradcam.prepare

    def slow_trace(self, x):
        tracing.set()
        one_pass_preparing.wait(timeout=1)  # with the bug the one-pass prepare starts in this window
        trace(self, x)
        tracing.clear()

    def watched_find_layer(self, x):
        overlapped.append(tracing.is_set())
        one_pass_preparing.set()
        find_layer(self, x)

    monkeypatch.setattr(scorecam, "prepare", slow_trace)
    monkeypatch.setattr(gradcam, "prepare", watched_find_layer)
    cache = ExplainerCache(loaded.model)
    x = torch.rand(1, 3, 32, 32)
    maps: dict[str, torch.Tensor] = {}

    def explain(method: str) -> None:
        with cache.use(method, None, x) as explainer:
            maps[method] = explainer(x).maps

    expensive = threading.Thread(target=explain, args=("scorecam",))
    expensive.start()
    assert tracing.wait(timeout=30)
    explain("gradcam")
    expensive.join()
    cache.close()
    assert overlapped == [False] and set(maps) == {"scorecam", "gradcam"}


def test_batched_requests_match_the_sequential_answers_to_rounding(client, loaded):
    requests = [(d, "?topk=2") for d, _ in _requests()]
    sequential = [_post(client, d, q).json() for d, q in requests]
    app = create_app(loaded, workers=1, max_batch=8)
    engine = app.state.engine
    submitted = threading.Semaphore(0)
    submit = engine.submit

    def counting_submit(*args):
        future = submit(*args)
        submitted.release()
        return future

    engine.submit = counting_submit
    result: list = []
    with engine.cache._lock:  # hold the model thread at its first batch until every request is queued
        thread = threading.Thread(target=lambda: result.extend(asyncio.run(_parallel(app, requests))))
        thread.start()
        for _ in requests:
            assert submitted.acquire(timeout=60)
    thread.join()
    app.state.close()
    assert engine.largest_batch == 8 and engine.images == 16
    for res, seq in zip(result, sequential):
        got = res.json()
        assert [p["class"] for p in got["predictions"]] == [p["class"] for p in seq["predictions"]]
        assert [p["score"] for p in got["predictions"]] == pytest.approx(
            [p["score"] for p in seq["predictions"]], abs=1e-6
        )
        for e, s in zip(got["explained"], seq["explained"]):
            assert e["class"] == s["class"] and e["map_size"] == s["map_size"]
            assert np.abs(_decode_url(e["heatmap"]) - _decode_url(s["heatmap"])).max() <= 8
            assert np.abs(np.subtract(e["box"], s["box"])).max() <= 1


@pytest.mark.parametrize("cls", [c for c in METHODS.values() if c.thread_safe], ids=lambda c: c.name)
def test_explainers_called_without_a_lock_give_the_sequential_maps_from_eight_threads(loaded, cls):
    x = torch.rand(8, 1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with cls(copy.deepcopy(loaded.model)) as explainer:
        expected = [explainer(x[i], topk=2) for i in range(8)]
        got: list = [None] * 8
        barrier = threading.Barrier(8)

        def run(i: int) -> None:
            barrier.wait()
            got[i] = explainer(x[i], topk=2)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for want, res in zip(expected, got):
        assert torch.equal(res.classes, want.classes)
        torch.testing.assert_close(res.maps, want.maps, rtol=0, atol=1e-6)


def test_explainers_are_reused_evicted_and_leave_the_served_model_without_hooks(loaded):
    app = create_app(loaded, workers=1, max_explainers=1)
    data = GOOD["png_rgb"]()
    with TestClient(app) as c:
        answers = [_post(c, data, f"?layer={layer}").json() for layer in ("", "features", "", "features")]
    assert answers[0]["explained"] == answers[1]["explained"] == answers[2]["explained"] == answers[3]["explained"]
    for module in loaded.model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_serve_on_a_busy_port_fails_with_one_line_and_no_traceback(tmp_path):
    import socket
    import subprocess
    import sys

    from camlens.models import save_checkpoint

    ckpt = save_checkpoint(
        tmp_path / "m.safetensors",
        GapNet(2).eval(),
        arch="gapnet",
        class_names=["a", "b"],
        preprocess=Preprocess((32, 32)),
    )
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "camlens", "serve", "--checkpoint", str(ckpt), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 2, proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr


def test_connections_to_the_served_socket_get_tcp_nodelay():
    """Without TCP_NODELAY on accepted connections each keep-alive response waits ~40 ms for a delayed ACK."""
    import socket

    from camlens.web.serve import listen, url

    sock = listen("127.0.0.1", 0)
    assert url(sock) == f"http://127.0.0.1:{sock.getsockname()[1]}/"

    async def accepted_nodelay() -> int:
        seen: asyncio.Future = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport):
                seen.set_result(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname())
        value = await asyncio.wait_for(seen, 10)
        writer.close()
        server.close()
        return value

    assert asyncio.run(accepted_nodelay()) != 0


def _rss_bytes() -> int:
    """Resident memory after handing freed heap pages back to the system (so allocator slack is not counted)."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RSS is read from /proc (Linux, glibc)")
def test_memory_stays_flat_over_a_thousand_requests_from_eight_clients(loaded):
    """A leak of anything per request (the 64x64 image is 48 KiB as a tensor, its answer about 20 KiB) would
    grow RSS by 10 MiB or more in each window of 500 requests; allocator and cache warm-up settles in the first."""
    images = [_encode(_photo(64, 64, seed=i), "PNG") for i in range(8)]
    app = create_app(loaded, workers=2)

    async def clients(per_client: int) -> None:
        async def one(k: int, c: httpx.AsyncClient) -> None:
            for i in range(per_client):
                res = await c.post(f"/api/explain?topk={1 + i % 2}", files={"file": ("x", images[(k + i) % 8])})
                assert res.status_code == 200

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            await asyncio.gather(*[one(k, c) for k in range(8)])

    try:
        asyncio.run(clients(25))  # warm up allocator pools, explainers and caches
        start = _rss_bytes()
        asyncio.run(clients(63))
        middle = _rss_bytes()
        asyncio.run(clients(62))  # a leak of 20 KiB a request would add 10 MiB in each of these two windows
        end = _rss_bytes()
    finally:
        app.state.close()
    first, second = (middle - start) / 2**20, (end - middle) / 2**20
    assert second < 5 and first + second < 12, f"RSS grew by {first:.1f} then {second:.1f} MiB over 2 x 500 requests"
