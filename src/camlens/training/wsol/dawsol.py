"""DA-WSOL: WSOL as domain adaptation (Zhu et al., CVPR 2022, "Weakly Supervised Object Localization as Domain
Adaption"): the domain-adaptive localization (DAL) loss with its target sampling assigner (TSA)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...capture import GapHead, output_logits
from ...errors import CamlensError
from ...wsolnet.dawsol import CACHE, TSACache, add_cache
from ...wsolnet.placement import Taps
from .base import Param, TrainingMethod, unwrap

UNIVERSUM, SOURCE, TARGET = 0, 1, 2  # the TSA's three clusters, in the order of the authors' k-means inits


def kmeans(samples: Tensor, init: Tensor, max_iter: int = 300) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means from the given centres: (centres (k, K), labels (N,)) for samples (N, K) and ``init``
    (k, K), iterated until the assignment stops changing, as sklearn's ``k_means(init=..., n_init=1)`` that the
    authors call.  As there, a cluster left empty (two equal inits: a class seen for the first time) moves to the
    sample farthest from its own centre, the next empty one to the next farthest."""
    centers = init.clone()
    dist = torch.cdist(samples, centers)
    labels = dist.argmin(1)
    for _ in range(max_iter):
        onehot = F.one_hot(labels, len(centers)).to(samples.dtype)  # (N, k)
        sizes = onehot.sum(0)
        centers = onehot.T @ samples / sizes.clamp_min(1)[:, None]
        empty = torch.nonzero(sizes == 0)[:, 0]
        if len(empty):
            far = dist.gather(1, labels[:, None])[:, 0].argsort(descending=True)[: len(empty)]
            centers[empty] = samples[far]
        dist = torch.cdist(samples, centers)
        new = dist.argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
    return centers, labels


@dataclass
class Assignment:
    """What the TSA gives for one batch: per image b the k-means labels (B, h*w) of its pixels (0 universum,
    1 source-like, 2 target), and for the images with enough of both, the source sets (n, ``num_samples``, K:
    the image feature then ``num_samples - 1`` source-like pixels) and target sets (n, ``num_samples``, K);
    ``universum`` is every universum pixel of the batch (U, K)."""

    labels: Tensor
    source: Tensor
    target: Tensor
    universum: Tensor


def assign(
    pixels: Tensor, image: Tensor, classes: Tensor, cache: TSACache, num_samples: int, generator: torch.Generator | None
) -> Assignment:
    """The target sampling assigner of DA-WSOL for pixel features (B, K, h, w), image features (B, K) and labels
    (B,).  For each image: a class seen for the first time gets its image feature as cache centre; k-means with
    3 clusters on its h*w pixel features, started from (universum centre, image feature, class centre), splits them
    into universum, source-like and target pixels; the cache is updated with the running means
    M_c <- M_c (r_c - 1) / r_c + center_1 / r_c (r_c counting the first-seen initialization) and
    M_0 <- M_0 (r_0 - 1) / r_0 + center_0 / r_0; when it has at least ``num_samples`` target and
    ``num_samples - 1`` source-like pixels, random ones of each (``generator``) form its source and target sets.
    Clustering and cache run without gradients; the sets and the universum carry them."""
    b, k = pixels.shape[:2]
    flat = pixels.flatten(2).transpose(1, 2)  # (B, h*w, K)
    labels, sources, targets, universum = [], [], [], []
    for i in range(b):
        c = int(classes[i])
        with torch.no_grad():
            samples = flat[i].detach().float()
            if cache.counts[c] == 0:
                cache.counts[c] += 1
                cache.centers[c] = image[i].detach().float()
            init = torch.stack([cache.universe, image[i].detach().float(), cache.centers[c]])
            centers, lab = kmeans(samples, init)
            cache.counts[c] += 1
            cache.centers[c] += (centers[SOURCE] - cache.centers[c]) / cache.counts[c]
            cache.universe_count += 1
            cache.universe += (centers[UNIVERSUM] - cache.universe) / cache.universe_count
        labels.append(lab)
        universum.append(flat[i][lab == UNIVERSUM])
        src = torch.nonzero(lab == SOURCE)[:, 0]
        tgt = torch.nonzero(lab == TARGET)[:, 0]
        if len(tgt) >= num_samples and len(src) >= num_samples - 1:
            src = src[torch.randperm(len(src), generator=generator)[: num_samples - 1].to(src.device)]
            tgt = tgt[torch.randperm(len(tgt), generator=generator)[:num_samples].to(tgt.device)]
            sources.append(torch.cat([image[i][None], flat[i][src]]))
            targets.append(flat[i][tgt])
    empty = pixels.new_zeros(0, num_samples, k)
    return Assignment(
        torch.stack(labels),
        torch.stack(sources) if sources else empty,
        torch.stack(targets) if targets else empty,
        torch.cat(universum),
    )


def gaussian_kernels(x: Tensor, kernel_mul: float = 2.0, kernel_num: int = 5) -> Tensor:
    """sum_{i < kernel_num} exp(-||x_a - x_b||^2 / (s kernel_mul^i)) for all pairs of rows of x (n, K), where
    s = mean_{a != b} ||x_a - x_b||^2 / kernel_mul^(kernel_num // 2) (the bandwidth, not differentiated)."""
    d2 = torch.cdist(x, x).square()
    n = len(x)
    s = d2.detach().sum() / (n * n - n) / kernel_mul ** (kernel_num // 2)
    return sum(torch.exp(-d2 / (s * kernel_mul**i)) for i in range(kernel_num))  # type: ignore[return-value]


def mmd_linear(source: Tensor, target: Tensor) -> Tensor:
    """The linear-time MMD estimate of Gretton et al. that DA-WSOL uses, for sets of equal size n (n, K):
    (1/n) sum_i [k(s_i, s_i+1) + k(t_i, t_i+1) - k(s_i, t_i+1) - k(s_i+1, t_i)], indices mod n, with
    :func:`gaussian_kernels` on the 2n samples together."""
    n = len(source)
    kernel = gaussian_kernels(torch.cat([source, target]))
    i = torch.arange(n, device=source.device)
    j = (i + 1) % n
    return (kernel[i, j] + kernel[i + n, j + n] - kernel[i, j + n] - kernel[j, i + n]).sum() / n


@dataclass
class DAWSOL(TrainingMethod):
    """DA-WSOL (Zhu et al., CVPR 2022): image features f_img = GAP(f) are the source domain, the pixel features
    f(x, y) of the CAM feature map the target domain; the TSA (:func:`assign`) splits each image's pixels into
    universum, source-like and target sets, and the loss is

        L = CE(logits, y) + ``beta`` * mean_images MMD(S, T) + ``univer`` * mean(universum features)

    with the linear MMD of :func:`mmd_linear` over the images that have full sets (0 when none has), the
    universum term pushing background features to zero.  Nothing changes at inference: the map is the CAM.

    Defaults from the authors' code (``zh460045050/DA-WSOL_CVPR2022``, ``libs/config.py`` and the CUB ResNet50 run
    ``runs/CUB/runTrain_CUB_RES.sh``): ``beta=0.3`` (their lambda_1), ``univer=0.3`` (lambda_2, ``config.py``; their
    CUB ResNet50 run, a pretrained network, uses 2, which collapses a small network trained from scratch),
    ``sample_num_source = sample_num_target = 32`` (``num_samples``), MMD on from the first epoch (``start_epoch=0``).  Departures: clustering in torch (Lloyd's iterations, as :func:`kmeans`), random sets from the loop's
    generator, and a batch with no full set or no universum pixel adds 0 where their code divides by zero.
    The TSA's cache is a buffer module (``dawsol_cache``), so a resumed run continues it.
    """

    name: ClassVar[str] = "dawsol"
    search_space: ClassVar[dict[str, Param]] = {
        "beta": Param("loguniform", 0.03, 3.0),
        "univer": Param("loguniform", 0.03, 3.0),
    }
    beta: float = 0.3
    univer: float = 0.3
    num_samples: int = 32
    head: GapHead | None = field(default=None, init=False, repr=False)
    taps: Taps | None = field(default=None, init=False, repr=False)
    generator: torch.Generator | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not (self.beta >= 0 and self.univer >= 0):
            raise CamlensError(f"DA-WSOL: beta={self.beta} and univer={self.univer} must be >= 0")
        if int(self.num_samples) != self.num_samples or self.num_samples < 2:
            raise CamlensError(f"DA-WSOL: num_samples={self.num_samples} must be an integer >= 2")
        self.num_samples = int(self.num_samples)

    def attach(self, model: nn.Module) -> tuple[str, ...]:
        super().attach(model)
        head = add_cache(model)
        self.head, self.taps = head, Taps(model, [head.layer_name])
        return ()

    def batch(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        self.generator = generator
        return images, labels

    def loss(self, model: nn.Module, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        if self.head is None or self.taps is None:
            raise CamlensError("DA-WSOL: call attach(model) before training")
        with self.taps.recording():
            logits = output_logits(model(images))
        (features,) = self.taps.take()
        f = F.relu(features) if self.head.feature_act == "relu" else features
        cache = unwrap(model).get_submodule(CACHE)
        assert isinstance(cache, TSACache)
        found = assign(f, f.mean((-2, -1)), targets, cache, self.num_samples, self.generator)
        loss = F.cross_entropy(logits, targets)
        if len(found.source):
            loss = loss + self.beta * torch.stack([mmd_linear(s, t) for s, t in zip(found.source, found.target)]).mean()
        if len(found.universum):
            loss = loss + self.univer * found.universum.mean()
        return loss, logits
