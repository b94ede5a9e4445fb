"""Colormaps, overlays, boxes and figures: the edge where maps become pictures.

Tensors stay tensors until :func:`to_pil`/:func:`save_image`; matplotlib provides the colormap tables (and the
figures), applied as a 256-entry lookup on the map's device.  Images get the three-panel figure, 1-D signals a
line plot of the map under the signal (:func:`signal_figure`), 3-D volumes a grid of slices and a
maximum-intensity projection (:func:`volume_figure`); :func:`map_figure` picks by the input's rank.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from .errors import CamlensError
from .files import atomic_open
from .maps import normalize, upsample

if TYPE_CHECKING:
    from matplotlib.figure import Figure


JPEG_QUALITY = 92


def to_bytes(values: Tensor) -> Tensor:
    """Values in [0, 1] as uint8, round(255 * clamp(v, 0, 1)): the one quantization of every picture camlens
    writes, and of the colormap index."""
    return (values.float().clamp(0, 1) * 255).round().to(torch.uint8)


@lru_cache(maxsize=32)
def _lut(colormap: str) -> Tensor:
    import matplotlib

    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError:
        raise CamlensError(
            f"unknown colormap {colormap!r}; any matplotlib colormap name works (jet, viridis, ...)"
        ) from None
    return torch.from_numpy(cmap(np.linspace(0.0, 1.0, 256))[:, :3].astype(np.float32))


def colorize(map01: Tensor, colormap: str = "jet") -> Tensor:
    """A map with values in [0, 1], shape (h, w), as an RGB image (3, h, w) through a matplotlib colormap."""
    lut = _lut(colormap).to(map01.device)
    index = to_bytes(map01).long()
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
    arr = to_bytes(image.detach()).cpu()
    if arr.ndim == 3:
        arr = arr.permute(1, 2, 0)
    return Image.fromarray(arr.numpy())


def draw_boxes(
    image: Tensor | Image.Image,
    boxes: Sequence[Sequence[float]],
    colors: Sequence[str] = ("lime",),
    width: int = 2,
    labels: Sequence[str] | None = None,
) -> Image.Image:
    """Draw boxes ``[x0, y0, x1, y1]`` (exclusive right/bottom edges, pixel units) on an image, each with its
    ``labels`` entry (when given) written in the box's colour on a black band at its top-left corner, inside the
    image."""
    img = to_pil(image) if isinstance(image, Tensor) else image.copy()
    draw = ImageDraw.Draw(img)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        color = colors[i % len(colors)]
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=color, width=width)
        if labels is not None and labels[i]:
            left, top, right, bottom = draw.textbbox((0, 0), labels[i])
            x = min(max(0.0, x0), max(0.0, img.width - (right - left) - 2))
            y = min(max(0.0, y0), max(0.0, img.height - (bottom - top) - 2))
            draw.rectangle([x, y, x + right - left + 2, y + bottom - top + 2], fill="black")
            draw.text((x + 1 - left, y + 1 - top), labels[i], fill=color)
    return img


def save_image(
    image: Tensor | Image.Image, path: str | Path, quality: int = JPEG_QUALITY, *, replace: bool = True
) -> Path:
    """Save as PNG or JPEG (chosen by the suffix), atomically (:func:`camlens.files.atomic_open`); an existing
    file is kept (:class:`camlens.files.OutputError`) unless ``replace``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".jpg", ".jpeg"):
        raise CamlensError(f"{path}: save as .png, .jpg or .jpeg")
    img = to_pil(image) if isinstance(image, Tensor) else image
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, replace=replace) as f:
        img.save(f, "PNG") if suffix == ".png" else img.save(f, "JPEG", quality=quality)
    return path


def overlay_image(
    image: Tensor, cam: Tensor, *, colormap: str = "jet", alpha: float = 0.5, classic: bool = False
) -> Image.Image:
    """:func:`overlay` as a PIL image, at the image's size.

    Args:
        image: the image (3, H, W) in [0, 1].
        cam: one map (h, w), any range (normalized and upsampled to the image here).
        colormap: a matplotlib colormap name (``jet`` needs no matplotlib).
        alpha: the map's weight in the blend.
        classic: the CAM paper's look (the map's colors over a dimmed image).

    Returns:
        The overlay as an RGB PIL image of the image's size.
    """
    return to_pil(overlay(image, cam, colormap=colormap, alpha=alpha, classic=classic))


@lru_cache(maxsize=1)
def _notebook_figure() -> type[Figure]:
    from matplotlib.figure import Figure

    class NotebookFigure(Figure):
        """A figure Jupyter shows as a PNG in a fresh kernel: IPython's figure display hook is installed only when
        a matplotlib backend starts (``%matplotlib inline``, or importing pyplot), so a figure built without
        pyplot otherwise prints as the text ``<Figure size 1000x360 with 3 Axes>``."""

        def _repr_png_(self) -> bytes:
            buffer = io.BytesIO()
            self.savefig(buffer, format="png", dpi=100)
            return buffer.getvalue()

    return NotebookFigure


def three_panel(image: Tensor, cam: Tensor, *, title: str = "", colormap: str = "jet", alpha: float = 0.5) -> Figure:
    """The raw map at feature resolution, the map resized to the image, and the overlay, side by side, as a
    matplotlib figure (built without pyplot, so it neither changes the backend nor stays open; shown by Jupyter
    as a PNG without ``%matplotlib inline``).

    Args:
        image: the image (3, H, W) in [0, 1].
        cam: one raw map (h, w).
        title: the figure's title (text, never parsed as math).
        colormap: a matplotlib colormap name.
        alpha: the map's weight in the overlay.

    Returns:
        The matplotlib ``Figure``.
    """
    resized = upsample(normalize(cam.float()), image.shape[-2:])
    panels = [
        ("raw CAM", cam.float().cpu().numpy(), colormap),
        ("resized CAM", resized.cpu().numpy(), colormap),
        ("overlay", overlay(image, cam, colormap=colormap, alpha=alpha).permute(1, 2, 0).cpu().numpy(), None),
    ]
    fig = _notebook_figure()(figsize=(10, 3.6))
    axes = fig.subplots(1, 3)
    for ax, (name, data, cmap) in zip(axes, panels):
        ax.imshow(data, cmap=cmap, interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    if title:
        fig.suptitle(title, parse_math=False)  # a class name is text: `$x^{5$` is no formula
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
    replace: bool = True,
) -> Path:
    """:func:`three_panel` saved to ``path`` as :func:`save_figure` does."""
    return save_figure(three_panel(image, cam, title=title, colormap=colormap, alpha=alpha), path, replace=replace)


def save_figure(fig: Figure, path: str | Path, *, replace: bool = True) -> Path:
    """A matplotlib figure saved at 100 dpi, in the format its suffix names, atomically.

    Args:
        fig: the figure.
        path: the file to write (``.png``, ``.pdf``, ``.svg`` ...).
        replace: whether an existing file may be replaced (else :class:`camlens.files.OutputError`).

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, replace=replace) as f:
        fig.savefig(f, format=path.suffix.lstrip(".").lower() or "png", dpi=100)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, replace: bool = True) -> Path:
    try:
        return save_figure(fig, path, replace=replace)
    finally:
        _pyplot().close(fig)


def _unit(t: Tensor) -> Tensor:
    """Min-max over the whole tensor into [0, 1] (display scaling of a signal or a volume)."""
    t = t.float()
    span = t.max() - t.min()
    return (t - t.min()) / span if span > 0 else torch.zeros_like(t)


def signal_figure(signal: Tensor, cam: Tensor, path: str | Path, *, title: str = "", colormap: str = "jet") -> Path:
    """A 1-D signal (C, L) or (L,) with its map beneath: the channels plotted against the sample index over a
    band coloured by the map, and under them the map (L') min-max normalized and linearly upsampled to the L
    samples (:func:`camlens.normalize`, :func:`camlens.upsample`) as a line in [0, 1]."""
    if signal.ndim == 1:
        signal = signal[None]
    if signal.ndim != 2 or cam.ndim != 1:
        raise CamlensError(
            f"signal_figure takes a signal (C, L) and a map (L',), got {tuple(signal.shape)} and {tuple(cam.shape)}"
        )
    length = signal.shape[-1]
    curve = upsample(normalize(cam.float(), spatial_dims=1), (length,)).cpu()
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 4.2), sharex=True, height_ratios=(2, 1))
    values = signal.detach().float().cpu()
    low, high = float(values.min()), float(values.max())
    top.imshow(
        curve[None].numpy(),
        cmap=colormap,
        aspect="auto",
        alpha=0.35,
        vmin=0,
        vmax=1,
        extent=(-0.5, length - 0.5, low, high if high > low else low + 1),
        interpolation="nearest",
    )
    for channel in values:
        top.plot(channel.numpy(), linewidth=1)
    top.set_ylabel("signal")
    bottom.plot(curve.numpy(), color="crimson")
    bottom.set_ylim(-0.05, 1.05)
    bottom.set_ylabel("map")
    bottom.set_xlabel("sample")
    if title:
        fig.suptitle(title, parse_math=False)  # a class name is text: `$x^{5$` is no formula
    fig.tight_layout()
    return _save(fig, path)


@dataclass
class VolumePanels:
    """What :func:`volume_figure` draws: the slice ``indices`` along ``axis``, each slice of the volume with the
    map blended on it (n, 3, H', W'), and the maximum-intensity projections along ``axis`` of the volume with that
    of the map blended on (``mip``, (3, H', W')); ``mip_map`` is the map's projection itself, in [0, 1]."""

    axis: int
    indices: list[int]
    slices: Tensor
    mip: Tensor
    mip_map: Tensor


def volume_panels(
    volume: Tensor, cam: Tensor, *, slices: int = 6, axis: int = 0, colormap: str = "jet", alpha: float = 0.5
) -> VolumePanels:
    """The panels of a 3-D volume (C, D, H, W) (C = 1 grey or 3 colour; or (D, H, W)) and its map (d, h, w): the
    map is min-max normalized over the whole volume and trilinearly upsampled to (D, H, W) (one scale for every
    slice); the volume is min-max scaled for display; ``slices`` evenly spaced slices along ``axis`` (0: depth)."""
    if volume.ndim == 3:
        volume = volume[None]
    if volume.ndim != 4 or volume.shape[0] not in (1, 3) or cam.ndim != 3:
        raise CamlensError(
            f"volume_panels takes a volume (C, D, H, W) with C = 1 or 3 and a map (d, h, w), got "
            f"{tuple(volume.shape)} and {tuple(cam.shape)}"
        )
    if axis not in (0, 1, 2) or slices < 1:
        raise CamlensError(f"axis={axis} must be 0, 1 or 2 and slices={slices} at least 1")
    if not 0.0 <= alpha <= 1.0:
        raise CamlensError(f"alpha={alpha} must be between 0 and 1")
    grey = _unit(volume.detach()).expand(3, *volume.shape[1:]).cpu()
    heat = upsample(normalize(cam.detach().float(), spatial_dims=3), volume.shape[1:]).cpu()
    count = volume.shape[1 + axis]
    indices = sorted({round(i * (count - 1) / max(slices - 1, 1)) for i in range(slices)})

    def blend(image: Tensor, map01: Tensor) -> Tensor:
        return ((1 - alpha) * image + alpha * colorize(map01, colormap)).clamp(0, 1)

    panels = torch.stack([blend(grey.select(1 + axis, i), heat.select(axis, i)) for i in indices])
    mip_map = heat.amax(axis)
    return VolumePanels(axis, indices, panels, blend(grey.amax(1 + axis), mip_map), mip_map)


def volume_figure(
    volume: Tensor,
    cam: Tensor,
    path: str | Path,
    *,
    slices: int = 6,
    axis: int = 0,
    title: str = "",
    colormap: str = "jet",
    alpha: float = 0.5,
    replace: bool = True,
) -> Path:
    """A 3-D volume and its map as one figure: the slices of :func:`volume_panels` in a grid, then the
    maximum-intensity projection along ``axis`` (the map's largest value along each ray over the volume's)."""
    panels = volume_panels(volume, cam, slices=slices, axis=axis, colormap=colormap, alpha=alpha)
    images = [*panels.slices, panels.mip]
    names = [f"{'dhw'[axis]} = {i}" for i in panels.indices] + ["max projection"]
    columns = min(4, len(images))
    rows = -(-len(images) // columns)
    plt = _pyplot()
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, name in zip(axes.flat, images, names):
        ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(name)
    if title:
        fig.suptitle(title, parse_math=False)  # a class name is text: `$x^{5$` is no formula
    fig.tight_layout()
    return _save(fig, path, replace)


def map_figure(x: Tensor, cam: Tensor, path: str | Path, **options: object) -> Path:
    """The figure that fits the input's rank: :func:`signal_figure` for a signal (C, L),
    :func:`three_panel_figure` for an image (3, H, W), :func:`volume_figure` for a volume (C, D, H, W)."""
    draw = {2: signal_figure, 3: three_panel_figure, 4: volume_figure}.get(x.ndim)
    if draw is None:
        raise CamlensError(f"no figure for an input of shape {tuple(x.shape)}: give (C, L), (3, H, W) or (C, D, H, W)")
    return draw(x, cam, path, **options)  # type: ignore[operator]
