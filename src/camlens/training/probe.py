"""The CAM paper's generic localization (Zhou et al., CVPR 2016, Section 4): a frozen GAP network, a linear
classifier fitted on its pooled features, and class maps from the fitted weights.

One pass over the training images extracts z = the classifier's input (mean_xy of the feature map, after the
network's own ReLU or LayerNorm when it has one); multinomial logistic regression is then fitted on z, in float64
by full-batch L-BFGS, minimizing

    (1/N) sum_i -log softmax(W z_i + b)_{y_i} + ||W||^2 / (2 C N)

which is scikit-learn's ``LogisticRegression(C=C)`` objective (C * sum of losses + ||W||^2 / 2, intercept not
penalized) divided by C N: the same minimizer.  :func:`linear_probe` standardizes z first (and folds the scaling
back into W, b), as a scikit-learn pipeline with ``StandardScaler`` would.  (The paper fits a linear SVM; the logistic loss gives
probabilities and a smooth problem.)  The fitted W, b replace the classifier, so logit_c = mean_xy(M_c) + b_c
with M_c = sum_k w_k^c f_k, and ``camlens.CAM`` reads the maps of the new classes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..capture import LayerCapture, locate_gap_head, resolve_module
from ..errors import CamlensError
from ..networks._common import replace_module

PROBE = "probe.safetensors"


@torch.no_grad()
def pooled_features(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    preprocess: Callable[[Tensor], Tensor] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor, str]:
    """(z (N, K) float64, labels (N,), classifier name): the input of ``model``'s classifier for every image of
    ``batches`` ((images, labels) pairs; ``preprocess`` applied to the images), in eval mode.  For a 1x1-conv
    classifier applied before the pooling (SqueezeNet, Choe et al.'s InceptionV3) z is the spatial mean of its
    input, exact because that classifier is linear."""
    model.eval().to(device)
    capture: LayerCapture | None = None
    pooled_last = False
    name = ""
    rows: list[Tensor] = []
    labels: list[Tensor] = []
    try:
        for images, y in batches:
            x = images.to(device)
            x = preprocess(x) if preprocess is not None else x
            if capture is None:
                head = locate_gap_head(model, x[:1])[0]
                if head.pooled_last and head.class_act == "relu":
                    raise CamlensError(
                        f"{type(model).__name__}: its classifier {head.classifier_name!r} is followed "
                        "by a ReLU before the pooling, so a linear probe cannot replace it exactly"
                    )
                name, pooled_last = head.classifier_name, head.pooled_last
                capture = LayerCapture(resolve_module(model, name)[1], where="input")
            model(x)
            z = capture.pop()
            rows.append((z.mean((-2, -1)) if pooled_last else z.flatten(1)).double().cpu())
            labels.append(y.cpu())
    finally:
        if capture is not None:
            capture.close()
    if not rows:
        raise CamlensError("the linear probe got no training images")
    return torch.cat(rows), torch.cat(labels).long(), name


def fit_logistic(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    C: float = 1.0,
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> tuple[Tensor, Tensor, int]:
    """(W (num_classes, K), b (num_classes,), iterations) of L2-regularized multinomial logistic regression, the
    objective of the module docstring, by L-BFGS with a strong-Wolfe line search in float64, stopped when every
    partial derivative of the objective is at most ``tol`` (scikit-learn's default for the same objective: 1e-4)
    or after ``max_iter`` iterations.  b is centered
    (softmax ignores a shift shared by all classes; the penalty fixes W, not b)."""
    if C <= 0:
        raise CamlensError(f"C={C} must be positive (the inverse of the L2 regularization strength)")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise CamlensError(f"labels must be in 0..{num_classes - 1}, got {int(labels.min())}..{int(labels.max())}")
    x = features.double()
    y = labels.long().to(x.device)
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    strength = 1.0 / (C * x.shape[0])
    solver = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tol,
        tolerance_change=1e-15,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def objective() -> Tensor:
        solver.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + 0.5 * strength * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        solver.step(objective)
    iterations = int(solver.state[weight].get("n_iter", 0))
    b = bias.detach()
    return weight.detach(), b - b.mean(), iterations


@dataclass
class ProbeResult:
    """The probed network (the fitted classifier in place of the old one, eval mode) and what the fit took."""

    model: nn.Module
    classifier: str
    train_accuracy: float
    num_images: int
    iterations: int
    extract_seconds: float
    fit_seconds: float


def linear_probe(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    num_classes: int,
    *,
    preprocess: Callable[[Tensor], Tensor] | None = None,
    C: float = 1.0,
    standardize: bool = True,
    device: str | torch.device = "cpu",
    max_iter: int = 1000,
) -> ProbeResult:
    """Fit a new linear classifier with ``num_classes`` outputs on the frozen features of the GAP network
    ``model`` (see the module docstring) and put it in place of ``model``'s classifier, a ``Linear`` (or a 1x1
    ``Conv2d`` where the old classifier was one); the backbone is not changed.

    ``standardize``: fit on z' = (z - mu) / sigma (per feature, over the training images; sigma = 1 where a
    feature is constant), as scikit-learn's ``StandardScaler`` would, so ``C`` does not depend on the scale of
    the features; the fit is then folded back exactly, W = W' / sigma and b = b' - W mu."""
    began = time.perf_counter()
    z, y, name = pooled_features(model, batches, preprocess=preprocess, device=device)
    extracted = time.perf_counter()
    mu, sigma = z.mean(0), z.std(0, unbiased=False)
    sigma = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    if not standardize:
        mu, sigma = torch.zeros_like(mu), torch.ones_like(sigma)
    scaled, bias, iterations = fit_logistic((z - mu) / sigma, y, num_classes, C=C, max_iter=max_iter)
    weight = scaled / sigma
    bias = bias - weight @ mu
    fitted = time.perf_counter()
    old = resolve_module(model, name)[1]
    like = getattr(old, "weight")
    k = weight.shape[1]
    new = nn.Linear(k, num_classes) if isinstance(old, nn.Linear) else nn.Conv2d(k, num_classes, 1)
    with torch.no_grad():
        new.weight.copy_(weight.view_as(new.weight))
        assert new.bias is not None
        new.bias.copy_(bias)
    replace_module(model, name, new.to(like.device, like.dtype).eval())
    accuracy = float(((z @ weight.T + bias).argmax(1) == y).double().mean())
    return ProbeResult(model, name, accuracy, int(y.numel()), iterations, extracted - began, fitted - extracted)


@dataclass
class ProbeRun:
    checkpoint: Path
    val_accuracy: float
    result: ProbeResult


def run_linear_probe(
    data: str = "builtin",
    *,
    checkpoint: str | Path | None = None,
    arch: str = "gapnet",
    weights: str | None = None,
    out: str | Path = "camlens-train",
    image_size: int | None = None,
    num_train: int | None = None,
    num_val: int | None = None,
    batch_size: int = 64,
    C: float = 1.0,
    standardize: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    workers: int = 0,
    log: Callable[[str], None] | None = print,
) -> ProbeRun:
    """``camlens train --linear-probe``: probe the GAP network of ``checkpoint`` (or ``arch`` with ``weights``)
    on the training split of ``data`` (as ``camlens train`` reads it), report validation accuracy, and write
    ``out/probe.safetensors``, a checkpoint that describes itself (arch, builder options, classes, preprocessing
    and the probe's settings)."""
    from ..distributed import Context
    from ..models import Preprocess, build_model, load_model, save_checkpoint
    from .data import global_batches, load_batches, load_data
    from .loop import accuracy

    say = log or (lambda _: None)
    torch.manual_seed(seed)
    if checkpoint is not None:
        loaded = load_model(checkpoint, device=device)
        model, arch, base = loaded.model, loaded.arch, loaded.preprocess
        size: int | None = image_size or base.size[0]
    else:
        model, base, size = build_model(arch, None, weights), Preprocess(), image_size
    td = load_data(data, image_size=size, seed=seed, num_train=num_train, num_val=num_val, augment="none")
    preprocess = Preprocess((td.image_size, td.image_size), base.mean, base.std)
    batches = global_batches(torch.arange(len(td.train)), batch_size)
    result = linear_probe(
        model,
        load_batches(td.train, batches, workers),
        len(td.classes),
        preprocess=preprocess,
        C=C,
        standardize=standardize,
        device=device,
    )
    val_accuracy = accuracy(model, td.val, preprocess, Context(0, 1, 0, torch.device(device)), workers=workers)
    settings = {
        "C": C,
        "standardize": standardize,
        "backbone": str(checkpoint) if checkpoint is not None else f"{arch} ({weights or 'random'})",
        "classifier": result.classifier,
        "train_images": result.num_images,
        "train_acc": result.train_accuracy,
        "val_acc": val_accuracy,
        "iterations": result.iterations,
        "seconds": result.extract_seconds + result.fit_seconds,
    }
    path = save_checkpoint(
        Path(out) / PROBE,
        model.to(memory_format=torch.contiguous_format),
        arch=arch,
        class_names=td.classes,
        preprocess=preprocess,
        extra={"linear_probe": settings, "data": td.name},
    )
    say(
        f"linear probe on {result.num_images} images: features {result.extract_seconds:.1f}s, fit "
        f"{result.fit_seconds:.2f}s ({result.iterations} L-BFGS iterations); train acc {result.train_accuracy:.2%}, "
        f"val acc {val_accuracy:.2%}"
    )
    return ProbeRun(path, val_accuracy, result)
