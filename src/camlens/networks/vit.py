"""A small vision transformer with a GAP head over its patch tokens, the ViT on which CAM is exact.

timm's ``VisionTransformer`` without a class token and with ``global_pool="avg"``: logits = W · LN(mean_p t_p) + b
over the patch tokens t_p of the last block, so :class:`camlens.CAM` reads the map M_c(p) = sum_k w'_k^c t_p,k on
the patch grid with mean_p M_c + b'_c = logit_c (the LayerNorm after pooling folded in, as for ConvNeXt), while the
gradient, perturbation and attention methods explain the same network.  Sized to train on the built-in 64 px
dataset in minutes on two CPU cores.
"""

from __future__ import annotations

from torch import nn

from ..capture import CamlensError


def vit_tiny_gap(num_classes: int = 1000, weights: str | None = None, *, img_size: int = 64, patch_size: int = 8,
                 embed_dim: int = 96, depth: int = 4, num_heads: int = 3, mlp_ratio: float = 2.0,
                 reg_tokens: int = 0) -> nn.Module:
    """ViT-Tiny-GAP: patch embedding (``patch_size``, an ``img_size // patch_size`` square grid: 8x8 at 64 px),
    learned position embeddings, ``depth`` pre-norm blocks of ``num_heads`` heads and width ``embed_dim``, an MLP of
    ``mlp_ratio`` times the width, optional register tokens (Darcet et al., ICLR 2024), then the mean of the patch
    tokens -> LayerNorm -> linear.  Random initialization (timm's); there are no pretrained weights.

    Args:
        num_classes: outputs of the classifier.
        weights: None or ``"none"`` (the network trains from scratch).
        img_size: input side in pixels.
        patch_size: patch side in pixels.
        embed_dim: token width.
        depth: transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width over ``embed_dim``.
        reg_tokens: register tokens (prefix tokens left out of the pooling).

    Returns:
        The timm ``VisionTransformer``.
    """
    if weights not in (None, "none", "None"):
        raise CamlensError("vit-tiny-gap has no pretrained weights; train it with `camlens train` or use --weights none")
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError as err:
        raise CamlensError("vit-tiny-gap is built with timm, which is not installed: pip install 'camlens[timm]'") from err
    return VisionTransformer(img_size=img_size, patch_size=patch_size, num_classes=num_classes, embed_dim=embed_dim,
                             depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, class_token=False,
                             global_pool="avg", reg_tokens=reg_tokens)
