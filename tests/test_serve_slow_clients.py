"""Slow and idle clients cannot lock out `camlens serve` (issue #24.1): a request takes one of the request slots only
once its whole body has arrived; bodies must keep a minimum rate; request heads must arrive within a timeout; and
connections are bounded per client address and in total.  A real server on loopback (tests/_serve_slow.py, with
no model delay), short timeouts so the test ends by itself within ~15 s."""

from __future__ import annotations

import os
import select
import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from _serve_traffic import start_server
from test_serve_limits import _png

pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install 'camlens[web]')")

SCRIPT = Path(__file__).with_name("_serve_slow.py")
TIMEOUT = 2.0  # the server's header and body timeouts in this test
IDLE = 100  # connections that send a request head (or part of one) and then nothing
TRICKLE = 20  # connections that send their body one byte a second


def _server(**options: object):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    return start_server([sys.executable, str(SCRIPT), "0", *(f"{k}={v!r}" for k, v in options.items())], env)


def _stop(proc) -> None:
    proc.kill()
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()


def _head(port: int, length: int = 100_000) -> bytes:
    return (
        f"POST /api/explain HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; "
        f"boundary=xyz\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``sock`` (read EOF or reset), or None if still open after ``seconds``."""
    start = time.monotonic()
    while (left := start + seconds - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            break
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except OSError:
            return time.monotonic() - start
    return None


def test_idle_and_trickling_connections_do_not_lock_out_uploads():
    proc, url = _server(
        header_timeout=TIMEOUT,
        body_timeout=TIMEOUT,
        keep_alive=TIMEOUT,
        max_per_client=400,
        max_connections=400,
        max_pending=64,
    )
    port = int(url.rsplit(":", 1)[1])
    socks: list[socket.socket] = []
    stop = threading.Event()
    try:
        httpx.post(f"{url}/api/explain", files={"file": ("x.png", _png())}, timeout=30)  # warm the explainer
        t0 = time.perf_counter()
        assert httpx.post(f"{url}/api/explain", files={"file": ("x.png", _png())}, timeout=30).status_code == 200
        usual = time.perf_counter() - t0
        opened = time.monotonic()
        for i in range(IDLE):  # half send a whole head and no body, half a head cut short
            sock = socket.create_connection(("127.0.0.1", port))
            head = _head(port)
            sock.sendall(head if i % 2 else head[: len(head) // 2])
            socks.append(sock)
        trickling = [socket.create_connection(("127.0.0.1", port)) for _ in range(TRICKLE)]
        for sock in trickling:
            sock.sendall(_head(port) + b"--xyz\r\n")

        def trickle() -> None:
            for _ in range(10):  # bounded: at most 10 s
                if stop.wait(1.0):
                    return
                for sock in trickling:
                    try:
                        sock.send(b"a")
                    except OSError:
                        pass

        feeder = threading.Thread(target=trickle, daemon=True)
        feeder.start()
        time.sleep(0.5)  # every connection is open and waiting
        times, statuses = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            res = httpx.post(f"{url}/api/explain", files={"file": ("x.png", _png())}, timeout=30)
            times.append(time.perf_counter() - t0)
            statuses.append(res.status_code)
        assert statuses == [200] * 5, statuses
        assert max(times) < max(2.0, 10 * usual), (times, usual)
        # every idle and trickling connection is closed by the server within the timeout (plus scheduling slack)
        for sock in socks + trickling:
            waited = _closed_within(sock, opened + TIMEOUT + 3.0 - time.monotonic())
            assert waited is not None, "a slow connection was still open after the timeout"
        assert time.monotonic() - opened < TIMEOUT + 3.0
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    finally:
        stop.set()
        for sock in socks + locals().get("trickling", []):
            sock.close()
        _stop(proc)


def test_connections_are_bounded_per_client_address_and_in_total():
    proc, url = _server(max_per_client=3, max_connections=5, header_timeout=5.0)
    port = int(url.rsplit(":", 1)[1])
    held = []
    try:
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        time.sleep(0.2)
        # a 4th from the same address is refused; 2 from another are admitted (5 in all); a 6th, from a third
        # address, is over the total
        for source, reason in [
            ("127.0.0.1", b"too many connections from 127.0.0.1"),
            ("127.0.0.2", None),
            ("127.0.0.2", None),
            ("127.0.0.3", b"busy: 5 connections open"),
        ]:
            sock = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
            if reason is None:
                held.append(sock)
                time.sleep(0.1)
                continue
            sock.settimeout(5)
            answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 503") and reason in answer, answer
            assert sock.recv(65536) == b""  # and closed
            sock.close()
        for sock in held:  # a client that lets go gets its share back
            sock.close()
        time.sleep(0.2)
        assert httpx.post(f"{url}/api/explain", files={"file": ("x.png", _png())}, timeout=30).status_code == 200
    finally:
        for sock in held:
            sock.close()
        _stop(proc)


def test_timed_body_enforces_the_pause_and_the_rate():
    import asyncio

    from camlens.web.app import timed_body
    from camlens.web.upload import BadRequest

    async def chunks(pause: float, size: int, count: int):
        for _ in range(count):
            await asyncio.sleep(pause)
            yield b"x" * size

    async def read(source, timeout: float, rate: float) -> tuple[int, float, int | None]:
        start, got = time.monotonic(), 0
        try:
            async for chunk in timed_body(source, timeout, rate):
                got += len(chunk)
        except BadRequest as err:
            return got, time.monotonic() - start, err.status
        return got, time.monotonic() - start, None

    got, _, status = asyncio.run(read(chunks(0.01, 1000, 20), 0.3, 1000))
    assert (got, status) == (20_000, None)  # fast enough: all of it
    got, took, status = asyncio.run(read(chunks(0.5, 1000, 3), 0.2, 1000))
    assert (got, status) == (0, 408) and took < 0.4  # a pause over the read timeout
    got, took, status = asyncio.run(read(chunks(0.05, 1, 100), 0.3, 1000))
    assert status == 408 and 0.25 < took < 0.6 and got < 10  # a trickle: refused once the grace period is over
    got, _, status = asyncio.run(read(chunks(0.05, 1, 10), 0.3, 0))
    assert (got, status) == (10, None)  # no minimum rate: only pauses count
