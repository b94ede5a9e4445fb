"""Who may use `camlens serve` (issue #23.2): requests for other hosts (DNS rebinding) and cross-site
state-changing requests are refused, CORS stays closed unless one origin is named, security headers are on every
response, and an EPS upload is a 415 without any program run.  The app through httpx's TestClient, and the real
`camlens serve` on loopback for its defaults."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from camlens.models import GapNet, Preprocess, save_checkpoint
from camlens.web import create_app
from camlens.web.guard import default_hosts, host_allowed
from test_image_formats import EPS, fake_ghostscript
from test_web_api import tiny_classifier

HOST = "127.0.0.1:8000"


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client():
    app = create_app(tiny_classifier(), workers=1, allowed_hosts=default_hosts("127.0.0.1", 8000))
    with TestClient(app, base_url=f"http://{HOST}") as c:
        yield c


@pytest.fixture(scope="module")
def cors_client():
    app = create_app(tiny_classifier(), workers=1, allowed_hosts=["*"], cors_origin="https://app.example.org")
    with TestClient(app, base_url=f"http://{HOST}") as c:
        yield c


def _upload(c: TestClient, **headers: str) -> httpx.Response:
    return c.post("/api/explain", files={"file": ("x.png", _png(), "image/png")}, headers=headers)


def test_host_allow_list_matching():
    hosts = default_hosts("127.0.0.1", 8000)
    assert hosts == ["127.0.0.1:8000", "localhost:8000", "[::1]:8000"]
    assert default_hosts("::1", 80) == ["[::1]:80", "localhost:80", "127.0.0.1:80", "[::1]", "localhost", "127.0.0.1"]
    assert default_hosts("0.0.0.0", 8000) == ["localhost:8000", "127.0.0.1:8000", "[::1]:8000"]
    assert host_allowed("LOCALHOST:8000", hosts) and host_allowed("[::1]:8000", hosts)
    for forged in ["evil.example:8000", "127.0.0.1:8001", "localhost", "127.0.0.1.evil.example:8000", "", None]:
        assert not host_allowed(forged, hosts), forged
    assert host_allowed("cam.example.org:443", ["cam.example.org"]) and host_allowed("anything", ["*"])
    assert not host_allowed("cam.example.org:443", ["cam.example.org:8443"])


def test_forged_host_is_refused_with_json(client):
    for forged in ["evil.example", "evil.example:8000", "127.0.0.1:9999"]:
        res = client.get("/api/info", headers={"host": forged})
        assert res.status_code == 400 and "does not serve the host" in res.json()["error"], forged
        res = _upload(client, host=forged)
        assert res.status_code == 400, forged
    assert client.get("/api/info").status_code == 200
    assert client.get("/api/info", headers={"host": "localhost:8000"}).status_code == 200


def test_cross_site_posts_are_refused_same_origin_and_scripts_allowed(client):
    refused = [
        {"origin": "https://evil.example"},  # a cross-site fetch or form
        {"origin": "null"},  # a sandboxed frame or a file:// page
        {"origin": "http://localhost:8000"},  # another name for this server is another origin
        {"sec-fetch-site": "cross-site"},  # a form POST whose Origin a proxy stripped
        {"sec-fetch-site": "same-site", "origin": "http://127.0.0.1:3000"},  # another local app
    ]
    for headers in refused:
        res = _upload(client, **headers)
        assert res.status_code == 403 and "cross-site" in res.json()["error"], headers
        assert "\n" not in res.json()["error"]
    assert _upload(client).status_code == 200  # curl, scripts: no Origin, no Sec-Fetch-Site
    assert _upload(client, origin=f"http://{HOST}", **{"sec-fetch-site": "same-origin"}).status_code == 200  # the page
    assert client.get("/api/info", headers={"origin": "https://evil.example"}).status_code == 200  # reads: no state


def test_cors_is_closed_by_default(client):
    res = client.get("/api/info", headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in res.headers
    res = client.options(
        "/api/explain", headers={"origin": "https://evil.example", "access-control-request-method": "POST"}
    )
    assert "access-control-allow-origin" not in res.headers and res.status_code >= 400


def test_cors_origin_opens_the_api_to_that_origin_only(cors_client):
    good = "https://app.example.org"
    pre = cors_client.options("/api/explain", headers={"origin": good, "access-control-request-method": "POST"})
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == good
    res = _upload(cors_client, origin=good, **{"sec-fetch-site": "cross-site"})
    assert res.status_code == 200 and res.headers["access-control-allow-origin"] == good
    other = _upload(cors_client, origin="https://evil.example", **{"sec-fetch-site": "cross-site"})
    assert other.status_code == 403 and "access-control-allow-origin" not in other.headers


def test_security_headers_on_every_response(client):
    responses = [
        client.get("/"),
        client.get("/static/app.js"),
        client.get("/api/info"),
        client.get("/nowhere"),
        _upload(client),
        client.get("/api/info", headers={"host": "evil.example"}),
        _upload(client, origin="https://evil.example"),
    ]
    for res in responses:
        csp = res.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp, res.request.url
        assert "unsafe-inline" not in csp and "script-src" not in csp  # scripts: 'self' only, no inline
        assert res.headers["x-content-type-options"] == "nosniff" and res.headers["x-frame-options"] == "DENY"
        assert res.headers["referrer-policy"] == "no-referrer"


def test_the_page_has_no_inline_script_or_style(client):
    html = client.get("/").text
    assert not re.search(r"<script(?![^>]*\bsrc=)", html) and "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers


def test_eps_upload_is_415_and_runs_no_program(tmp_path):
    """The real server, with a stand-in `gs` first on its PATH: an EPS (named .eps or .png) is a 415 with one
    JSON line, and `gs` never runs."""
    env, marker = fake_ghostscript(tmp_path)
    env["PYTHONPATH"] = str(Path(__file__).parents[1] / "src")
    ckpt = save_checkpoint(
        tmp_path / "m.safetensors",
        GapNet(4).eval(),
        arch="gapnet",
        class_names=list("abcd"),
        preprocess=Preprocess((32, 32)),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "camlens", "serve", "--checkpoint", str(ckpt), "--port", "0", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        url = re.search(r"http://127\.0\.0\.1:(\d+)/", proc.stdout.readline()).group(0)
        for name in ("x.eps", "x.png"):
            res = httpx.post(f"{url}api/explain", files={"file": (name, EPS, "application/postscript")}, timeout=30)
            assert res.status_code == 415, res.text
            assert "not an image in a supported format" in res.json()["error"] and "\n" not in res.json()["error"]
        port = url.rstrip("/").rsplit(":", 1)[1]
        assert httpx.get(f"{url}api/info", headers={"host": f"attacker.example:{port}"}).status_code == 400
        assert httpx.get(f"{url}api/info", headers={"host": f"localhost:{port}"}).status_code == 200
        good = httpx.post(f"{url}api/explain", files={"file": ("a.png", _png())}, timeout=30)
        assert good.status_code == 200
    finally:
        proc.terminate()
        proc.wait(20)
        proc.stdout.close()
        proc.stderr.close()
    assert not marker.exists()
