"""A public demo's traffic against a real `camlens serve` on loopback: valid uploads over every method and
several layers, corrupt bodies and bad form values, from a few concurrent clients, with the server's resident
memory read from /proc.  Used by tests/test_serve_soak.py and benchmarks/bench_serve_memory.py (issue #16)."""

from __future__ import annotations

import asyncio
import io
import random
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from camlens.methods import METHODS

RESNET_LAYERS = ["", "auto", "layer1", "layer3", "layer4", "layer4.0.conv1", "layer4.1", "fc", "avgpool"]
GAPNET_LAYERS = ["", "auto", "features.2", "features.5", "features.6", "features.6.0", "features.6.1", "pool", "fc"]
BAD_FORM = [
    ("method", "nope"),
    ("layer", "nolayer"),
    ("topk", "0"),
    ("topk", "99"),
    ("topk", "x"),
    ("class", "-1"),
    ("class", "99999"),
    ("class", "zebra"),
    ("alpha", "2"),
    ("alpha", "nan"),
]


def png(rng: random.Random) -> bytes:
    h, w = rng.randint(8, 64), rng.randint(8, 64)
    arr = np.random.default_rng(rng.randint(0, 2**31)).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def corrupt(data: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return data[: rng.randint(1, len(data) - 1)]  # truncated
    if kind == 1:
        out = bytearray(data)
        for _ in range(8):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)  # bit flips
        return bytes(out)
    if kind == 2:
        return b"GIF89a" + data[6:]  # spliced header
    return data[:33] + bytes(rng.randrange(256) for _ in range(200))  # a PNG header, then noise


def request_mix(count: int, layers: list[str] = RESNET_LAYERS, seed: int = 0) -> list[tuple[dict[str, str], bytes]]:
    """``count`` (form fields, file body) pairs: a third corrupt bodies, a third bad form values, a third valid
    requests cycling over every method and the layers above."""
    rng = random.Random(seed)
    methods = [m for m in sorted(METHODS) if not METHODS[m].needs_attention]  # a ResNet is served
    out = []
    for i in range(count):
        fields = {
            "method": methods[i % len(methods)],
            "layer": layers[(i // len(methods)) % len(layers)],
            "topk": str(1 + i % 3),
        }
        body = png(rng)
        if i % 3 == 1:
            body = corrupt(body, rng)
        elif i % 3 == 2:
            key, value = BAD_FORM[(i // 3) % len(BAD_FORM)]
            fields[key] = value
        out.append((fields, body))
    return out


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS line")


def start_server(command: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start a server process that prints its loopback URL as its first line; (process, URL)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:\d+", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"the server did not start: {line!r} {proc.stderr.read()}")
    return proc, match.group(0)


class Server:
    """`python -m camlens serve --port 0 ARGS` on 127.0.0.1 in a subprocess; the URL comes from its first line."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc, self.url = start_server(
            [sys.executable, "-m", "camlens", "serve", "--port", "0", "--log-level", "warning", *args], env
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def drive(
    url: str, mix: list[tuple[dict[str, str], bytes]], clients: int = 4, timeout: float = 60
) -> dict[int, int]:
    """Send every request of ``mix`` from ``clients`` concurrent connections; the count of each status."""
    statuses: dict[int, int] = {}
    queue = list(reversed(mix))

    async def client(c: httpx.AsyncClient) -> None:
        while queue:
            fields, body = queue.pop()
            res = await c.post(f"{url}/api/explain", data=fields, files={"file": ("x.png", body, "image/png")})
            assert res.headers["content-type"].startswith("application/json"), res.text[:200]
            statuses[res.status_code] = statuses.get(res.status_code, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as c:
        await asyncio.gather(*[client(c) for _ in range(clients)])
    return statuses
