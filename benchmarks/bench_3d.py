"""Gradient methods on a 3-D network on CPU: camlens and pytorch-grad-cam against a plain forward pass.

torchvision's r3d_18 (3-D ResNet-18, random weights, 3-D convolutions throughout, GAP + linear head) on clips of
``--frames`` x ``--size`` x ``--size`` (batch ``--batch``), target layer ``layer4``, the top class.  Each method is
timed per call, interleaved in rounds (every method once per round, so drifts of the machine hit all alike), after
warm-up calls; reported: the median seconds and the median over rounds of the ratio to the plain forward pass under
torch.no_grad().  pytorch-grad-cam returns maps normalized and resized to the input (scipy zoom), camlens raw
maps at the layer's resolution: the row "camlens gradcam + upsample" adds camlens' normalize + trilinear
upsample to the input for a like-for-like comparison of cost (the two resizes interpolate differently, so the
resized maps differ; the maps themselves are compared in tests/test_ndim.py).  pytorch-grad-cam's ScoreCAM and
AblationCAM fail on 5-D inputs (grad-cam 1.5.7), so they are not in the table.

    python benchmarks/bench_3d.py                      # about two minutes on 2 busy cores
    python benchmarks/bench_3d.py --repeats 9 --frames 16 --size 112
"""

from __future__ import annotations

import argparse
import os
import statistics
import warnings
from importlib.metadata import version

import torch
import torchvision

import camlens
from common import header, interleaved, write_result

warnings.filterwarnings("ignore")
os.environ.setdefault("TQDM_DISABLE", "1")

METHODS = ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam"]
PGC_NAMES = {
    "gradcam": "GradCAM",
    "gradcampp": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "hirescam": "HiResCAM",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    header("bench_3d: gradient methods on r3d_18, CPU")
    print(
        f"# grad-cam {version('grad-cam')} | input ({args.batch}, 3, {args.frames}, {args.size}, {args.size}) | "
        f"layer4 | {args.repeats} interleaved rounds after 2 warm-up rounds"
    )

    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = torchvision.models.video.r3d_18(num_classes=10).eval()
    x = torch.randn(args.batch, 3, args.frames, args.size, args.size)
    with torch.no_grad():
        top = model(x).argmax(1).tolist()
    targets = [ClassifierOutputTarget(c) for c in top]

    ours = {name: camlens.get_method(name)(model, layer="layer4") for name in METHODS}
    theirs = {name: getattr(pgc, PGC_NAMES[name])(model=model, target_layers=[model.layer4]) for name in METHODS}

    def plain() -> object:
        with torch.no_grad():
            return model(x)

    def upsampled() -> torch.Tensor:
        maps = ours["gradcam"](x).maps
        return camlens.upsample(camlens.normalize(maps, spatial_dims=3), x.shape[2:])

    cam = camlens.CAM(model)
    fns = {"forward (no_grad)": plain, "camlens cam": lambda: cam(x)}
    for name in METHODS:
        fns[f"camlens {name}"] = (lambda e: lambda: e(x))(ours[name])
    fns["camlens gradcam + upsample"] = upsampled
    for name in METHODS:
        fns[f"pytorch-grad-cam {name}"] = (lambda e: lambda: e(input_tensor=x, targets=targets))(theirs[name])

    # the same maps at the layer (tests/test_ndim.py checks them where pytorch-grad-cam's resize is the identity);
    # here its cubic-spline zoom and camlens' trilinear upsampling interpolate a coarse layer differently
    ref = torch.from_numpy(theirs["gradcam"](input_tensor=x, targets=targets))
    diff = (upsampled() - ref).abs().max().item()
    layer = tuple(ours["gradcam"](x).maps.shape[2:])
    print(
        f"# layer4 maps {layer}; resized Grad-CAM maps, camlens (trilinear) vs pytorch-grad-cam (spline zoom): "
        f"max abs diff {diff:.3f}"
    )

    times = interleaved(fns, args.repeats)
    base = times["forward (no_grad)"]
    print(f"{'what':<34}{'median s':>10}{'x forward':>11}{'x camlens':>11}")
    for name, ts in times.items():
        ratio = statistics.median(t / b for t, b in zip(ts, base))
        peer = name.replace("pytorch-grad-cam", "camlens")
        vs = (
            f"{statistics.median(t / o for t, o in zip(ts, times[peer])):>11.2f}"
            if name.startswith("pytorch-grad-cam")
            else ""
        )
        print(f"{name:<34}{statistics.median(ts):>10.4f}{ratio:>11.2f}{vs}")

    def ratio(name: str, over: str) -> str:
        return f"{statistics.median(t / o for t, o in zip(times[name], times[over])):.2f}x"

    rows = [["cam", ratio("camlens cam", "forward (no_grad)"), None, None]]
    rows += [
        [
            name,
            ratio(f"camlens {name}", "forward (no_grad)"),
            ratio(f"pytorch-grad-cam {name}", "forward (no_grad)"),
            ratio(f"pytorch-grad-cam {name}", f"camlens {name}"),
        ]
        for name in METHODS
    ]
    rows.append(
        [
            "gradcam + normalize + trilinear upsample to the clip",
            ratio("camlens gradcam + upsample", "forward (no_grad)"),
            None,
            None,
        ]
    )
    write_result(
        "ndim_r3d18_cpu",
        f"Gradient methods on a 3-D network: r3d_18 (random weights), batch {args.batch} "
        f"of 3 x {args.frames} x {args.size} x {args.size} clips, layer4",
        ["method", "camlens / forward", "pytorch-grad-cam / forward", "pytorch-grad-cam / camlens"],
        rows,
        f"{args.repeats} interleaved rounds after 2 warm-up rounds, medians of per-round ratios; a plain "
        f"forward pass took {statistics.median(base):.2f} s.",
    )
    for explainer in [cam, *ours.values()]:
        explainer.close()
    for peer in theirs.values():
        peer.activations_and_grads.release()


if __name__ == "__main__":
    main()
