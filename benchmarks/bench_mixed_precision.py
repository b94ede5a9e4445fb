"""How far bfloat16 moves the maps: every method under ``torch.autocast`` (bfloat16 on CPU) and on a bfloat16 copy
of the model, as the largest error relative to the float32 map's maximum, max |M_low - M_32| / max |M_32|.

    python benchmarks/bench_mixed_precision.py [--seeds 3]

Two settings.  The one the documented bound is about (tests/test_mixed_precision.py asserts it): a small CNN whose
explained layer is post-ReLU and whose classifier weights are non-negative, so the terms of sum_k w_k A_k do not
cancel and the error is the rounding of the model's own low-precision passes, over ``--seeds`` random networks.
Then real weights on real photos: EfficientNet-Lite0 with its ImageNet weights on the photos camlens ships, at its
default layer (the CAM, gradient and Eigen methods; the perturbation methods' thousand masked passes are left to
the small network).  And one case outside the bound: Grad-CAM at a pre-ReLU layer with signed classifier weights.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import torch
from torch import nn

import camlens
from common import header, write_result

METHODS = ("cam", "gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "scorecam", "sscam", "iscam")
METHODS += ("ablationcam", "eigencam")
REAL_METHODS = ("cam", "gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "eigencam")
BOUND, ABLATION_BOUND = 2e-2, 0.25  # docs/howto/ndim.md, "Mixed precision"


def small_cnn(seed: int, signed: bool = False) -> nn.Sequential:
    """conv-BN-ReLU-pool-conv-BN-ReLU-conv(module "7")-ReLU(8), GAP, linear: random weights and BN statistics,
    the classifier's weights made non-negative unless ``signed``."""
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2)]
    layers += [nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 12, 3, padding=1)]
    model = nn.Sequential(*layers, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5)).eval()
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
        if not signed:
            model[-1].weight.abs_()
    return model


def options(name: str, layer: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {} if name == "cam" or layer is None else {"layer": layer}
    if name == "sscam":  # the same noise draws in both precisions
        kwargs.update(num_samples=2, generator=torch.Generator().manual_seed(0))
    if name == "iscam":
        kwargs.update(num_samples=3)
    return kwargs


def relative_error(got: camlens.CAMResult, want: camlens.CAMResult) -> float:
    """The largest max |M_low - M_32| / max |M_32| over the maps that are not zero in float32 (a map that is zero
    everywhere, e.g. Grad-CAM of a class whose gradient at the layer vanishes, has no scale to be relative to)."""
    scale = want.maps.abs().amax((-2, -1))
    error = (got.maps - want.maps).abs().amax((-2, -1))
    return (error[scale > 0] / scale[scale > 0]).max().item()


def errors(name: str, model: nn.Module, x: torch.Tensor, layer: str | None) -> tuple[float, float]:
    """The largest relative error of ``name``'s maps under bfloat16 autocast and on a bfloat16 copy of the model."""
    with camlens.get_method(name)(model, **options(name, layer)) as explainer:
        want = explainer(x, topk=2)
    with camlens.get_method(name)(model, **options(name, layer)) as explainer, torch.autocast("cpu", torch.bfloat16):
        autocast = relative_error(explainer(x, classes=want.classes), want)
    low = copy.deepcopy(model).to(torch.bfloat16)
    with camlens.get_method(name)(low, **options(name, layer)) as explainer:
        model_error = relative_error(explainer(x.to(torch.bfloat16), classes=want.classes), want)
    return autocast, model_error


def span(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{high:.2g}" if low == high else f"{low:.2g} to {high:.2g}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3, help="random small networks")
    args = parser.parse_args()
    header("bfloat16 map errors")

    rows: list[list[Any]] = []
    for name in METHODS:
        measured = [errors(name, small_cnn(seed), torch.randn(2, 3, 16, 16), "8") for seed in range(args.seeds)]
        bound = ABLATION_BOUND if name == "ablationcam" else BOUND
        rows.append(
            [name, "small CNN, post-ReLU layer", bound, span([a for a, _ in measured]), span([m for _, m in measured])]
        )
        print(rows[-1], flush=True)
    signed = [
        errors("gradcam", small_cnn(seed, signed=True), torch.randn(2, 3, 16, 16), "7") for seed in range(args.seeds)
    ]
    rows.append(["gradcam", "small CNN, pre-ReLU layer, signed weights (cancelling)", "not covered"])
    rows[-1] += [span([a for a, _ in signed]), span([m for _, m in signed])]

    from camlens.demo_photos import shipped_photos

    loaded = camlens.load_model(arch="efficientnet_lite0", weights="imagenet")
    photos = torch.cat([loaded.preprocess(photo) for photo in shipped_photos().values()])
    for name in REAL_METHODS:
        autocast, model_error = errors(name, loaded.model, photos, None)
        rows.append(
            [
                name,
                f"efficientnet_lite0 (ImageNet), {len(photos)} photos",
                "not covered (signed weights)",
                f"{autocast:.2g}",
                f"{model_error:.2g}",
            ]
        )
        print(rows[-1], flush=True)

    notes = (
        "max |M_low - M_32| / max |M_32| over the maps of the top-2 classes (chosen by the float32 model), per "
        f"image; the small CNN's figures are the range over {args.seeds} random networks (2 random 16 px images "
        "each); a map that is zero everywhere in float32 has no scale and is left out. bfloat16 keeps 8 "
        "significant bits, so one rounding is 2^-9 of a value; Ablation-CAM's weights are "
        "differences of two rounded scores, hence its looser bound. Where the terms of sum_k w_k A_k cancel (signed "
        "weights or gradients on signed activations) the same absolute error is larger relative to the map by the "
        "cancellation factor, which no bound covers. Made by python benchmarks/bench_mixed_precision.py."
    )
    columns = ["method", "network", "stated bound", "autocast (bfloat16)", "bfloat16 model"]
    write_result(
        "mixed_precision_error",
        "Mixed precision: largest map error relative to the float32 map, bfloat16 on CPU",
        columns,
        rows,
        notes,
    )


if __name__ == "__main__":
    main()
