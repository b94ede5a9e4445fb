"""Colormaps, overlays, boxes and figures: the edge where maps become pictures.

Tensors stay tensors until :func:`to_pil`/:func:`save_image`; matplotlib provides the colormap tables (and the
three-panel figure), applied as a 256-entry lookup on the map's device.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from .capture import CamlensError
from .maps import normalize, upsample

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@lru_cache(maxsize=32)
def _lut(colormap: str) -> Tensor:
    import matplotlib

    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError:
        raise CamlensError(f"unknown colormap {colormap!r}; any matplotlib colormap name works (jet, viridis, ...)") from None
    return torch.from_numpy(cmap(np.linspace(0.0, 1.0, 256))[:, :3].astype(np.float32))


def colorize(map01: Tensor, colormap: str = "jet") -> Tensor:
    """A map with values in [0, 1], shape (h, w), as an RGB image (3, h, w) through a matplotlib colormap."""
    lut = _lut(colormap).to(map01.device)
    index = (map01.float().clamp(0, 1) * 255).round().long()
    return lut[index].permute(2, 0, 1)


def overlay(
    image: Tensor,
    cam: Tensor,
    *,
    colormap: str = "jet",
    alpha: float = 0.5,
    classic: bool = False,
) -> Tensor:
    """Blend a map onto an image (3, H, W) in [0, 1].  The map (h, w) is min-max normalized and upsampled
    bilinearly to the image size first.

    Default: ``(1 - alpha) * image + alpha * heat``.  ``classic=True`` gives the blend of the original CAM code,
    ``0.3 * heat + 0.5 * image``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise CamlensError(f"alpha={alpha} must be between 0 and 1")
    if image.ndim != 3 or image.shape[0] != 3:
        raise CamlensError(f"image must be (3, H, W), got {tuple(image.shape)}")
    heat = colorize(upsample(normalize(cam.float()), image.shape[-2:]), colormap)
    img = image.float().to(heat.device)
    blended = 0.3 * heat + 0.5 * img if classic else (1 - alpha) * img + alpha * heat
    return blended.clamp(0, 1)


def to_pil(image: Tensor) -> Image.Image:
    """(3, H, W) or (H, W) float in [0, 1] to a PIL image."""
    arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    if arr.ndim == 3:
        arr = arr.permute(1, 2, 0)
    return Image.fromarray(arr.numpy())


def draw_boxes(
    image: Tensor | Image.Image,
    boxes: Sequence[Sequence[float]],
    colors: Sequence[str] = ("lime",),
    width: int = 2,
) -> Image.Image:
    """Draw boxes ``[x0, y0, x1, y1]`` (exclusive right/bottom edges, pixel units) on an image."""
    img = to_pil(image) if isinstance(image, Tensor) else image.copy()
    draw = ImageDraw.Draw(img)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=colors[i % len(colors)], width=width)
    return img


def save_image(image: Tensor | Image.Image, path: str | Path, quality: int = 92) -> Path:
    """Save as PNG or JPEG (chosen by the suffix)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".jpg", ".jpeg"):
        raise CamlensError(f"{path}: save as .png, .jpg or .jpeg")
    img = to_pil(image) if isinstance(image, Tensor) else image
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=quality) if suffix != ".png" else img.save(path)
    return path


def overlay_image(
    image: Tensor, cam: Tensor, *, colormap: str = "jet", alpha: float = 0.5, classic: bool = False
) -> Image.Image:
    """:func:`overlay` as a PIL image, at the image's size."""
    return to_pil(overlay(image, cam, colormap=colormap, alpha=alpha, classic=classic))


def three_panel(image: Tensor, cam: Tensor, *, title: str = "", colormap: str = "jet", alpha: float = 0.5) -> Figure:
    """The raw map at feature resolution, the map resized to the image, and the overlay, side by side, as a
    matplotlib figure (built without pyplot, so it neither changes the backend nor stays open)."""
    from matplotlib.figure import Figure

    resized = upsample(normalize(cam.float()), image.shape[-2:])
    panels = [
        ("raw CAM", cam.float().cpu().numpy(), colormap),
        ("resized CAM", resized.cpu().numpy(), colormap),
        ("overlay", overlay(image, cam, colormap=colormap, alpha=alpha).permute(1, 2, 0).cpu().numpy(), None),
    ]
    fig = Figure(figsize=(10, 3.6))
    axes = fig.subplots(1, 3)
    for ax, (name, data, cmap) in zip(axes, panels):
        ax.imshow(data, cmap=cmap, interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def three_panel_figure(
    image: Tensor,
    cam: Tensor,
    path: str | Path,
    *,
    title: str = "",
    colormap: str = "jet",
    alpha: float = 0.5,
) -> Path:
    """:func:`three_panel` saved to ``path``."""
    fig = three_panel(image, cam, title=title, colormap=colormap, alpha=alpha)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
