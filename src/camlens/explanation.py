"""One image to its explanation in one call, for notebooks and scripts: ``camlens.explain(model, image)``.

The result holds the original image and the raw maps, and renders on demand: overlays as PIL images at the
original size, the three-panel figure as a matplotlib figure, and itself in Jupyter (``_repr_html_``,
``_repr_png_``).
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from .data.images import as_image
from .errors import CamlensError
from .methods.base import CAMResult, ClassSpec
from .models import LoadedModel, Preprocess, read_class_names
from .render import overlay_image, three_panel
from .wsolnet import build_explainer

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ImageLike = Union[str, Path, Image.Image, np.ndarray, Tensor]


@dataclass
class Explanation:
    """The maps of one image, with the views a notebook wants (predictions, overlays, the three-panel figure).

    Attributes:
        image: the image (3, H, W) in [0, 1] at its original size.
        result: the method's :class:`CAMResult` for a batch of one (raw maps, logits, explained classes).
        class_names: the model's class names.
        method: the method's name.
    """

    image: Tensor
    result: CAMResult
    class_names: list[str]
    method: str

    @property
    def predictions(self) -> list[tuple[str, float]]:
        """(class name, softmax probability) of each explained class, in order."""
        return [(self.class_names[int(c)], float(p)) for c, p in zip(self.result.classes[0], self.result.scores[0])]

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most probable classes, whether explained or not."""
        values, indices = self.result.logits[0].float().softmax(-1).topk(k)
        return [(self.class_names[int(i)], float(v)) for v, i in zip(values, indices)]

    def _map(self, k: int) -> Tensor:
        if not 0 <= k < self.result.maps.shape[1]:
            raise CamlensError(f"k={k}: {self.result.maps.shape[1]} classes were explained")
        return self.result.maps[0, k]

    def overlay(self, k: int = 0, *, alpha: float = 0.5, colormap: str = "jet") -> Image.Image:
        """The map of the ``k``-th explained class over the image, at the image's original size."""
        return overlay_image(self.image, self._map(k), alpha=alpha, colormap=colormap)

    def figure(self, k: int = 0, *, colormap: str = "jet", alpha: float = 0.5) -> "Figure":
        """The three-panel figure (raw map, resized map, overlay) of the ``k``-th explained class.

        Args:
            k: which explained class (0: the first).
            colormap: any matplotlib colormap name for the maps and the overlay.
            alpha: heatmap opacity in the overlay.

        Returns:
            A matplotlib figure, shown by Jupyter as a PNG without ``%matplotlib inline``.
        """
        name, prob = self.predictions[k]
        return three_panel(
            self.image, self._map(k), title=f"{self.method}: {name} ({prob:.1%})", colormap=colormap, alpha=alpha
        )

    def __repr__(self) -> str:
        shown = ", ".join(f"{name} {prob:.1%}" for name, prob in self.predictions)
        return (
            f"Explanation({self.method}, image {self.image.shape[-2]}x{self.image.shape[-1]}, maps "
            f"{'x'.join(map(str, self.result.maps.shape[2:]))} at {self.result.layer!r}: {shown})"
        )

    def _tiles(self, height: int = 224) -> list[Image.Image]:
        tiles = []
        for k in range(self.result.maps.shape[1]):
            tile = self.overlay(k)
            tiles.append(tile.resize((max(1, round(tile.width * height / tile.height)), height)))
        return tiles

    def _repr_png_(self) -> bytes:
        tiles = self._tiles()
        strip = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), tiles[0].height), "white")
        x = 0
        for tile in tiles:
            strip.paste(tile, (x, 0))
            x += tile.width + 4
        buffer = io.BytesIO()
        strip.save(buffer, format="PNG")
        return buffer.getvalue()

    def _repr_html_(self) -> str:
        cells = []
        for tile, (name, prob) in zip(self._tiles(), self.predictions):
            buffer = io.BytesIO()
            tile.save(buffer, format="PNG")
            src = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
            cells.append(
                f'<figure style="display:inline-block;margin:0 6px 0 0"><img src="{src}">'
                f"<figcaption>{html.escape(name)} {prob:.1%}</figcaption></figure>"
            )
        return f"<div><b>{html.escape(self.method)}</b><br>{''.join(cells)}</div>"


def explain(
    model: LoadedModel | nn.Module,
    image: ImageLike,
    *,
    method: str = "cam",
    topk: int = 1,
    classes: ClassSpec = None,
    layer: str | None = None,
    preprocess: Callable[[Tensor], Tensor] | None = None,
    size: int | tuple[int, int] | None = None,
    class_names: str | Sequence[str] | None = None,
) -> Explanation:
    """Explain one image with ``method`` for its ``topk`` most probable classes or the given ``classes``.

    A :func:`camlens.load_model` result brings its own preprocessing and class names.  A plain ``nn.Module`` is
    put in eval mode and fed the image normalized with the ImageNet mean and std, at the image's own size (or at
    ``size``), unless ``preprocess`` says otherwise; its classes are named by ``class_names`` or by their index.

    Args:
        model: a :func:`camlens.load_model` result or any ``nn.Module`` returning class scores.
        image: a file path, PIL image, (H, W, 3) array or (3, H, W) tensor in [0, 1].
        method: any name of :data:`camlens.METHODS` (``cam``, ``gradcam``, ``scorecam``...).
        topk: explain the ``topk`` most probable classes (when ``classes`` is None).
        classes: a class index or a list of them (``[281, 285]``: both, for this image).
        layer: the layer to explain (default: found automatically; see :func:`camlens.layer_names`).
        preprocess: a callable from the (3, H, W) [0, 1] image to the (1, 3, h, w) model input; overrides the
            model's own.
        size: the model input size (H, W) or side for the default preprocessing of a plain module.
        class_names: names of the model's classes: a list, ``"imagenet"``, ``"stl10"`` or a text file.

    Returns:
        The :class:`Explanation`: predictions, raw maps, overlays and figure.
    """
    default: Preprocess | None
    if isinstance(model, LoadedModel):
        network, names, default = model.model, model.class_names, model.preprocess
        if size is not None:
            default = Preprocess(_pair(size), model.preprocess.mean, model.preprocess.std)
    elif isinstance(model, nn.Module):
        network, names, default = model.eval(), None, Preprocess(_pair(size)) if size is not None else None
    else:
        raise CamlensError(f"explain takes an nn.Module or a camlens.load_model result, not {type(model).__name__}")
    img = as_image(image)
    if default is None:  # a plain module without size: ImageNet normalization at the image's own size
        default = Preprocess((int(img.shape[-2]), int(img.shape[-1])))
    parameter = next(network.parameters(), None)
    x = (preprocess or default)(img.to(parameter.device if parameter is not None else torch.device("cpu")))
    x = x[None] if x.ndim == 3 else x
    with build_explainer(network, method, layer) as explainer:
        result = explainer(x, classes, topk=topk)
    if class_names is not None or names is None:
        names = read_class_names(class_names, result.logits.shape[1])
    return Explanation(img, result.to("cpu"), names, method)


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
