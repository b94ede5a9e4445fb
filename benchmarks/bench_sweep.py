"""The WSOL threshold sweep: camlens' one-pass contour sweep against the straightforward per-threshold OpenCV
sweep of Choe et al. (threshold, findContours, contourArea, boundingRect at each of the 1000 thresholds), both
producing MaxBoxAcc and MaxBoxAccV2 counts for the same maps and ground truth; checks that the results are
identical and prints the time ratio, measured in one run, interleaved.

    python benchmarks/bench_sweep.py [--size 224] [--grid 7] [--maps 16] [--repeats 3] [--noise 0.0]

Maps: CAM-like, a random (grid x grid) field upsampled bilinearly to size x size, plus Gaussian pixel noise of
std ``--noise`` (in units of the field's std; 0: smooth), then min-max normalized (a ResNet CAM is 7x7 at 224 px;
the built-in dataset's gapnet gives 16x16 at 64 px).  The reference does one contour search per threshold for
both metrics (wsolevaluation runs one sweep per metric, i.e. twice this work).  camlens' sweep is compiled by
numba on its first call in a fresh environment and loaded from numba's cache afterwards: the first call's time
is printed apart and not in the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numba
import numpy as np
import torch
import torch.nn.functional as F

from camlens.boxes import wsol_thresholds
from camlens.metrics import BoxAccuracy
from common import header, write_result

IOUS = (30, 50, 70)


def cam_like_maps(n: int, size: int, grid: int, seed: int = 0, noise: float = 0.0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 1, grid, grid, generator=g, dtype=torch.float64)
    up = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    up = up + noise * torch.randn(up.shape, generator=g, dtype=torch.float64)
    lo, hi = up.amin((1, 2), keepdim=True), up.amax((1, 2), keepdim=True)
    return ((up - lo) / (hi - lo)).numpy()


def ground_truth(n: int, size: int, seed: int = 1) -> list[np.ndarray]:
    """One or two inclusive boxes (x0, y0, x1, y1) per map, as in Choe et al.'s localization.txt."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        boxes = []
        for _ in range(int(rng.integers(1, 3))):
            x0, y0 = rng.integers(0, size // 2, 2)
            boxes.append((x0, y0, int(rng.integers(x0 + size // 8, size)), int(rng.integers(y0 + size // 8, size))))
        out.append(np.array(boxes))
    return out


def reference(maps: np.ndarray, gts: list[np.ndarray], thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Choe et al.'s per-threshold sweep for MaxBoxAcc (largest contour) and MaxBoxAccV2 (all contours): hit
    counts (len(IOUS), T) of each, with their box convention and +1 IoU."""
    largest = np.zeros((len(IOUS), len(thresholds)), np.int64)
    every = np.zeros_like(largest)
    cut = np.array(IOUS)[:, None] / 100
    for m, gt in zip(maps, gts):
        h, w = m.shape
        img = (m * 255).astype(np.uint8)
        top, best = [], []
        for t in thresholds:
            _, binary = cv2.threshold(img, int(t * np.max(img)), 255, cv2.THRESH_BINARY)
            contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
            if not contours:
                top.append((0, 0, 0, 0))
                best.append([(0, 0, 0, 0)])
                continue
            x, y, bw, bh = cv2.boundingRect(max(contours, key=cv2.contourArea))
            top.append((x, y, min(x + bw, w - 1), min(y + bh, h - 1)))
            rects = [cv2.boundingRect(c) for c in contours]
            best.append([(x, y, min(x + bw, w - 1), min(y + bh, h - 1)) for x, y, bw, bh in rects])
        largest += _iou_inclusive(np.array(top), gt).max(1)[None] >= cut
        counts = np.array([len(b) for b in best])
        ious = _iou_inclusive(np.concatenate([np.array(b) for b in best]), gt).max(1)
        per_t = np.maximum.reduceat(ious, np.r_[0, np.cumsum(counts)[:-1]])
        every += per_t[None] >= cut
    return largest, every


def _iou_inclusive(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    iw = np.maximum(0, np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1)
    ih = np.maximum(0, np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1)
    inter = iw * ih
    area = lambda x: (x[:, 2] - x[:, 0] + 1) * (x[:, 3] - x[:, 1] + 1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--grid", type=int, default=7)
    parser.add_argument("--maps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--noise", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    header(
        f"WSOL sweep, {args.maps} maps of {args.size} px from a {args.grid}x{args.grid} field + noise {args.noise}, "
        f"1000 thresholds, MaxBoxAcc + MaxBoxAccV2; opencv {cv2.__version__}, numpy {np.__version__}, "
        f"numba {numba.__version__}"
    )
    maps = cam_like_maps(args.maps, args.size, args.grid, noise=args.noise)
    gts = ground_truth(args.maps, args.size)
    gts_camlens = [torch.from_numpy(g + np.array([0, 0, 1, 1])).double() for g in gts]  # inclusive -> exclusive
    thresholds = wsol_thresholds()

    def fast():
        acc = BoxAccuracy(thresholds)
        acc.update(maps, gts_camlens)
        return acc

    start = time.perf_counter()
    fast()
    print(f"camlens first call (numba compile, or load from its cache): {time.perf_counter() - start:.2f} s")
    ours, (ref_largest, ref_every) = fast(), reference(maps, gts, thresholds)
    same = np.array_equal(ours.correct_largest.numpy(), ref_largest) and np.array_equal(
        ours.correct_any.numpy(), ref_every
    )
    print(f"identical MaxBoxAcc/V2 hit counts at all {len(thresholds)} thresholds x IoU {IOUS}: {same}")
    print(f"MaxBoxAcc {ours.compute()['maxboxacc']:.2f}  MaxBoxAccV2 {ours.compute()['maxboxacc_v2']:.2f}")

    wall = {"opencv per threshold": [], "camlens one pass": []}
    cpu = {"opencv per threshold": [], "camlens one pass": []}
    for _ in range(args.repeats):
        for name, fn in (
            ("opencv per threshold", lambda: reference(maps, gts, thresholds)),
            ("camlens one pass", fast),
        ):
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    print(f"{'what':<24}{'wall ms/map':>14}{'cpu ms/map':>14}")
    for name in wall:
        print(
            f"{name:<24}{statistics.median(wall[name]) / args.maps * 1e3:>14.2f}"
            f"{statistics.median(cpu[name]) / args.maps * 1e3:>14.2f}"
        )
    ratio_wall = statistics.median(r / f for r, f in zip(wall["opencv per threshold"], wall["camlens one pass"]))
    ratio_cpu = statistics.median(r / f for r, f in zip(cpu["opencv per threshold"], cpu["camlens one pass"]))
    print(
        f"speedup (reference / camlens): {ratio_wall:.1f}x wall, {ratio_cpu:.1f}x cpu time"
        f"{'' if same else '   RESULTS DIFFER'}"
    )
    what = f"{args.maps} maps, {args.size} px, from {args.grid}x{args.grid}"
    what += f", noise {args.noise}" if args.noise else ""
    ms = {name: round(statistics.median(wall[name]) / args.maps * 1e3, 2) for name in wall}
    write_result(
        f"sweep_{args.size}px_grid{args.grid}" + (f"_noise{args.noise}" if args.noise else ""),
        f"WSOL threshold sweep (1000 thresholds, MaxBoxAcc + MaxBoxAccV2): {what}",
        ["maps", "OpenCV per threshold, ms/map", "camlens one pass, ms/map", "ratio", "identical hit counts"],
        [[what, ms["opencv per threshold"], ms["camlens one pass"], f"{ratio_wall:.1f}x", same]],
        f"Wall time, medians of {args.repeats} interleaved rounds, one thread.",
    )


if __name__ == "__main__":
    main()
