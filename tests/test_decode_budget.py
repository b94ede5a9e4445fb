"""Decoded pixels are bounded per process (issue #24.2, #23.1): four concurrent uploads of a 39-megapixel all-zero
PNG (38 KB each) keep `camlens serve` under a stated memory bound, with a 503 and Retry-After for those that find
the decode budget full; `camlens explain` holds about one large image at a time whatever the batch size, and a
file over the per-file limit is one skipped line.  Servers and CLI runs in subprocesses, memory read from the
kernel (VmHWM, ru_maxrss)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from _serve_traffic import start_server
from camlens.data.images import DecodeBudget
from camlens.models import GapNet, Preprocess, save_checkpoint
from camlens.pipeline import _decoded_batches

pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install 'camlens[web]')")

TESTS = Path(__file__).parent
SRC = str(TESTS.parent / "src")
SERVE_BOUND = 1.3 * 2**30  # bytes above the warm server's peak: one 39 MP decode on its way to the model, ~0.9 GB


def _zero_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def _vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_four_concurrent_39_megapixel_uploads_stay_under_the_bound():
    big = _zero_png(7200, 5400)  # 38.9 MP under the server's 40 MP per-file limit, ~38 KB
    assert len(big) < 100_000
    env = {**os.environ, "PYTHONPATH": SRC}
    proc, url = start_server([sys.executable, str(TESTS / "_serve_slow.py"), "0", "workers=4"], env)
    try:
        small = io.BytesIO()
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(small, "PNG")
        assert httpx.post(f"{url}/api/explain", files={"file": ("s.png", small.getvalue())}, timeout=30).status_code == 200
        warm = _vm_hwm(proc.pid)
        answers: list = []

        def upload() -> None:
            answers.append(httpx.post(f"{url}/api/explain", files={"file": ("big.png", big)}, timeout=120))

        threads = [threading.Thread(target=upload) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(150)
        peak = _vm_hwm(proc.pid)
        statuses = sorted(res.status_code for res in answers)
        assert len(statuses) == 4 and set(statuses) <= {200, 503} and statuses[0] == 200, statuses
        for res in answers:
            if res.status_code == 503:
                assert res.headers["retry-after"] == "1" and "busy" in res.json()["error"]
        print(f"warm {warm / 2**30:.2f} GB, peak {peak / 2**30:.2f} GB, statuses {statuses}")
        assert peak - warm < SERVE_BOUND, f"peak {peak / 2**30:.2f} GB, {(peak - warm) / 2**30:.2f} GB over warm"
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
