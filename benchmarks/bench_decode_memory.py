"""Peak memory of decoding large images (issues #23, #24): `camlens explain` on 24 all-zero 39-megapixel PNGs at the
default batch of 16 against one such image, and `camlens serve` answering 4 concurrent uploads of one, each in a
fresh process (peak RSS from the kernel).  Writes benchmarks/results/decode_memory.json.

    PYTHONPATH=src python benchmarks/bench_decode_memory.py [--files 24]
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch
from PIL import Image

from camlens.models import GapNet, Preprocess, save_checkpoint
from common import write_result

ROOT = Path(__file__).parents[1]
SIZE = (7200, 5400)  # 38.9 MP, under the 40 MP per-file limit


def _explain(folder: Path, ckpt: Path, out: Path) -> tuple[float, float]:
    """(peak RSS in GB, seconds) of `camlens explain folder` in a fresh interpreter."""
    code = (
        "import resource, sys\nfrom camlens.cli import main\nrc = main(sys.argv[1:])\n"
        "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    )
    start = time.perf_counter()
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "explain",
            str(folder),
            "--checkpoint",
            str(ckpt),
            "--out",
            str(out),
            "--quiet",
            "--format",
            "jpg",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        check=True,
    )
    seconds = time.perf_counter() - start
    return int(run.stderr.strip().splitlines()[-1].split()[1]) / 2**20, seconds


def _vm_hwm(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", text).group(1)) / 2**20


def _serve(ckpt: Path, png: bytes) -> tuple[float, float, list[int]]:
    """(warm peak GB, peak GB after 4 concurrent uploads, their statuses) of `camlens serve`."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "camlens",
            "serve",
            "--checkpoint",
            str(ckpt),
            "--port",
            "0",
            "--workers",
            "4",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    try:
        url = re.search(r"http://127\.0\.0\.1:\d+/", proc.stdout.readline()).group(0)
        small = io.BytesIO()
        Image.new("RGB", (32, 32)).save(small, "PNG")
        httpx.post(f"{url}api/explain", files={"file": ("s.png", small.getvalue())}, timeout=60)
        warm = _vm_hwm(proc.pid)
        statuses: list[int] = []
        threads = [
            threading.Thread(
                target=lambda: statuses.append(
                    httpx.post(f"{url}api/explain", files={"file": ("b.png", png)}, timeout=300).status_code
                )
            )
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return warm, _vm_hwm(proc.pid), sorted(statuses)
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=24)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        ckpt = save_checkpoint(
            root / "m.safetensors",
            GapNet(4).eval(),
            arch="gapnet",
            class_names=list("abcd"),
            preprocess=Preprocess((32, 32)),
        )
        one, many = root / "one", root / "many"
        one.mkdir()
        many.mkdir()
        Image.new("L", SIZE).save(one / "a00.png", optimize=True)
        for i in range(args.files):
            shutil.copy(one / "a00.png", many / f"a{i:02d}.png")
        single = _explain(one, ckpt, root / "o1")
        batch = _explain(many, ckpt, root / "o2")
        rows.append([f"explain, 1 file of {SIZE[0]}x{SIZE[1]}", 1, 16, round(single[0], 2), round(single[1], 1), ""])
        rows.append([f"explain, {args.files} such files", args.files, 16, round(batch[0], 2), round(batch[1], 1), ""])
        warm, peak, statuses = _serve(ckpt, (one / "a00.png").read_bytes())
        rows.append(
            [
                "serve, 4 concurrent uploads of one (--workers 4)",
                4,
                1,
                round(peak, 2),
                "",
                f"warm {warm:.2f} GB; statuses {statuses}",
            ]
        )
    write_result(
        "decode_memory",
        "Peak memory decoding 39-megapixel images",
        ["case", "images", "batch", "peak RSS (GB)", "seconds", "notes"],
        rows,
        notes=(
            "All-zero PNGs of 38 KB each. Before the decode budget (issue #24) the 24-file run at batch 16 "
            "reached 12.8 GB and aborted, and 4 concurrent uploads took the server to 2.8-3.0 GB."
        ),
    )


if __name__ == "__main__":
    main()
