"""Bridging the gap between classification and localization (Kim et al., CVPR 2022, "Bridging the Gap between
Classification and Localization for Weakly Supervised Object Localization"): feature-direction alignment and the
consistency of erased features."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...capture import GapHead, output_logits, resolve_module
from ...errors import CamlensError
from ...maps import normalize
from ...wsolnet.placement import Taps, classifier_of, probe, require_linear_head, resnet_like
from .base import Param, TrainingMethod, check_fraction, unwrap

EPS = 1e-15  # the authors' eps in the denominators of the masked means


def attentive_drop_mask(features: Tensor, threshold: float, prob: float, generator: torch.Generator | None) -> Tensor:
    """The authors' ``AttentiveDrop`` mask (B, 1, h, w) for features (B, K, h, w): with a = mean_k f_k, a pixel is 0
    where a > ``threshold`` * max a and u <= ``prob`` for its own u ~ U[0, 1) (``generator``), else 1."""
    a = features.detach().mean(1, keepdim=True)
    peak = a.amax((-2, -1), keepdim=True)
    u = torch.rand(a.shape, generator=generator, dtype=torch.float32).to(a.device)
    return ((a <= threshold * peak) | (u > prob)).to(features.dtype)


def alignment_losses(
    features: Tensor, weight: Tensor, classes: Tensor, fg_threshold: float, bg_threshold: float, norm_sign: str = "max"
) -> tuple[Tensor, Tensor]:
    """(L_sim, L_norm) of Kim et al. for CAM features f (B, K, h, w), classifier weights W (C, K) and labels y (B,).

    With s_c(x) = cos(f(x), w_c), n(x) = min-max normalized ||f(x)|| per image, mean_A the mean over pixels in A:

        L_sim  = mean_b [mean_{n < bg_threshold} s_y - mean_{n > fg_threshold} s_y]
        L_norm = mean_b [mean_{s < 0} n - mean_{s > 0} n],  s = max_c s_c (``norm_sign="max"``, their CUB code) or
                 s_y (``"target"``, their ImageNet code)

    Both are negative when the features of the object (large norm) point along w_y and background ones away; masks
    are not differentiated, and an empty mask gives a mean of 0 (eps in the denominator, as theirs)."""
    b = len(classes)
    sim = torch.einsum("bkhw,ck->bchw", F.normalize(features, dim=1), F.normalize(weight, dim=1)).flatten(2)
    norm = normalize(features.norm(dim=1)).flatten(1)  # (B, h*w)
    sim_y = sim[torch.arange(b, device=sim.device), classes]
    fg, bg = (norm > fg_threshold).to(sim.dtype), (norm < bg_threshold).to(sim.dtype)
    loss_sim = ((bg * sim_y).sum(1) / (bg.sum(1) + EPS) - (fg * sim_y).sum(1) / (fg.sum(1) + EPS)).mean()
    s = sim.amax(1) if norm_sign == "max" else sim_y
    pos, neg = (s > 0).to(norm.dtype), (s < 0).to(norm.dtype)
    loss_norm = ((neg * norm).sum(1) / (neg.sum(1) + EPS) - (pos * norm).sum(1) / (pos.sum(1) + EPS)).mean()
    return loss_sim, loss_norm


def drop_point(model: nn.Module, head: GapHead) -> str:
    """Where the features are erased: after block 0 of layer4 on a ResNet (the authors' ``layer4_1``), else before
    the last block of the ``nn.Sequential`` that ends at the CAM feature map (gapnet's ``features``)."""
    if resnet_like(model) and head.layer_name == "layer4":
        return "layer4.0"
    seq = resolve_module(model, head.layer_name)[1]
    if isinstance(seq, nn.Sequential) and len(seq) >= 2:
        return f"{head.layer_name}.{len(seq) - 2}"
    raise CamlensError(
        f"Bridging does not know where to erase features on {type(model).__name__}; give "
        f"drop_after=NAME, a block of the nn.Sequential {head.layer_name!r} ending at the CAM map"
    )


def rest_of_path(model: nn.Module, head: GapHead, drop_after: str) -> nn.Sequential:
    """The blocks that run between ``drop_after`` and the CAM feature map: those after it in the ``nn.Sequential``
    that is the CAM feature layer (an erased copy goes through the same modules and weights)."""
    parent, _, index = drop_after.rpartition(".")
    seq = resolve_module(model, parent)[1] if parent else None
    if parent != head.layer_name or not isinstance(seq, nn.Sequential) or not index.isdigit():
        raise CamlensError(
            f"Bridging: drop_after={drop_after!r} must be a block of the nn.Sequential "
            f"{head.layer_name!r} that ends at the CAM feature map"
        )
    return seq[int(index) + 1 :]


@dataclass
class Bridging(TrainingMethod):
    """Kim et al. (CVPR 2022): CAM suppresses object parts whose features point away from the class weight w_y, so
    training aligns feature directions with it.  The loss is

        L = CE + ``drop_ratio`` * |F - F_erased|_1 + [after warm-up] ``sim_ratio`` * L_sim + ``norm_ratio`` * L_norm

    where F is the CAM feature map and F_erased the same network's features when the output of ``drop_after`` is
    erased by :func:`attentive_drop_mask` (``drop_threshold``, ``drop_prob``) and run through the rest of the path
    (mean absolute difference, both differentiated), and L_sim, L_norm are :func:`alignment_losses`
    (``fg_threshold``, ``bg_threshold``, ``norm_sign``).  During the first ``warm_epochs`` epochs only CE and the
    consistency term train.  Nothing changes at inference: the map is the CAM of the network's classifier.

    Defaults from the authors' ResNet50 CUB config (``ejkim47/bridging-gap-wsol``, ``configs/config_exp.yaml``):
    ``loss_ratio_sim=0.5``, ``sim_fg_thres=0.4``, ``sim_bg_thres=0.2``, ``loss_ratio_norm=0.05``,
    ``loss_ratio_drop=2.0``, ``drop_threshold=0.8``, ``drop_prob=0.25``, ``warm_epochs=20`` (of 70).  Their VGG16
    config: fg 0.6, bg 0.1, norm 0.15, drop 3.0, drop_prob 0.5.  Erasure after ``layer4.0`` on ResNets (their
    ``layer4_1``); on other networks before the last block of the CAM feature layer.
    """

    name: ClassVar[str] = "bridging"
    search_space: ClassVar[dict[str, Param]] = {
        "sim_ratio": Param("loguniform", 0.05, 5.0),
        "norm_ratio": Param("loguniform", 0.005, 0.5),
        "drop_ratio": Param("loguniform", 0.2, 20.0),
        "drop_threshold": Param("uniform", 0.0, 1.0),
        "drop_prob": Param("uniform", 0.0, 1.0),
    }
    sim_ratio: float = 0.5
    norm_ratio: float = 0.05
    drop_ratio: float = 2.0
    fg_threshold: float = 0.4
    bg_threshold: float = 0.2
    drop_threshold: float = 0.8
    drop_prob: float = 0.25
    warm_epochs: int = 20
    norm_sign: str = "max"
    drop_after: str | None = None
    head: GapHead | None = field(default=None, init=False, repr=False)
    taps: Taps | None = field(default=None, init=False, repr=False)
    rest: nn.Sequential | None = field(default=None, init=False, repr=False)
    epoch: int = field(default=0, init=False, repr=False)
    generator: torch.Generator | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("fg_threshold", "bg_threshold", "drop_threshold", "drop_prob"):
            check_fraction("Bridging", name, getattr(self, name))
        if min(self.sim_ratio, self.norm_ratio, self.drop_ratio) < 0:
            raise CamlensError("Bridging: sim_ratio, norm_ratio and drop_ratio must be >= 0")
        if self.norm_sign not in ("max", "target"):
            raise CamlensError(f"Bridging: norm_sign={self.norm_sign!r}; choose max or target")
        if int(self.warm_epochs) != self.warm_epochs or self.warm_epochs < 0:
            raise CamlensError(f"Bridging: warm_epochs={self.warm_epochs} must be a whole number >= 0")
        self.warm_epochs = int(self.warm_epochs)

    def attach(self, model: nn.Module) -> tuple[str, ...]:
        super().attach(model)
        head = probe(model).head
        require_linear_head("Bridging", head)
        after = self.drop_after or drop_point(model, head)
        self.rest = rest_of_path(model, head, after)
        self.head, self.taps = head, Taps(model, [after, head.layer_name])
        return ()

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batch(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        self.generator = generator
        return images, labels

    def loss(self, model: nn.Module, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        if self.head is None or self.taps is None or self.rest is None:
            raise CamlensError("Bridging: call attach(model) before training")
        with self.taps.recording():
            logits = output_logits(model(images))
        middle, features = self.taps.take()
        erased = self.rest(middle * attentive_drop_mask(middle, self.drop_threshold, self.drop_prob, self.generator))
        act = F.relu if self.head.feature_act == "relu" else (lambda t: t)
        f = act(features)
        loss = F.cross_entropy(logits, targets) + self.drop_ratio * F.l1_loss(f, act(erased))
        if self.epoch >= self.warm_epochs:
            weight = classifier_of(unwrap(model), self.head).weight
            assert isinstance(weight, Tensor)
            loss_sim, loss_norm = alignment_losses(
                f, weight.flatten(1), targets, self.fg_threshold, self.bg_threshold, self.norm_sign
            )
            loss = loss + self.sim_ratio * loss_sim + self.norm_ratio * loss_norm
        return loss, logits
