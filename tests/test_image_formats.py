"""Image decoding through an allow-list of formats and under pixel budgets (issues #23 and #24): an EPS file never
reaches Ghostscript, whatever path opens it; a file over the per-file limit is refused on its header; the process
-wide decode budget bounds the pixels held at once."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camlens.data.images import (
    BudgetFull,
    DecodeBudget,
    FormatError,
    ImageError,
    decode_image,
    image_pixels,
    load_image,
)

# a minimal EPS: Pillow's EPS plugin reads the bounding box and runs `gs` on load()
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\nnewpath 0 0 moveto 8 8 lineto stroke\n%%EOF\n"


def fake_ghostscript(folder: Path) -> tuple[dict[str, str], Path]:
    """An environment whose PATH starts with a stand-in `gs` that records each call in a marker file."""
    marker = folder / "gs-was-called"
    gs = folder / "bin" / "gs"
    gs.parent.mkdir(parents=True, exist_ok=True)
    gs.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    gs.chmod(gs.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{gs.parent}{os.pathsep}{os.environ.get('PATH', '')}"}, marker


def test_the_stand_in_ghostscript_is_what_pillow_would_run(tmp_path, monkeypatch):
    """The check below means something: Pillow's own EPS path does call the stand-in `gs`."""
    env, marker = fake_ghostscript(tmp_path)
    monkeypatch.setenv("PATH", env["PATH"])
    from PIL import EpsImagePlugin

    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)
    monkeypatch.setattr(EpsImagePlugin, "gs_windows_binary", None)
    with pytest.raises(Exception):  # noqa: B017 (whatever Pillow raises once gs is missing)
        with Image.open(io.BytesIO(EPS)) as img:
            img.load()
    assert marker.exists()


def test_eps_is_refused_by_load_image_and_as_image_and_no_program_runs(tmp_path):
    """In a fresh interpreter (no plugin imported yet), with the stand-in `gs` first on PATH."""
    env, marker = fake_ghostscript(tmp_path)
    (tmp_path / "x.eps").write_bytes(EPS)
    (tmp_path / "x.png").write_bytes(EPS)  # the name does not matter: the content does
    code = (
        "import sys, PIL.Image\n"
        "from camlens.data.images import load_image, as_image, decode_image, FormatError\n"
        "for f in (lambda: load_image(sys.argv[1]), lambda: as_image(sys.argv[2]),\n"
        "          lambda: decode_image(open(sys.argv[1], 'rb').read())):\n"
        "    try:\n"
        "        f()\n"
        "    except FormatError as err:\n"
        "        print(err)\n"
        "print('EPS' in PIL.Image.OPEN)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "x.eps"), str(tmp_path / "x.png")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 4 and all("not an image in a supported format" in line for line in lines[:3]), lines
    assert lines[3] == "False"  # the EPS plugin was never even imported
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_allowed_formats_decode(fmt):
    arr = np.zeros((6, 7, 3), np.uint8)
    arr[2:4, 3:5] = 255
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    img = decode_image(buf.getvalue())
    assert img.size == (7, 6)
    if fmt in ("PNG", "WEBP", "BMP", "GIF", "TIFF"):
        assert np.array_equal(np.asarray(img), arr)


@pytest.mark.parametrize("fmt", ["PDF", "ICO", "PPM", "TGA"])
def test_other_pillow_formats_are_refused(fmt):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, fmt)
    with pytest.raises(FormatError, match="PNG, JPEG, WebP, BMP, GIF or TIFF"):
        decode_image(buf.getvalue())


def test_the_per_file_limit_is_checked_on_the_header_before_decoding(tmp_path):
    big = tmp_path / "big.png"
    Image.new("L", (7000, 6000)).save(big)  # 42 MP, a few KB
    assert image_pixels(big) == 42_000_000
    with pytest.raises(ImageError, match="7000x6000 is over the limit of 40000000 pixels"):
        load_image(big)  # the default per-file limit
    with pytest.raises(ImageError, match="over the limit"):
        decode_image(big.read_bytes(), max_pixels=1000)


def test_decode_budget_bounds_pixels_held_at_once():
    budget = DecodeBudget(100)
    assert budget.try_acquire(60) and not budget.try_acquire(60) and budget.try_acquire(40)
    budget.release(100)
    assert budget.try_acquire(500)  # larger than the budget: only alone
    assert not budget.try_acquire(1)
    budget.release(500)
    with budget.hold(80):
        with pytest.raises(BudgetFull, match="busy"):
            with budget.hold(30, timeout=0.05):
                pass
    t0 = time.monotonic()
    holder = threading.Thread(target=lambda: budget.acquire(90) and (time.sleep(0.2), budget.release(90)))
    holder.start()
    time.sleep(0.05)
    assert budget.acquire(90, timeout=5)  # waits for the holder to give its pixels back
    assert time.monotonic() - t0 >= 0.2 and budget.held == 90
    budget.release(90)
    holder.join()


def test_budget_for_batches_is_sized_from_the_input_and_the_batch():
    assert DecodeBudget.for_batches(16, (224, 224), 1_000_000).capacity == 16 * 64 * 224 * 224
    assert DecodeBudget.for_batches(1, (32, 32), 40_000_000).capacity == 40_000_000


def test_cli_explain_skips_an_eps_file_in_one_line_and_runs_no_program(tmp_path):
    import torch

    from camlens.models import GapNet, Preprocess, save_checkpoint

    env, marker = fake_ghostscript(tmp_path)
    env["PYTHONPATH"] = str(Path(__file__).parents[1] / "src")
    torch.manual_seed(0)
    ckpt = save_checkpoint(
        tmp_path / "m.safetensors",
        GapNet(4).eval(),
        arch="gapnet",
        class_names=list("abcd"),
        preprocess=Preprocess((32, 32)),
    )
    (tmp_path / "drawing.eps").write_bytes(EPS)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "ok.png")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "camlens",
            "explain",
            str(tmp_path / "drawing.eps"),
            str(tmp_path / "ok.png"),
            "--checkpoint",
            str(ckpt),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1 and len(lines) == 1, run.stderr
    assert lines[0].startswith("camlens: skipped") and "drawing.eps: not an image in a supported format" in lines[0]
    assert "explained 1 image(s)" in run.stdout and "1 failed" in run.stdout
    assert not marker.exists()


def test_dataset_readers_refuse_eps_too(tmp_path):
    """ImageFolder images and annotation masks go through the same allow-list."""
    from camlens.data.annotations import AnnotationError, MaskFiles, load_mask
    from camlens.data.folder import ImageFolder

    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.png").write_bytes(EPS)
    with pytest.raises(ImageError, match="a.png: not an image in a supported format"):
        ImageFolder([(tmp_path / "cat" / "a.png", 0)], ["cat"], 32, tmp_path)[0]
    with pytest.raises(AnnotationError, match="not an image in a supported format"):
        load_mask(MaskFiles([tmp_path / "cat" / "a.png"], None), (8, 8))
