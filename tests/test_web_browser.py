"""The page of `camlens serve` in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright),
against `camlens serve` running for real on a loopback port."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from camlens.models import GapNet, Preprocess, load_model, save_checkpoint

CHROMIUM = os.environ.get("CAMLENS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CLASSES = ["ant", "bee", "cow", "dog"]

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install 'camlens[web]')")
if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
    pytest.skip(
        f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CAMLENS_CHROMIUM)", allow_module_level=True
    )


def _png(h: int = 120, w: int = 160) -> bytes:
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 90)], -1).astype(np.uint8)
    arr[30:70, 90:140] = (250, 240, 30)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`camlens serve --port 0` for real in a subprocess, on a random GapNet checkpoint; yields (URL, model)."""
    root = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    ckpt = save_checkpoint(
        root / "tiny.safetensors",
        GapNet(len(CLASSES)).eval(),
        arch="gapnet",
        class_names=CLASSES,
        preprocess=Preprocess((32, 32), (0.5,) * 3, (0.25,) * 3),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "camlens", "serve", "--checkpoint", str(ckpt), "--port", "0", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert match, f"no URL in {line!r}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"
        url = match.group(0).rstrip("/")
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as res:
            assert json.load(res)["status"] == "ok"
        yield url, load_model(ckpt)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 900}, accept_downloads=True)
    pg = context.new_page()
    pg.problems = []  # console errors and failed requests, e.g. an asset blocked by the page's CSP
    pg.on("console", lambda msg: msg.type == "error" and pg.problems.append(msg.text))
    pg.on("pageerror", lambda err: pg.problems.append(str(err)))
    pg.on("requestfailed", lambda req: pg.problems.append(f"{req.url} failed"))
    yield pg
    context.close()


def _upload(page, data: bytes, name: str = "photo.png", mime: str = "image/png") -> None:
    page.set_input_files("#file", files=[{"name": name, "mimeType": mime, "buffer": data}])


def test_upload_shows_the_predicted_class_and_a_loaded_overlay_that_the_slider_and_toggle_change(
    server, page, tmp_path
):
    url, loaded = server
    data = _png()
    from camlens.data.images import decode_image, to_tensor

    with torch.no_grad():
        top = int(loaded.model(loaded.preprocess(to_tensor(decode_image(data)))).argmax())
    page.goto(url)
    page.wait_for_function("() => document.querySelectorAll('#method option').length > 1")
    assert page.inner_text("#model") == "tiny.safetensors (gapnet) · 4 classes"
    page.fill("#topk", "2")
    page.locator("#topk").blur()  # fire its change event now, before there is a file to explain
    _upload(page, data)
    page.wait_for_function("() => document.querySelectorAll('.card .overlay').length === 2")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.card .overlay')].every(i => i.complete && i.naturalWidth > 0)"
    )
    assert page.eval_on_selector(".card .overlay", "i => [i.naturalWidth, i.naturalHeight]") == [160, 120]
    assert page.inner_text(".card .label") == CLASSES[top]
    assert page.inner_text("#prediction-list li:first-child .pred-label") == CLASSES[top]

    stage = page.locator(".card .stage").first
    half = stage.screenshot()
    assert page.eval_on_selector(".card .overlay", "i => getComputedStyle(i).opacity") == "0.5"
    page.focus("#opacity")
    page.keyboard.press("End")  # the slider to 100%: only the heatmap shows
    assert page.input_value("#opacity") == "100"
    assert page.eval_on_selector(".card .overlay", "i => getComputedStyle(i).opacity") == "1"
    full = stage.screenshot()
    assert _pixels(full).shape == _pixels(half).shape
    assert np.abs(_pixels(full) - _pixels(half)).mean() > 5, "moving the slider did not change the rendering"

    assert page.locator(".card .box").first.is_visible()
    page.uncheck("#boxes")
    assert not page.locator(".card .box").first.is_visible()
    page.check("#boxes")

    with page.expect_download() as info:
        page.locator(".card .download").first.click()
    saved = tmp_path / "overlay.png"
    info.value.save_as(saved)
    png = Image.open(saved)
    assert png.format == "PNG" and png.size == (160, 120)
    assert page.problems == []


def test_a_bad_file_shows_the_servers_error_and_the_page_recovers(server, page):
    url, _ = server
    page.goto(url)
    page.wait_for_function("() => document.querySelectorAll('#method option').length > 1")
    _upload(page, b"definitely not an image", name="notes.png")
    page.wait_for_selector("#status.error")
    assert "not an image" in page.inner_text("#status")
    _upload(page, _png(), name="photo.png")
    page.wait_for_function(
        "() => document.querySelector('.card .overlay') && document.querySelector('.card .overlay').naturalWidth > 0"
    )
    assert "error" not in (page.get_attribute("#status", "class") or "")
    assert all("415" in p or "Unsupported" in p for p in page.problems)  # only the console note of the 415


def test_a_failed_upload_clears_the_previous_results(server, page):
    url, _ = server
    page.goto(url)
    page.wait_for_function("() => document.querySelectorAll('#method option').length > 1")
    _upload(page, _png(), name="photo.png")
    page.wait_for_selector(".card .overlay")
    assert page.query_selector_all("#prediction-list li")
    _upload(page, b"definitely not an image", name="notes.png")
    page.wait_for_selector("#status.error")
    assert page.query_selector_all(".card") == [] and page.query_selector_all("#prediction-list li") == []
    assert page.is_hidden("#predictions")


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.float64)
