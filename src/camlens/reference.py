"""Choe et al.'s wsolevaluation (CVPR 2020, "Evaluating Weakly Supervised Object Localization Methods Right"),
reproduced exactly: ``--protocol wsolevaluation`` on ``camlens evaluate`` and ``camlens train``.

camlens's default protocol differs from the reference code where the reference code's choice loses information
or is a bug; this mode follows the reference code, so its figures can be put beside published ones:

* evaluation at the model's input size (their ``cv2.resize(cam, image_size, INTER_CUBIC)`` of the raw CAM to the
  224 x 224 input, then min-max normalization, ``inference.py``), not at the original image size with bilinear
  maps; ground-truth boxes mapped onto that grid with their truncation (``evaluation.resize_bbox``), masks with
  nearest-neighbour resizing (``evaluation.load_mask_image``); the input itself resized by PIL (torchvision's
  ``Resize((224, 224))`` on a PIL image, ``data_loaders.py``);
* the threshold sweep's step (``cam_curve_interval``): 0.001 when evaluating a model (``config.py``), 0.01 when
  scoring saved maps (``evaluation.py``'s command line);
* training: SGD with Nesterov momentum (``main.py``, ``_set_optimizer``) and their learning-rate groups, chosen by
  parameter name (``_FEATURE_PARAM_LAYER_PATTERNS``), and Hide-and-Seek's patch grid as their loop draws it
  (:func:`camlens.training.wsol.has.hidden_pixels`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from .errors import CamlensError
from .maps import normalize

PROTOCOLS = ("camlens", "wsolevaluation")
REFERENCE = "wsolevaluation"

MODEL_CURVE_INTERVAL = 0.001  # config.py's --cam_curve_interval, used by main.py's evaluation of a model
MAPS_CURVE_INTERVAL = 0.01  # evaluation.py's --cam_curve_interval, used when scoring saved score maps

# main.py's _FEATURE_PARAM_LAYER_PATTERNS: a parameter whose name contains one of these is a "feature" parameter
FEATURE_PARAM_PATTERNS = {
    "vgg": ("features.",),
    "resnet": ("layer4.", "fc."),
    "inception": ("Mixed", "Conv2d_1", "Conv2d_2", "Conv2d_3", "Conv2d_4"),
}


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise CamlensError(f"protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    return protocol


def curve_interval(protocol: str, interval: float | None, scoring_saved_maps: bool) -> float | None:
    """The threshold step of the sweep: ``interval`` when given; else the reference code's default for what is
    evaluated under the reference protocol; else None (camlens's default, 0.001)."""
    if interval is not None:
        if not 0 < interval < 1:
            raise CamlensError(f"--cam-curve-interval {interval} must be in (0, 1)")
        return interval
    if check_protocol(protocol) == REFERENCE:
        return MAPS_CURVE_INTERVAL if scoring_saved_maps else MODEL_CURVE_INTERVAL
    return None


def reference_input(
    images: Sequence[Tensor], size: Sequence[int], mean: Sequence[float], std: Sequence[float]
) -> Tensor:
    """The reference code's test input: each image (3, H, W) in [0, 1] (8-bit pixels, as decoded) resized by PIL's
    bilinear filter to ``size`` (H, W), then normalized: ``(x - mean) / std``; (B, 3, h, w) float32."""
    h, w = (int(v) for v in size)
    batch = []
    for img in images:
        pixels = img.detach().mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        resized = np.asarray(Image.fromarray(pixels).resize((w, h), Image.Resampling.BILINEAR))
        batch.append(torch.from_numpy(resized.copy()).permute(2, 0, 1))
    x = torch.stack(batch).float().div_(255)
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def reference_score_maps(maps: Tensor, size: Sequence[int]) -> Tensor:
    """The reference code's score maps: raw maps (B, h, w) resized to ``size`` (H, W) by bicubic interpolation
    (OpenCV's INTER_CUBIC and torch's bicubic both use a = -0.75 with replicated borders; they agree to float32
    rounding) and min-max normalized; a constant map, or one with NaN, gives zeros (``normalize_scoremap``)."""
    up = F.interpolate(
        maps.detach().float()[:, None], size=tuple(int(v) for v in size), mode="bicubic", align_corners=False
    )[:, 0]
    finite = torch.isfinite(up).flatten(1).all(1)
    return torch.where(finite[:, None, None], normalize(up.nan_to_num()), torch.zeros_like(up))


def nearest_masks(masks: Tensor, size: Sequence[int]) -> Tensor:
    """Boolean masks (B, H, W) resized by nearest neighbour (OpenCV's INTER_NEAREST: source index
    ``floor(i * H / h)``, which is torch's ``nearest``)."""
    return F.interpolate(masks[:, None].float(), size=tuple(int(v) for v in size), mode="nearest")[:, 0] > 0.5


def reference_arch_options(arch: str, method: str) -> dict:
    """Builder options where the reference code's network differs from camlens's default one: their InceptionV3
    with ADL (``wsol/inception.py``, ``InceptionAdl``) has no dropout before its head's convolutions."""
    return {"dropout": 0.0} if method == "adl" and arch == "wsol-inceptionv3" else {}


def backbone_family(arch: str) -> str:
    """vgg, resnet or inception: the family whose learning-rate rule applies to a camlens arch name."""
    name = arch.lower().replace("_", "").replace("-", "")
    for family in ("vgg", "resnet", "inception"):
        if family in name:
            return family
    raise CamlensError(
        f"--protocol wsolevaluation trains Choe et al.'s backbones (VGG16, ResNet50, InceptionV3); "
        f"{arch!r} is none of them"
    )


def reference_parameter_groups(model: nn.Module, arch: str, lr_mult: float) -> list[dict]:
    """The reference code's two learning-rate groups: for VGG and InceptionV3 the parameters whose names contain
    a feature pattern train at the base rate and all others at ``lr_mult`` times it; for ResNet the other way
    round (``layer4.`` and ``fc.`` at ``lr_mult``).  Empty groups are left out."""
    family = backbone_family(arch)
    patterns = FEATURE_PARAM_PATTERNS[family]
    base: list[nn.Parameter] = []
    boosted: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        matched = any(p in name for p in patterns)
        (boosted if matched == (family == "resnet") else base).append(param)
    groups = [
        {"params": base, "lr_mult": 1.0, "name": "features"},
        {"params": boosted, "lr_mult": float(lr_mult), "name": "classifier"},
    ]
    return [g for g in groups if g["params"]]
