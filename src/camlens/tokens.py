"""Token models' layout, read once from the model: how many prefix tokens come before the patch tokens, the patch
grid for an input size, whether stages are channels-last, and the layer explained by default.

A ViT's layer outputs are (B, T, C) tokens, a Swin's stages (B, h, w, C) channels-last maps (timm, torchvision)
or (B, h * w, C) tokens (Hugging Face).  The layer methods need (B, C, h, w).  Shapes alone cannot tell how many
of T tokens are class, distillation or register tokens, nor the grid of a non-square input, so
:func:`token_layout` reads them from the model: timm's ``num_prefix_tokens`` and ``patch_embed``, torchvision's
``VisionTransformer`` / ``SwinTransformer``, Hugging Face ``transformers`` configs and embeddings.
``reshape=`` of the layer methods overrides it; :func:`tokens_to_grid` is the shape-inferring helper for it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Sequence

from torch import Tensor, nn

from .capture import unwrap_model
from .errors import CamlensError

PRE_ATTENTION_NORMS = ("norm1", "ln_1", "layernorm_before")  # timm, torchvision, Hugging Face


@dataclass(frozen=True)
class TokenLayout:
    """Where the patch tokens of a token model are, for one input size.

    Attributes:
        prefix: tokens before the patch tokens in a (B, T, C) sequence (class, distillation and register tokens).
        grid: (h, w), the patch grid of the input: input size // patch size.
        channels_last: stage outputs are (B, h, w, C) maps (timm and torchvision Swin).
        patch_size: (ph, pw) of the patch embedding.
        layer: the layer explained when none is given (see :func:`token_layout`), or None.
        family: what the layout was read from, for messages ("timm VisionTransformer", ...).
        stages: grids a layer output may have: 1 for a plain ViT; for hierarchical models (Swin) the patch grid
            halved (rounded up, as patch merging pads) ``stages - 1`` times.
    """

    prefix: int
    grid: tuple[int, int]
    channels_last: bool
    patch_size: tuple[int, int]
    layer: str | None
    family: str
    stages: int = 1

    @property
    def grids(self) -> list[tuple[int, int]]:
        """The (h, w) grid of each stage, finest first."""
        h, w = self.grid
        out = []
        for _ in range(self.stages):
            out.append((h, w))
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        return out

    def channel_dim(self, t: Tensor) -> int:
        """The channel axis of a layer output ``t`` as the model produces it: -1 for tokens and channels-last maps,
        1 for (B, C, h, w) maps."""
        if t.ndim == 3 or (t.ndim == 4 and self.channels_last and tuple(t.shape[1:3]) in self.grids):
            return -1
        return 1

    def to_grid(self, t: Tensor) -> Tensor:
        """A layer output as a (B, C, h, w) map on the patch grid (of its stage): (B, T, C) tokens without the
        ``prefix`` tokens laid out row by row, (B, h, w, C) permuted, (B, C, h, w) as it is.

        Raises:
            CamlensError: when ``t`` is not on a grid of this layout (e.g. a layer inside the attention, whose
                outputs are (B, heads, T, C / heads)).
        """
        grids = self.grids
        if t.ndim == 3:
            count = t.shape[1] - self.prefix
            for h, w in grids:
                if h * w == count:
                    return t[:, self.prefix :].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)
        elif t.ndim == 4:
            if self.channels_last and tuple(t.shape[1:3]) in grids:
                return t.permute(0, 3, 1, 2)
            if tuple(t.shape[2:]) in grids:
                return t
        prefix = f"{self.prefix} prefix token(s) + " if self.prefix else ""
        raise CamlensError(
            f"{self.family}: a layer output of shape {tuple(t.shape)} is not {prefix}the {self._grid_text()} patch "
            f"grid of this input; pick a layer of the token sequence (default: {self.layer}) or pass reshape="
        )

    def _grid_text(self) -> str:
        return " or ".join(f"{h}x{w}" for h, w in self.grids)


def token_layout(model: nn.Module, input_size: Sequence[int]) -> TokenLayout | None:
    """The token layout of ``model`` for inputs of spatial size ``input_size`` ((H, W), or a shape ending in it),
    read from the model's attributes (no forward pass); None for a model that is not a known token model
    (convolutional networks, Hugging Face ConvNeXt and ResNet included).

    Known: timm VisionTransformer and relatives (DeiT, EVA, DINOv2-style; ``num_prefix_tokens`` counts class,
    distillation and register tokens; the grid is ``input // patch_embed.patch_size`` with ``dynamic_img_size``,
    rounded up with ``dynamic_img_pad``, else the fixed ``patch_embed.img_size``), timm Swin (channels-last stages),
    torchvision ``VisionTransformer`` (one class token) and ``SwinTransformer``, Hugging Face ViT, DeiT (class and
    distillation tokens), DINOv2 (register tokens) and Swin built from their configs.

    The default layer of a ViT is the last block's first LayerNorm (timm ``blocks[-1].norm1``, torchvision
    ``encoder.layers[-1].ln_1``, Hugging Face ``layernorm_before`` of the last layer): the common practice
    (pytorch-grad-cam's ViT tutorial), and the last place where every patch token still feeds the prediction
    through the last attention.  The output of the last block (or the final norm) reaches a class-token head only
    through the class token, so the gradient of the score is zero on every patch token there.  Swin (mean over
    all tokens, no class token): the final norm of the last stage.

    Args:
        model: the classifier (data-parallel wrappers are looked through).
        input_size: (H, W) of the input, or its full shape.

    Returns:
        The layout, or None when ``model`` is not a token model known here.

    Raises:
        CamlensError: when the input size does not fit the model (not a multiple of the patch size, or not the
            fixed image size of the model).
    """
    model = unwrap_model(model)
    size = (int(input_size[-2]), int(input_size[-1]))
    for reader in (_timm, _torchvision, _huggingface):
        layout = reader(model, size)
        if layout is not None:
            return layout
    return None


def _pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[-1]))


def _last_named(model: nn.Module, suffixes: Sequence[str]) -> str | None:
    found = None
    for name, _ in model.named_modules():
        if name.rsplit(".", 1)[-1] in suffixes:
            found = name
    return found


def _divided(size: tuple[int, int], patch: tuple[int, int], family: str, pad: bool = False) -> tuple[int, int]:
    """The patch grid of ``size``; an error naming both sizes when the patches do not tile it (and ``pad`` is off)."""
    if not pad and (size[0] % patch[0] or size[1] % patch[1]):
        raise CamlensError(
            f"input size {size[0]}x{size[1]} is not a multiple of the patch size {patch[0]}x{patch[1]} of {family}; "
            f"resize the input to a multiple of {patch[0]}x{patch[1]}"
        )
    return math.ceil(size[0] / patch[0]), math.ceil(size[1] / patch[1])


def _fixed(size: tuple[int, int], expected: tuple[int, int], family: str, how: str) -> None:
    if size != expected:
        raise CamlensError(
            f"input size {size[0]}x{size[1]} differs from the fixed image size {expected[0]}x{expected[1]} of "
            f"{family}; resize the input to {expected[0]}x{expected[1]} ({how})"
        )


def _timm(model: nn.Module, size: tuple[int, int]) -> TokenLayout | None:
    embed = getattr(model, "patch_embed", None)
    if not isinstance(embed, nn.Module) or getattr(embed, "patch_size", None) is None:
        return None
    patch = _pair(embed.patch_size)
    prefix = getattr(model, "num_prefix_tokens", None)
    family = f"timm {type(model).__name__}"
    if isinstance(prefix, int):  # ViT, DeiT, EVA, DINOv2-style
        channels_last, stages, layer = False, 1, _last_named(model, ("norm1",))
    elif str(getattr(model, "output_fmt", "")).upper().endswith("NHWC"):  # Swin: (B, h, w, C) stages
        prefix, channels_last, layer = 0, True, "norm" if isinstance(getattr(model, "norm", None), nn.Module) else None
        stages = len(getattr(model, "layers", ())) or 1
    else:
        return None
    dynamic = bool(getattr(model, "dynamic_img_size", False))
    if not dynamic and getattr(embed, "strict_img_size", False) and getattr(embed, "img_size", None) is not None:
        _fixed(size, _pair(embed.img_size), family, "or create the model with dynamic_img_size=True")
    grid = _divided(size, patch, family, pad=dynamic and bool(getattr(embed, "dynamic_img_pad", False)))
    return TokenLayout(prefix, grid, channels_last, patch, layer, family, stages)


def _torchvision(model: nn.Module, size: tuple[int, int]) -> TokenLayout | None:
    # A torchvision ViT or Swin can only exist once its module is imported; looking it up instead of importing
    # torchvision spares every other model the import (about a second) on its first explanation.
    vit = sys.modules.get("torchvision.models.vision_transformer")
    swin = sys.modules.get("torchvision.models.swin_transformer")
    if vit is not None and isinstance(model, vit.VisionTransformer):
        family = "torchvision VisionTransformer"
        _fixed(size, (model.image_size, model.image_size), family, "torchvision's ViT takes image_size only")
        patch = _pair(model.patch_size)
        return TokenLayout(1, _divided(size, patch, family), False, patch, _last_named(model, ("ln_1",)), family)
    if swin is not None and isinstance(model, swin.SwinTransformer):
        family = "torchvision SwinTransformer"
        patch = _pair(model.features[0][0].stride)  # the patch embedding: Conv2d(kernel = stride = patch)
        return TokenLayout(0, _divided(size, patch, family), True, patch, "norm", family, len(model.features) // 2)
    return None


def _huggingface(model: nn.Module, size: tuple[int, int]) -> TokenLayout | None:
    config = getattr(model, "config", None)
    if config is None or getattr(config, "patch_size", None) is None or not hasattr(config, "model_type"):
        return None
    family = f"transformers {type(model).__name__}"
    patch = _pair(config.patch_size)
    embeddings = next((m for m in model.modules() if isinstance(getattr(m, "cls_token", None), Tensor)), None)
    if embeddings is not None:  # ViT, DeiT, DINOv2: class (+ distillation) (+ register) tokens
        registers = getattr(embeddings, "register_tokens", None)
        prefix = (
            1
            + isinstance(getattr(embeddings, "distillation_token", None), Tensor)
            + (registers.shape[1] if isinstance(registers, Tensor) else 0)
        )
        image_size = getattr(config, "image_size", None)
        if image_size is not None and config.model_type in ("vit", "deit"):
            _fixed(
                size,
                _pair(image_size),
                family,
                "called positionally, the model does not interpolate its position embeddings",
            )
        grid = _divided(size, patch, family)
        return TokenLayout(prefix, grid, False, patch, _last_named(model, ("layernorm_before",)), family)
    depths = getattr(config, "depths", None)
    if depths is not None and getattr(config, "embed_dim", None) is not None:  # Swin: (B, h * w, C) stages
        prefix_name = getattr(model, "base_model_prefix", "")
        names = dict(model.named_modules())
        layer = next((n for n in (f"{prefix_name}.layernorm", "layernorm") if n in names), None)
        return TokenLayout(0, _divided(size, patch, family), False, patch, layer, family, len(depths))
    return None


def tokens_to_grid(tokens: Tensor, input_size: Sequence[int] | None = None, prefix_tokens: int | None = None) -> Tensor:
    """Token outputs as spatial maps (B, D, h, w), for ``reshape=`` of the layer methods when the layout cannot be
    read from the model (:func:`token_layout` reads it for timm, torchvision and Hugging Face models).

    - (B, h, w, D), channels last (Swin): permuted to (B, D, h, w).
    - (B, T, D) (ViT): the first ``prefix_tokens`` (class, distillation, register tokens) are dropped and the rest
      laid out row by row on an h x w grid.  When ``prefix_tokens`` is None it is the smallest p in 0..16 such that
      T - p tokens tile a grid with the aspect ratio of ``input_size`` (H, W) (square without it), i.e. h * w = T - p
      and H * w == W * h.

    Args:
        tokens: a layer output, (B, T, D) or (B, h, w, D).
        input_size: (H, W) of the model input, for the aspect ratio of the grid.
        prefix_tokens: the tokens before the patch tokens, when known.

    Returns:
        (B, D, h, w).
    """
    if tokens.ndim == 4:
        return tokens.permute(0, 3, 1, 2)
    if tokens.ndim != 3:
        raise CamlensError(f"tokens_to_grid expects (B, T, D) tokens or (B, h, w, D) maps, got {tuple(tokens.shape)}")
    batch, count, dim = tokens.shape
    height, width = (1, 1) if input_size is None else (int(input_size[-2]), int(input_size[-1]))
    candidates = [prefix_tokens] if prefix_tokens is not None else range(min(count - 1, 16) + 1)
    for prefix in candidates:
        n = count - prefix
        h = max(1, round((n * height / width) ** 0.5))
        w = n // h
        if h * w == n and height * w == width * h and n > 1:
            return tokens[:, prefix:].reshape(batch, h, w, dim).permute(0, 3, 1, 2)
    raise CamlensError(
        f"cannot lay {count} tokens on a grid with the aspect ratio of the input {height}x{width}; "
        "pass prefix_tokens= (e.g. reshape=functools.partial(camlens.tokens_to_grid, prefix_tokens=1))"
    )


__all__ = ["TokenLayout", "token_layout", "tokens_to_grid"]
