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
        assert (
            httpx.post(f"{url}/api/explain", files={"file": ("s.png", small.getvalue())}, timeout=30).status_code == 200
        )
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


def test_parts_fit_the_budget_and_never_span_batches(tmp_path):
    """_decoded_batches hands out parts whose pixels fit the budget, in input order, each within one batch; the
    consumer gives each part's pixels back (as the render threads do), and the budget's peak stays in bounds."""
    sizes = [(100, 100), (150, 100), (100, 50), (200, 100), (100, 100), (120, 100), (100, 100), (90, 80)]
    paths = []
    for i, (w, h) in enumerate(sizes):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (w, h)).save(paths[-1])
    batches = [paths[:5], paths[5:]]
    budget = DecodeBudget(30_000)
    from concurrent.futures import ThreadPoolExecutor

    seen = []
    with ThreadPoolExecutor(2) as pool:
        for part in _decoded_batches(batches, pool, 10**6, 2, budget):
            seen.append([p for p, _, _ in part])
            assert all(
                isinstance(arr, np.ndarray) and arr.shape[:2] == (Image.open(p).size[::-1]) for p, arr, _ in part
            )
            assert sum(px for _, _, px in part) == sum(w * h for w, h in (Image.open(p).size for p, _, _ in part))
            for _, _, px in part:
                budget.release(px)
    assert [p for part in seen for p in part] == paths
    assert all(set(part) <= set(batches[0]) or set(part) <= set(batches[1]) for part in seen)
    assert len(seen) > len(batches) and budget.peak <= 30_000 and budget.held == 0


def _explain_peak(folder: Path, ckpt: Path, out: Path, *extra: str) -> tuple[int, str]:
    """`camlens explain folder` in a fresh interpreter: (its peak RSS in bytes, its stderr)."""
    code = (
        "import resource, sys\nfrom camlens.cli import main\nrc = main(sys.argv[1:])\n"
        "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\nsys.exit(rc)\n"
    )
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
            *extra,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=300,
    )
    assert run.stderr.strip().splitlines()[-1].startswith("PEAK"), run.stderr
    return int(run.stderr.strip().splitlines()[-1].split()[1]) * 1024, run.stderr


def test_cli_holds_about_one_large_image_at_a_time_and_skips_one_over_the_limit(tmp_path):
    """24 images of 0.6 MP at the default batch of 16, under a per-file limit of 0.6 MP (so the default budget is
    one image): the run's peak memory is within 60 MB of a run on one of them (holding every decoded image of
    a batch and the next, as before, cost about 24 x 9 MB more: 210 MB), and a 25th image over the limit is one
    skipped line."""
    torch.manual_seed(0)
    ckpt = save_checkpoint(
        tmp_path / "m.safetensors",
        GapNet(4).eval(),
        arch="gapnet",
        class_names=list("abcd"),
        preprocess=Preprocess((32, 32)),
    )
    one, many = tmp_path / "one", tmp_path / "many"
    one.mkdir()
    many.mkdir()
    (one / "a00.png").write_bytes(_zero_png(800, 750))
    for i in range(24):
        shutil.copy(one / "a00.png", many / f"a{i:02d}.png")
    (many / "z_big.png").write_bytes(_zero_png(900, 750))
    limit = ["--max-pixels", "600000"]
    single, _ = _explain_peak(one, ckpt, tmp_path / "o1", *limit)
    peak, stderr = _explain_peak(many, ckpt, tmp_path / "o2", *limit)
    skipped = [line for line in stderr.splitlines() if line.startswith("camlens: skipped")]
    assert len(skipped) == 1 and "z_big.png: 900x750 is over the limit of 600000 pixels" in skipped[0], stderr
    summary = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert len(summary["images"]) == 24 and len(summary["errors"]) == 1
    print(f"24 images: {peak / 2**20:.0f} MB, one: {single / 2**20:.0f} MB")
    assert peak - single < 60 * 2**20, f"24 images: {peak / 2**20:.0f} MB, one: {single / 2**20:.0f} MB"


def test_a_checkpoint_cannot_switch_the_resize_off(tmp_path):
    """A checkpoint whose metadata says ``"size": null`` used to run the model at the upload's resolution (issue
    #24: 3000 x 3000 took 2.2 GB in serve); now it gets the default input, 224 x 224, and a Preprocess
    without a size (or an absurd one) is an error."""
    from safetensors.torch import load_file, save_file

    from camlens.capture import CamlensError
    from camlens.models import load_model

    path = save_checkpoint(
        tmp_path / "m.safetensors",
        GapNet(4).eval(),
        arch="gapnet",
        class_names=list("abcd"),
        preprocess=Preprocess((32, 32)),
    )
    meta = {
        "arch": "gapnet",
        "class_names": list("abcd"),
        "preprocess": {"size": None, "mean": [0.5] * 3, "std": [0.25] * 3},
    }
    save_file(load_file(str(path)), str(path), metadata={"camlens": json.dumps(meta)})
    loaded = load_model(path, device="cpu")
    assert loaded.preprocess.size == (224, 224)
    assert loaded.preprocess(torch.rand(3, 300, 500)).shape == (1, 3, 224, 224)
    assert load_model(path, device="cpu", size=64).preprocess.size == (64, 64)
    for bad in [None, (0, 10), (10_000, 10_000), (32,)]:
        with pytest.raises(CamlensError, match="input size"):
            Preprocess(bad)  # type: ignore[arg-type]
