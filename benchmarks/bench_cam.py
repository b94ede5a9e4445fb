"""CAM cost against a plain inference forward pass, torchcam's CAM and the classic numpy recipe, in one run.

python benchmarks/bench_cam.py [--arch resnet50] [--batch 8] [--size 224] [--repeats 15] [--device cuda]
python benchmarks/bench_cam.py --real      # EfficientNet-Lite0 with its ImageNet weights on the shipped photos
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch
import torchvision.models as tvm

import camlens
from common import header, interleaved, report, write_result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--real", action="store_true", help="efficientnet_lite0 (ImageNet weights), shipped photos")
    args = parser.parse_args()
    arch = "efficientnet_lite0 (ImageNet weights, shipped photos)" if args.real else args.arch
    header(f"CAM vs plain forward: {arch}, batch {args.batch}, {args.size} px, {args.device}")

    torch.manual_seed(0)
    if args.real:
        from camlens.demo_photos import shipped_photos

        loaded = camlens.load_model(arch="efficientnet_lite0", weights="imagenet", size=args.size, device=args.device)
        photos = list(shipped_photos().values())
        model, layer, fc = loaded.model, "bn2", "classifier"
        x = torch.cat([loaded.preprocess(photos[i % len(photos)]) for i in range(args.batch)]).to(args.device)
    else:
        model, layer, fc = tvm.get_model(args.arch, weights=None).eval().to(args.device), "layer4", "fc"
        x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)

    def forward():
        with torch.inference_mode():
            model(x)

    cam = camlens.CAM(model)

    def camlens_cam():
        cam(x, topk=1)

    from torchcam.methods import CAM as TorchcamCAM

    peer_model = copy.deepcopy(model)
    peer = TorchcamCAM(peer_model, target_layer=layer, fc_layer=fc, input_shape=(3, args.size, args.size))

    def torchcam_cam():
        with torch.inference_mode():
            logits = peer_model(x)
        peer(logits.argmax(1).tolist(), logits)

    feats = {}
    hook = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: feats.__setitem__("f", o))
    weight = dict(model.named_modules())[fc].weight.detach().cpu().numpy()

    def numpy_recipe():
        """The hand-written recipe CAM users start from: hook, forward, loop over channels in numpy."""
        with torch.inference_mode():
            logits = model(x)
        f = feats["f"].cpu().numpy()
        for i, c in enumerate(logits.argmax(1).tolist()):
            m = np.zeros(f.shape[2:], dtype=np.float32)
            for k in range(f.shape[1]):
                m += weight[c, k] * f[i, k]

    times = interleaved(
        {
            "plain forward (inference_mode)": forward,
            "camlens.CAM": camlens_cam,
            "torchcam CAM": torchcam_cam,
            "numpy recipe": numpy_recipe,
        },
        args.repeats,
    )
    hook.remove()
    cam.close()
    rows = report(times, "plain forward (inference_mode)")
    name = "lite0" if args.real else args.arch
    write_result(
        f"cam_{name}_{args.device.split(':')[0]}",
        f"CAM against a plain forward pass: {arch}, batch {args.batch}, {args.size} px, {args.device}",
        ["what", "median s", "time / plain forward"],
        rows,
        f"Interleaved rounds ({args.repeats}), medians of per-round ratios.",
        device=args.device,
    )


if __name__ == "__main__":
    main()
