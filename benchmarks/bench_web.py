"""Load run against `camlens serve`: the real server in a subprocess on loopback, N concurrent HTTP clients,
requests per second and p50/p95 latency, for one client and for N clients with and without batching.

    python benchmarks/bench_web.py [--checkpoint demo-out/model.safetensors] [--clients 8] [--requests 400]
                                   [--max-seconds 30] [--size 64] [--method cam] [--topk 1]

Run it from the repository root.  Bounded in count and time per configuration; loopback only.  The clients run
in this process and share the machine's cores with the server, so on a small machine the figures are a floor,
not the server's ceiling.
Without --checkpoint (and no demo checkpoint in demo-out/) a random gapnet with 10 classes at 64 px is served.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from common import header, write_result

DEMO_CHECKPOINTS = (Path("demo-out/model.safetensors"), Path("demo-out/model/best.safetensors"))


def _checkpoint(arg: str | None, tmp: Path) -> Path:
    if arg:
        return Path(arg)
    for path in DEMO_CHECKPOINTS:
        if path.is_file():
            return path
    from camlens.models import GapNet, Preprocess, save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(
        tmp / "gapnet.safetensors",
        GapNet(10).eval(),
        arch="gapnet",
        class_names=[f"class{i}" for i in range(10)],
        preprocess=Preprocess((64, 64)),
    )


def _images(count: int, size: int) -> list[bytes]:
    """Built-in dataset test images when available (what the demo model was trained for), else smooth noise."""
    try:
        from camlens.data.builtin import BuiltinDataset

        data = BuiltinDataset("test", num_images=count, image_size=size)
        tensors = [data[i]["image"] for i in range(count)]
    except Exception:  # an older checkout without the built-in dataset
        rng = np.random.default_rng(0)
        tensors = [
            torch.nn.functional.interpolate(
                torch.from_numpy(rng.random((1, 3, 6, 6))).float(),
                size=(size, size),
                mode="bicubic",
                align_corners=False,
            )[0].clamp(0, 1)
            for _ in range(count)
        ]
    out = []
    for t in tensors:
        buf = io.BytesIO()
        Image.fromarray((t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


class Server:
    """`python -m camlens serve --port 0` in a subprocess; the URL is read from its first line of output."""

    def __init__(self, checkpoint: Path, workers: int, max_batch: int) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "camlens",
                "serve",
                "--checkpoint",
                str(checkpoint),
                "--port",
                "0",
                "--workers",
                str(workers),
                "--max-batch",
                str(max_batch),
                "--log-level",
                "warning",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+", line)
        if not match:
            self.proc.kill()
            raise SystemExit(f"the server did not start: {line!r} {self.proc.stderr.read()}")
        self.url = match.group(0)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def _load(url: str, images: list[bytes], clients: int, requests: int, max_seconds: float, query: str) -> dict:
    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + max_seconds

    async def client(k: int, c: httpx.AsyncClient) -> None:
        nonlocal errors, sent
        while sent < requests and time.perf_counter() < deadline:
            image = images[sent % len(images)]
            sent += 1
            start = time.perf_counter()
            res = await c.post(f"{url}/api/explain{query}", files={"file": ("image.png", image, "image/png")})
            latencies.append(time.perf_counter() - start)
            errors += res.status_code != 200

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as c:
        for image in images[:4]:  # warm-up: explainer creation, first passes, connection set-up
            await c.post(f"{url}/api/explain{query}", files={"file": ("image.png", image, "image/png")})
        began = time.perf_counter()
        await asyncio.gather(*[client(k, c) for k in range(clients)])
        wall = time.perf_counter() - began
    ms = sorted(1000 * t for t in latencies)
    return {
        "done": len(ms),
        "errors": errors,
        "wall": wall,
        "rps": len(ms) / wall,
        "p50": statistics.median(ms),
        "p95": ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))],
        "mean": statistics.fmean(ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400, help="per configuration")
    parser.add_argument("--max-seconds", type=float, default=30, help="per configuration")
    parser.add_argument("--size", type=int, default=64, help="uploaded image side in pixels")
    parser.add_argument("--method", default="cam")
    parser.add_argument("--topk", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = _checkpoint(args.checkpoint, Path(tmp))
        header(
            f"camlens serve under load: {checkpoint}, {args.size} px PNG uploads, method {args.method}, "
            f"top-{args.topk}, {args.workers} model threads, loopback"
        )
        images = _images(32, args.size)
        query = f"?method={args.method}&topk={args.topk}"
        configs = [(1, 1), (args.clients, 1), (args.clients, 8)]
        print(
            f"{'clients':>7} {'max_batch':>9} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8}"
        )
        rows = []
        for clients, max_batch in configs:
            server = Server(checkpoint, args.workers, max_batch)
            try:
                r = asyncio.run(_load(server.url, images, clients, args.requests, args.max_seconds, query))
            finally:
                server.stop()
            rows.append(r)
            print(
                f"{clients:>7} {max_batch:>9} {r['done']:>8} {r['errors']:>6} {r['rps']:>8.1f} {r['p50']:>8.1f} "
                f"{r['p95']:>8.1f} {r['mean']:>8.1f}"
            )
        print(
            f"throughput with {args.clients} clients vs 1: {rows[1]['rps'] / rows[0]['rps']:.2f}x unbatched, "
            f"{rows[2]['rps'] / rows[0]['rps']:.2f}x with batches of up to 8"
        )
        write_result(
            "serve_load",
            f"camlens serve under load: {args.size} px PNG uploads, method {args.method}, "
            f"top-{args.topk}, {args.workers} model threads",
            ["clients", "batching", "req/s", "p50 ms", "p95 ms"],
            [
                [
                    clients,
                    "off" if max_batch == 1 else f"up to {max_batch} (--max-batch {max_batch})",
                    round(r["rps"], 1),
                    round(r["p50"], 1),
                    round(r["p95"], 1),
                ]
                for (clients, max_batch), r in zip(configs, rows)
            ],
            f"The real server on loopback, clients in the same machine; {sum(r['errors'] for r in rows)} errors.",
        )


if __name__ == "__main__":
    main()
