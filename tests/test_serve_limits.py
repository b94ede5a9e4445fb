"""Bounded work per request in `camlens serve` (issue #16): an expensive method cannot hold the service, a
request whose client left stops computing, the compute budget and the expensive lane's queue answer with JSON,
and SIGTERM with work in flight exits within seconds.  Real servers on loopback (tests/_serve_slow.py), whose
model sleeps in every pass so that an SS-CAM request lasts ~14 s (70 passes of 0.2 s) on any machine."""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from _serve_traffic import start_server

pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install 'camlens[web]')")

DELAY = 0.2  # seconds per forward pass; SS-CAM at the default layer of the test model runs 70 passes
BUDGET = 4.0  # seconds of compute per expensive request, in the shared server
SCRIPT = Path(__file__).with_name("_serve_slow.py")


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class SlowServer:
    def __init__(self, **options: object) -> None:
        src = str(Path(__file__).parents[1] / "src")
        env = {**os.environ, "PYTHONPATH": src}
        self.proc, self.url = start_server(
            [sys.executable, str(SCRIPT), str(DELAY), *(f"{k}={v!r}" for k, v in options.items())], env
        )

    def post(self, method: str, timeout: float = 60) -> httpx.Response:
        return httpx.post(f"{self.url}/api/explain?method={method}", files={"file": ("x.png", _png())}, timeout=timeout)

    def health(self) -> dict:
        return httpx.get(f"{self.url}/healthz", timeout=10).json()

    def wait_running(self, lane: str, count: int, within: float) -> float:
        """Seconds until ``count`` calls run in ``lane``; fails after ``within``."""
        start = time.perf_counter()
        while self.health()["running"][lane] != count:
            assert time.perf_counter() - start < within, f"{lane} calls running: {self.health()}, not {count}"
            time.sleep(0.05)
        return time.perf_counter() - start

    def in_background(self, method: str, timeout: float = 60) -> tuple[threading.Thread, list]:
        out: list = []

        def run() -> None:
            try:
                out.append(self.post(method, timeout))
            except httpx.HTTPError as err:
                out.append(err)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread, out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture(scope="module")
def server():
    s = SlowServer(compute_budget=BUDGET, max_expensive=1, workers=1)
    yield s
    s.close()


def test_a_cam_request_is_answered_in_its_normal_time_while_sscam_runs(server):
    assert server.post("cam").status_code == 200  # explainer set-up
    normal = min(_timed(lambda: server.post("cam")) for _ in range(3))
    thread, out = server.in_background("sscam", timeout=3)  # leaves after 3 s; the server notices and stops
    server.wait_running("expensive", 1, within=10)
    during = [_timed(lambda: server.post("cam")) for _ in range(3)]
    assert server.health()["running"]["expensive"] == 1, "SS-CAM was still running while CAM was answered"
    assert max(during) < normal + 1.0, f"CAM took {during} s while SS-CAM ran, {normal:.2f} s alone"
    thread.join()
    server.wait_running("expensive", 0, within=10)


def test_a_request_whose_client_left_stops_computing_within_seconds(server):
    stopped = server.health()["stopped"]
    thread, out = server.in_background("sscam", timeout=1.0)
    server.wait_running("expensive", 1, within=10)
    thread.join()
    assert isinstance(out[0], httpx.TimeoutException)
    left = time.perf_counter()
    server.wait_running("expensive", 0, within=5)  # 14 s of passes were left
    assert time.perf_counter() - left < 3 and server.health()["stopped"] == stopped + 1


def test_a_second_expensive_request_gets_503_while_the_lane_is_full(server):
    thread, out = server.in_background("sscam", timeout=2.0)
    server.wait_running("expensive", 1, within=10)
    res = server.post("ablationcam")
    assert res.status_code == 503 and res.headers["retry-after"] == "5" and "busy" in res.json()["error"]
    assert server.post("gradcam").status_code == 200  # the one-pass lane is not affected
    thread.join()
    server.wait_running("expensive", 0, within=5)


def test_over_the_compute_budget_is_a_504_json_error_within_the_budget(server):
    start = time.perf_counter()
    res = server.post("sscam")
    took = time.perf_counter() - start
    assert res.status_code == 504 and f"compute budget of {BUDGET:g} s" in res.json()["error"]
    assert took < BUDGET + 3 * DELAY + 2, f"answered after {took:.1f} s"


def test_sigterm_with_work_in_flight_exits_within_seconds():
    s = SlowServer(compute_budget=60.0)
    try:
        thread, out = s.in_background("sscam")
        s.wait_running("expensive", 1, within=10)
        start = time.perf_counter()
        s.proc.send_signal(signal.SIGTERM)
        s.proc.wait(15)
        took = time.perf_counter() - start
        thread.join(10)
    finally:
        s.close()
    assert took < 4, f"the server exited {took:.1f} s after SIGTERM"
    assert out[0].status_code == 503 and "shutting down" in out[0].json()["error"]


def _timed(fn) -> float:
    start = time.perf_counter()
    res = fn()
    assert res.status_code == 200, res.text
    return time.perf_counter() - start
