"""A small vision transformer with a GAP head over its patch tokens, the ViT on which CAM is exact.

timm's ``VisionTransformer`` without a class token and with ``global_pool="avg"``: logits = W · LN(mean_p t_p) + b
over the patch tokens t_p of the last block, so :class:`camlens.CAM` reads the map M_c(p) = sum_k w'_k^c t_p,k on
the patch grid with mean_p M_c + b'_c = logit_c (the LayerNorm after pooling folded in, as for ConvNeXt), while the
gradient, perturbation and attention methods explain the same network.  Small enough for two CPU cores: about
370k parameters, 64 tokens at 64 px.
"""

from __future__ import annotations

from torch import nn

from ..errors import CamlensError


def vit_tiny_gap(
    num_classes: int = 1000,
    weights: str | None = None,
    *,
    img_size: int = 64,
    patch_size: int = 8,
    embed_dim: int = 96,
    depth: int = 4,
    num_heads: int = 3,
    mlp_ratio: float = 2.0,
    reg_tokens: int = 0,
    stem: str = "conv",
) -> nn.Module:
    """ViT-Tiny-GAP: patch embedding (``patch_size``, an ``img_size // patch_size`` square grid: 8x8 at 64 px),
    learned position embeddings, ``depth`` pre-norm blocks of ``num_heads`` heads and width ``embed_dim``, an MLP of
    ``mlp_ratio`` times the width, optional register tokens (Darcet et al., ICLR 2024), then the mean of the patch
    tokens -> LayerNorm -> linear.  Random initialization (timm's); there are no pretrained weights.

    ``stem="conv"`` (default) embeds the patches as Xiao et al., NeurIPS 2021, "Early Convolutions Help
    Transformers See Better" (their ViT_C stem): log2(patch_size) stride-2 3x3 convolutions, widths doubling up to
    ``embed_dim``, each followed by BatchNorm and ReLU, then one 1x1 convolution to ``embed_dim``; they find it makes
    ViTs train faster and less sensitive to the learning rate.  The normalization is what makes it train here:
    without BatchNorm and the 1x1 projection, this network's loss stayed at ln 10 for the first 450 AdamW steps on
    3000 built-in images (batch 64, lr 1e-3); with them it leaves ln 10 after about 150.  ``stem="patch"`` is the
    plain patch_size x patch_size projection.  Either way the tokens form the same patch grid.

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
        stem: ``"conv"`` or ``"patch"``, the patch embedding.

    Returns:
        The timm ``VisionTransformer``.
    """
    if weights not in (None, "none", "None"):
        raise CamlensError(
            "vit-tiny-gap has no pretrained weights; train it with `camlens train` or use --weights none"
        )
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError as err:
        raise CamlensError(
            "vit-tiny-gap is built with timm, which is not installed: pip install 'camlens[timm]'"
        ) from err
    if stem not in ("conv", "patch"):
        raise CamlensError(f"stem={stem!r}: use 'conv' or 'patch'")
    steps = patch_size.bit_length() - 1
    if stem == "conv" and (patch_size != 1 << steps or steps < 1):
        raise CamlensError(f"stem='conv' needs a patch_size that is a power of two, not {patch_size}; or stem='patch'")
    model = VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        num_classes=num_classes,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        class_token=False,
        global_pool="avg",
        reg_tokens=reg_tokens,
    )
    if stem == "conv":
        widths = [max(8, embed_dim >> (steps - i)) for i in range(1, steps + 1)]
        layers: list[nn.Module] = []
        for i, width in enumerate(widths):
            layers.append(nn.Conv2d(widths[i - 1] if i else 3, width, 3, stride=2, padding=1, bias=False))
            layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Conv2d(widths[-1], embed_dim, 1))
        model.patch_embed.proj = nn.Sequential(*layers)
    return model
