"""Turning one image's maps into the JSON the API answers: predictions, and per explained class the overlay and
heatmap as PNG data URLs, the raw map size and the box of the paper's protocol."""

from __future__ import annotations

import base64
import io
import math

import torch.nn.functional as F
from torch import Tensor

from ..boxes import paper_boxes
from ..constants import PAPER_THRESHOLD
from ..maps import normalize, upsample
from ..render import colorize, overlay, to_pil
from .engine import Row

PNG_COMPRESS_LEVEL = 3  # zlib level: most of the size gain of level 6 at about half the encoding time


def data_url(image: Tensor, fmt: str = "png") -> str:
    """(3, H, W) in [0, 1] as a ``data:`` URL (PNG, or JPEG at quality 90)."""
    buf = io.BytesIO()
    if fmt == "png":
        to_pil(image).save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        to_pil(image).save(buf, "JPEG", quality=90)
    return f"data:image/{fmt};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def for_display(image: Tensor, max_side: int) -> Tensor:
    """``image`` (3, H, W) scaled down (antialiased) so its longer side is at most ``max_side``; never scaled up."""
    height, width = image.shape[-2:]
    scale = min(1.0, max_side / max(width, height))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    if size == (height, width):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0].clamp(0, 1)


def paper_box(heat: Tensor, width: int, height: int) -> list[float]:
    """The paper's box (Zhou et al., CVPR 2016, sec. 3.1) on the raw map ``heat`` (h, w) upsampled to the shown
    size: the largest 8-connected component above 20% of the max, as ``[x0, y0, x1, y1]`` in the pixels of the
    ``width`` x ``height`` image (exclusive right and bottom edges); ``[0, 0, 0, 0]`` when no pixel is above."""
    return paper_boxes(heat, PAPER_THRESHOLD, image_size=(height, width)).tolist()


def explain_payload(
    shown: Tensor,
    image_size: tuple[int, int],
    row: Row,
    class_names: list[str],
    *,
    alpha: float,
    top: int = 5,
    predictions: bool = True,
) -> dict:
    """The JSON-ready answer for an image of ``image_size`` (width, height), shown as ``shown`` (3, h, w) in
    [0, 1] (see :func:`for_display`), and its :class:`Row`.

    Sizes are ``[width, height]``.  The overlay and heatmap PNGs are at the size of ``shown``, the overlay blended
    at opacity ``alpha``; the box is found on the heatmap at that size and given in the pixels of the image.
    With a target, each explained entry's score is the target's score, and slots where the target explains
    nothing (a multi-label sample's padding, a box no prediction matches) are left out; ``predictions=False``
    (detectors, segmenters: no image-level classes) gives no predictions.
    """
    width, height = image_size
    dh, dw = shown.shape[-2:]
    classified = predictions and row.logits.ndim == 1 and row.logits.numel() == len(class_names)
    probs = row.logits.float().softmax(-1) if classified else row.logits.new_zeros(0)
    best = probs.topk(min(top, probs.numel()))
    explained = []
    for n, cls in enumerate(row.classes.tolist()):
        score = None if row.target_scores is None else float(row.target_scores[n])
        if score is not None and math.isnan(score):  # the target explains nothing here (no label, no box matched)
            continue
        cam = row.maps[n].float()
        heat = upsample(cam, (dh, dw))
        heat01 = normalize(heat)
        explained.append(
            {
                "class": cls,
                "label": class_names[cls] if 0 <= cls < len(class_names) else "target",
                "score": score if score is not None else float(probs[cls]) if 0 <= cls < probs.numel() else None,
                "map_size": [int(cam.shape[-1]), int(cam.shape[-2])],
                "box": paper_box(heat, width, height),
                "overlay": data_url(overlay(shown, cam, alpha=alpha)),
                "heatmap": data_url(colorize(heat01)),
            }
        )
    return {
        "layer": row.layer,
        "image_size": [width, height],
        "display_size": [dw, dh],
        "image": data_url(shown, "jpeg"),
        "predictions": [
            {"class": int(c), "label": class_names[int(c)], "score": float(s)}
            for s, c in zip(best.values, best.indices)
        ],
        "explained": explained,
    }


__all__ = ["data_url", "explain_payload", "for_display", "paper_box"]
