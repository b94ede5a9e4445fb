"""vit-tiny-gap learns through ``camlens.training.train``: its convolutional stem is Xiao et al.'s (BatchNorm and
ReLU after every stride-2 3x3 convolution, then a 1x1 projection), without which the network sat at chance on the
built-in dataset for hundreds of steps."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from camlens import CamlensError
from camlens.networks import build_network
from camlens.training import TrainConfig, train


@pytest.mark.parametrize(("patch", "convs"), [(4, 2), (8, 3), (16, 4)])
def test_conv_stem_is_xiao_et_al_and_keeps_the_patch_grid(patch, convs):
    model = build_network("vit-tiny-gap", 3, img_size=64, patch_size=patch, embed_dim=32, num_heads=2, depth=1)
    stem = list(model.patch_embed.proj)
    kinds = [type(m) for m in stem]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * convs + [nn.Conv2d]
    for conv in stem[:-1:3]:
        assert conv.kernel_size == (3, 3) and conv.stride == (2, 2) and conv.bias is None
    assert stem[-1].kernel_size == (1, 1) and stem[-1].out_channels == 32
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    grid = model.patch_embed.proj(x)
    assert grid.shape == (2, 32, 64 // patch, 64 // patch)
    # the tokens are the stem's grid in row-major order
    assert torch.equal(model.patch_embed(x), grid.flatten(2).transpose(1, 2))


def test_conv_stem_refuses_a_patch_size_that_is_not_a_power_of_two():
    with pytest.raises(CamlensError, match="power of two"):
        build_network("vit-tiny-gap", 3, patch_size=6)


def test_vit_tiny_gap_fits_builtin_images_through_the_training_loop(tmp_path):
    # 80 steps on 256 images at 32 px: the loss falls well below ln 10 (to about 1.5); with the earlier stem
    # (no BatchNorm, no 1x1 projection) it was still 2.21 after the same steps.
    config = TrainConfig(
        arch="vit-tiny-gap",
        arch_options={"img_size": 32, "embed_dim": 32, "depth": 2, "num_heads": 2},
        image_size=32,
        num_train=256,
        num_val=16,
        epochs=10,
        batch_size=32,
        augment="none",
        out=str(tmp_path),
        progress=False,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a network this small gains nothing from a second thread, and a loaded machine stalls it
    try:
        result = train(config, log=None)
    finally:
        torch.set_num_threads(threads)
    losses = [h.train_loss for h in result.history]
    assert losses[0] > 2.2
    assert losses[-1] < 1.8 < math.log(10)
