"""`camlens explain clip.mp4` against plain frame-by-frame classification of the same clip, as whole processes.

    python benchmarks/bench_video.py [--frames 150] [--rounds 1] [--arch efficientnet_lite0 --weights imagenet]

Run it from the repository root.  The clip: scikit-image's astronaut photo panned and zoomed, ``--frames`` frames
at 320 x 240 and 25 frames a second, H.264 (libx264, crf 18) in MP4, written into a temp folder.

*plain* is the script a user would write: load the model (camlens's ``load_model``: the same weights and
preprocessing), decode the clip with PyAV, and classify each frame as it comes (batch 1); it prints each frame's
top-1 class.  The same script batching the frames (``--batch-size``) is timed too, for reference.  *explain* is ``camlens explain clip.mp4 --topk 1``: the same frames batched through the model
(``--batch-size``, default 16), plus the CAM of each frame's top class, an overlay video at the clip's size
(libx264) and the per-frame tables.  The top-1 classes of the two must agree on every frame, or the benchmark
fails.  Both are fresh ``python`` processes (start-up included), run in interleaved rounds; the figure is the
explain / plain wall-time ratio (below 1: explain is faster).  Writes benchmarks/results/video.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from skimage import data, transform

from common import header, write_result

PLAIN = r"""
import json, sys

import av
import torch

from camlens.models import load_model

clip, model_args, batch_size = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
loaded = load_model(**model_args)
top1, batch = [], []

def classify():
    x = torch.stack([torch.from_numpy(f).permute(2, 0, 1).float().div_(255) for f in batch])
    top1.extend(loaded.model(loaded.preprocess(x)).argmax(1).tolist())
    batch.clear()

with torch.inference_mode(), av.open(clip) as container:
    for frame in container.decode(video=0):
        batch.append(frame.to_ndarray(format="rgb24"))
        if len(batch) == batch_size:
            classify()
    if batch:
        classify()
print(json.dumps(top1))
"""


def make_clip(path: Path, frames: int) -> None:
    photo = data.astronaut()  # 512 x 512 RGB
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.options = {"crf": "18"}
        for t in range(frames):
            zoom = 1.0 + 0.5 * t / max(1, frames - 1)
            h, w = int(360 / zoom), int(480 / zoom)
            y0, x0 = (512 - h) * t // max(1, frames - 1), (512 - w) // 2
            crop = transform.resize(photo[y0 : y0 + h, x0 : x0 + w], (240, 320), anti_aliasing=True)
            pixels = (crop * 255).round().astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode(None))


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr}")
    return time.perf_counter() - start, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    args = parser.parse_args()
    header(f"camlens explain on a video vs plain frame-by-frame classification ({args.frames} frames, 320x240)")
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        make_clip(clip, args.frames)
        model_args = json.dumps({"arch": args.arch, "weights": args.weights})
        plain_cmd = [sys.executable, "-c", PLAIN, str(clip), model_args, "1"]
        batched_cmd = [sys.executable, "-c", PLAIN, str(clip), model_args, str(args.batch_size)]
        explain_cmd = [
            sys.executable,
            "-m",
            "camlens",
            "explain",
            str(clip),
            "--arch",
            args.arch,
            "--weights",
            args.weights,
            "--topk",
            "1",
            "--batch-size",
            str(args.batch_size),
            "--quiet",
            "--restart",
            "--out",
            str(Path(tmp) / "out"),
        ]
        plain_s, batched_s, explain_s = [], [], []
        for _ in range(args.rounds):
            seconds, out = timed(plain_cmd)
            plain_s.append(seconds)
            plain_top1 = json.loads(out)
            seconds, _ = timed(batched_cmd)
            batched_s.append(seconds)
            seconds, _ = timed(explain_cmd)
            explain_s.append(seconds)
            table = json.loads((Path(tmp) / "out" / "clip_frames.json").read_text())["per_frame"]
            explain_top1 = [row["explained"][0]["class"] for row in table]
            if explain_top1 != plain_top1:
                sys.exit(f"top-1 classes differ on {sum(a != b for a, b in zip(explain_top1, plain_top1))} frames")
    ratios = [e / p for e, p in zip(explain_s, plain_s)]
    rows = [
        [
            "plain frame-by-frame classification (batch 1)",
            round(statistics.median(plain_s), 2),
            round(args.frames / statistics.median(plain_s), 1),
            1.0,
        ],
        [
            f"plain classification, frames batched by {args.batch_size}",
            round(statistics.median(batched_s), 2),
            round(args.frames / statistics.median(batched_s), 1),
            round(statistics.median(b / p for b, p in zip(batched_s, plain_s)), 3),
        ],
        [
            f"camlens explain clip.mp4 (batch {args.batch_size}, CAM + overlay video)",
            round(statistics.median(explain_s), 2),
            round(args.frames / statistics.median(explain_s), 1),
            round(statistics.median(ratios), 3),
        ],
    ]
    print(f"{'what':<60}{'wall s':>9}{'frames/s':>10}{'ratio':>8}")
    for row in rows:
        print(f"{row[0]:<60}{row[1]:>9}{row[2]:>10}{row[3]:>8}")
    write_result(
        "video",
        "Explaining a video: camlens explain against plain frame-by-frame classification",
        ["what", "wall s (median)", "frames/s", "wall ratio to plain"],
        rows,
        notes=(
            f"{args.arch} ({args.weights} weights), a {args.frames}-frame 320x240 H.264 clip, whole "
            f"processes (start-up included), {args.rounds} round(s), PyAV {av.__version__}; top-1 classes "
            "identical on every frame."
        ),
    )


if __name__ == "__main__":
    main()
