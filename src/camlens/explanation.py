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
from typing import TYPE_CHECKING, Union

import numpy as np
from PIL import Image
from torch import Tensor

from .data.images import as_image
from .errors import CamlensError
from .methods.base import CAMResult, ClassSpec
from .models import LoadedModel
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

    def figure(self, k: int = 0) -> "Figure":
        """The three-panel figure (raw map, resized map, overlay) of the ``k``-th explained class."""
        name, prob = self.predictions[k]
        return three_panel(self.image, self._map(k), title=f"{self.method}: {name} ({prob:.1%})")

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
            cells.append(f'<figure style="display:inline-block;margin:0 6px 0 0"><img src="{src}">'
                         f"<figcaption>{html.escape(name)} {prob:.1%}</figcaption></figure>")
        return f"<div><b>{html.escape(self.method)}</b><br>{''.join(cells)}</div>"


def explain(
    model: LoadedModel,
    image: ImageLike,
    *,
    method: str = "cam",
    topk: int = 1,
    classes: ClassSpec = None,
    layer: str | None = None,
) -> Explanation:
    """Explain ``image`` (a file, PIL image, array or (3, H, W) tensor in [0, 1]) with ``method`` (any name of
    :data:`camlens.METHODS`) for the ``topk`` most probable classes or the given ``classes``, through the model's
    own preprocessing.

    Args:
        model: a model from :func:`camlens.load_model` (it carries preprocessing and class names).
        image: a file, PIL image, array or (3, H, W) tensor in [0, 1].
        method: the method's name (``"cam"``, ``"gradcam"``, ...); CAM on a WSOL-trained network is its method's map.
        topk: how many of the most probable classes to explain when ``classes`` is None.
        classes: the class indices to explain instead.
        layer: the target layer's name, or None for the method's default.

    Returns:
        The :class:`Explanation` of the image.
    """
    if not isinstance(model, LoadedModel):
        raise CamlensError("explain takes a model from camlens.load_model (it carries preprocessing and class names)")
    img = as_image(image)
    device = next(model.model.parameters()).device
    x = model.preprocess(img.to(device))
    with build_explainer(model.model, method, layer) as explainer:
        result = explainer(x, classes, topk=topk)
    return Explanation(img, result.to("cpu"), model.class_names, method)
