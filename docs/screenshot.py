"""Regenerate docs/screenshot.png: `camlens serve` with the real EfficientNet-Lite0, scikit-image's cat uploaded
in headless Chromium (Playwright), top-3 classes.

    python docs/screenshot.py [--chromium /usr/bin/chromium] [--photo chelsea]
"""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--photo", default="chelsea", help="a scikit-image photo (skimage.data.NAME)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("screenshot.png")))
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(getattr(data, args.photo)()).save(buffer, "JPEG", quality=92)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "camlens",
            "serve",
            "--arch",
            "efficientnet_lite0",
            "--weights",
            "imagenet",
            "--port",
            "0",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        match = re.search(r"http://127\.0\.0\.1:\d+/", line)
        if not match:
            raise SystemExit(f"camlens serve did not start: {line!r}")
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=args.chromium, headless=True, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
            )
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.goto(match.group(0))
            page.wait_for_function("() => document.querySelectorAll('#method option').length > 1")
            page.fill("#topk", "3")
            page.locator("#topk").blur()
            page.set_input_files(
                "#file", files=[{"name": f"{args.photo}.jpg", "mimeType": "image/jpeg", "buffer": buffer.getvalue()}]
            )
            page.wait_for_function("() => document.querySelectorAll('.card .overlay').length === 3", timeout=120_000)
            page.wait_for_function(
                "() => [...document.querySelectorAll('.card .overlay')].every(i => i.complete && i.naturalWidth > 0)"
            )
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
