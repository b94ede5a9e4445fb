"""What a layer method explains: built-in targets, each a small named object turning a model output into one score
per output row, beside any callable ``output -> (B,)``.

A target is called as ``target(output, rows)`` and returns a tensor of shape (R,), one score per row of
``output``; ``rows[r]`` is the source sample (0..B-1) of output row r.  Gradient methods pass the batch itself
(``rows = arange(B)``); Score-CAM, SS-CAM, IS-CAM and Ablation-CAM run masked or ablated copies of several images
in one batch, so a target that depends on the image (a box or a mask per image) reads its data for row r at
``rows[r]``.  ``bind(output, x)`` is called once on the unperturbed output and input: it checks that the target
fits the model output and freezes what it reads from it (the pixels predicted as a class, the positive labels),
so every perturbed copy is scored against the same thing.

- classification: :class:`Logit`, :class:`Softmax`, :class:`Sigmoid`; multi-label: :class:`PositiveLabels`
  (one map per label whose sigmoid reaches a threshold);
- regression: :class:`Regression`;
- semantic segmentation (torchvision's ``{"out": (B, C, H, W)}`` or a plain tensor): :class:`Segmentation`;
- detection (torchvision's Faster R-CNN, RetinaNet, FCOS: a list of ``{"boxes", "labels", "scores"}``):
  :class:`Detection`.  Eigen-CAM needs no score at all, so it is the gradient-free choice for detectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, Union

import torch
from torch import Tensor, nn

from .capture import output_logits
from .errors import CamlensError

PerSample = Union[int, Sequence[int], Tensor]


class Target:
    """Base of the built-in targets: ``target(output, rows)`` -> (R,) scores; see the module docstring."""

    def bind(self, output: Any, x: Tensor) -> list["Target"]:
        """The targets explained for the unperturbed ``output`` of input ``x``; raises :class:`CamlensError` when
        this target does not fit the output."""
        return [self]

    def classes(self, batch: int, device: torch.device) -> Tensor:
        """The class explained for each sample, (B,) long; -1 where the target has no class."""
        return torch.full((batch,), -1, dtype=torch.long, device=device)

    def valid(self, batch: int, device: torch.device) -> Tensor | None:
        """(B,) bool: False where the target explains nothing for that sample (its map is zero); None: all."""
        return None

    def __call__(self, output: Any, rows: Tensor) -> Tensor:
        raise NotImplementedError


def _per_sample(value: PerSample, batch: int, name: str, device: torch.device) -> Tensor:
    table = torch.as_tensor(value, dtype=torch.long, device=device)
    if table.ndim == 0:
        return table.expand(batch)
    if table.shape != (batch,):
        raise CamlensError(f"{name} has shape {tuple(table.shape)}; give one value, or one per sample ({batch})")
    return table


def _logits(output: Any, what: str) -> Tensor:
    logits = output_logits(output)
    if logits.ndim != 2:
        raise CamlensError(f"{what} needs (batch, classes) scores; the model output has shape {tuple(logits.shape)}")
    return logits


class _ClassScore(Target):
    """A function of the class scores of one class per sample; class -1 explains nothing (score 0)."""

    def __init__(self, category: PerSample | None = None) -> None:
        self.category = category

    def bind(self, output: Any, x: Tensor) -> list[Target]:
        logits = _logits(output, type(self).__name__)
        if self.category is None:  # the top class of each sample
            return [type(self)(logits.detach().argmax(1))]
        table = _per_sample(self.category, x.shape[0], "category", logits.device)
        if table.numel() and (table.max() >= logits.shape[1] or table.min() < -1):
            raise CamlensError(
                f"{type(self).__name__}: class {int(table.max())} is out of range: the model has "
                f"{logits.shape[1]} classes (0..{logits.shape[1] - 1})"
            )
        return [type(self)(table)]

    def classes(self, batch: int, device: torch.device) -> Tensor:
        if self.category is None:
            return super().classes(batch, device)
        return _per_sample(self.category, batch, "category", device)

    def valid(self, batch: int, device: torch.device) -> Tensor:
        return self.classes(batch, device) >= 0

    def __call__(self, output: Any, rows: Tensor) -> Tensor:
        if self.category is None:
            raise CamlensError(
                f"{type(self).__name__}() without a class is bound to the unperturbed output first (explainers do this)"
            )
        logits = output_logits(output)
        category = torch.as_tensor(self.category, dtype=torch.long, device=logits.device)
        category = category.expand(len(rows)) if category.ndim == 0 else category[rows.to(logits.device)]
        score = self._scores(logits).gather(1, category.clamp_min(0)[:, None])[:, 0]
        return torch.where(category >= 0, score, torch.zeros_like(score))

    def _scores(self, logits: Tensor) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        category = self.category.tolist() if isinstance(self.category, Tensor) else self.category
        return f"{type(self).__name__}({category!r})"


class Logit(_ClassScore):
    """y = z_c, the raw logit of class c (per sample when ``category`` has one entry per sample; None: each
    sample's top class on the unperturbed output)."""

    def _scores(self, logits: Tensor) -> Tensor:
        return logits


class Softmax(_ClassScore):
    """y = exp(z_c) / sum_j exp(z_j), the softmax probability of class c."""

    def _scores(self, logits: Tensor) -> Tensor:
        return logits.softmax(-1)


class Sigmoid(_ClassScore):
    """y = 1 / (1 + exp(-z_c)), the independent probability of label c (multi-label classifiers)."""

    def _scores(self, logits: Tensor) -> Tensor:
        return logits.sigmoid()


class PositiveLabels(Target):
    """Multi-label: one :class:`Sigmoid` target per label whose probability sigmoid(z_c) >= ``threshold`` on the
    unperturbed output.  Slot n explains the n-th positive label of each sample, in increasing class order;
    samples with fewer positive labels get class -1 there (a zero map; at least one slot)."""

    def __init__(self, threshold: float = 0.5) -> None:
        if not 0.0 < threshold < 1.0:
            raise CamlensError(f"threshold={threshold} must be between 0 and 1 (a sigmoid probability)")
        self.threshold = threshold

    def bind(self, output: Any, x: Tensor) -> list[Target]:
        positive = _logits(output, "PositiveLabels").detach().float().sigmoid() >= self.threshold
        count = positive.sum(1)
        slots = max(1, int(count.max())) if len(count) else 1
        # stable sort puts each sample's positive labels first, in class order
        order = torch.sort((~positive).to(torch.uint8), dim=1, stable=True).indices[:, :slots]
        table = torch.where(torch.arange(slots, device=order.device) < count[:, None], order, -1)
        return [Sigmoid(table[:, n]) for n in range(slots)]

    def __repr__(self) -> str:
        return f"PositiveLabels({self.threshold})"


class Regression(Target):
    """y = the model output itself: of shape (B,) or (B, 1), or column ``index`` of a (B, D) output."""

    def __init__(self, index: int | None = None) -> None:
        self.index = index

    def bind(self, output: Any, x: Tensor) -> list[Target]:
        self(output, torch.arange(x.shape[0]))
        return [self]

    def __call__(self, output: Any, rows: Tensor) -> Tensor:
        y = output_logits(output)
        if y.ndim == 1:
            return y
        if y.ndim == 2 and self.index is None and y.shape[1] == 1:
            return y[:, 0]
        if y.ndim == 2 and self.index is not None and -y.shape[1] <= self.index < y.shape[1]:
            return y[:, self.index]
        need = "an index" if self.index is None else f"index {self.index} to be in range"
        raise CamlensError(
            f"Regression: the model output has shape {tuple(y.shape)}; that needs {need} "
            "(one column of a (batch, D) output)"
        )

    def __repr__(self) -> str:
        return f"Regression({self.index!r})"


def _segment_scores(output: Any) -> Tensor:
    out = output_logits(output)
    if out.ndim != 4:
        raise CamlensError(
            f"Segmentation needs per-pixel class scores (batch, classes, H, W), as torchvision's "
            f"segmentation models return in 'out'; the model output has shape {tuple(out.shape)}"
        )
    return out


class Segmentation(Target):
    """Semantic segmentation: y = sum_{(i,j) in S} z_c(i, j), the class-c scores summed over a region S.

    ``mask``: S as a (H, W) or per-sample (B, H, W) tensor at the output's resolution (bool, or float weights);
    None: the pixels predicted as c on the unperturbed output (argmax over classes), frozen there so that every
    perturbed copy sums over the same pixels.  A sample whose region is empty explains nothing (a zero map)."""

    def __init__(self, category: int, mask: Tensor | None = None) -> None:
        self.category = category
        self.mask = mask

    def bind(self, output: Any, x: Tensor) -> list[Target]:
        out = _segment_scores(output)
        if not 0 <= self.category < out.shape[1]:
            raise CamlensError(
                f"Segmentation: class {self.category} is out of range: the model segments "
                f"{out.shape[1]} classes (0..{out.shape[1] - 1})"
            )
        if self.mask is None:
            return [Segmentation(self.category, out.detach().argmax(1) == self.category)]
        mask = self.mask.to(out.device)
        if mask.ndim == 2:
            mask = mask.expand(out.shape[0], *mask.shape)
        if mask.shape != (out.shape[0], *out.shape[-2:]):
            raise CamlensError(
                f"Segmentation: the mask has shape {tuple(self.mask.shape)}; give (H, W) or (B, H, W) "
                f"at the output's resolution {tuple(out.shape[-2:])}"
            )
        return [Segmentation(self.category, mask)]

    def classes(self, batch: int, device: torch.device) -> Tensor:
        return torch.full((batch,), self.category, dtype=torch.long, device=device)

    def valid(self, batch: int, device: torch.device) -> Tensor | None:
        return None if self.mask is None or self.mask.ndim != 3 else self.mask.flatten(1).any(1).to(device)

    def __call__(self, output: Any, rows: Tensor) -> Tensor:
        out = _segment_scores(output)
        if self.mask is None:
            raise CamlensError("Segmentation(mask=None) is bound to the unperturbed output first (explainers do this)")
        mask = self.mask.to(out.device)
        mask = mask[rows.to(out.device)] if mask.ndim == 3 else mask
        return (out[:, self.category] * mask.to(out.dtype)).sum((-2, -1))

    def __repr__(self) -> str:
        return f"Segmentation({self.category!r}, mask={'predicted' if self.mask is None else 'given'})"


def _box_iou(box: Tensor, boxes: Tensor) -> Tensor:
    """IoU of one box (4,) with boxes (P, 4), [x0, y0, x1, y1] with exclusive right/bottom edges."""
    lo = torch.maximum(box[:2], boxes[:, :2])
    hi = torch.minimum(box[2:], boxes[:, 2:])
    inter = (hi - lo).clamp_min(0).prod(1)
    area = (box[2:] - box[:2]).prod()
    areas = (boxes[:, 2:] - boxes[:, :2]).clamp_min(0).prod(1)
    return inter / (area + areas - inter)


def _detections(output: Any) -> Sequence[dict]:
    if not (
        isinstance(output, (list, tuple))
        and all(isinstance(d, dict) and all(k in d for k in ("boxes", "labels", "scores")) for d in output)
    ):
        raise CamlensError(
            f"Detection needs a detector's output, a list of dicts with 'boxes', 'labels' and "
            f"'scores' per image (torchvision's Faster R-CNN, RetinaNet, FCOS in eval mode); the "
            f"model returned {type(output).__name__}"
        )
    return output


class Detection(Target):
    """Detection: y = s_j, the score of the predicted box j of class c that best matches the given box b, i.e.
    j = argmax IoU(b, box_j) over the boxes labelled c, when that IoU reaches ``min_iou`` (y = 0 otherwise: the
    perturbed copy lost the detection).

    ``box``: [x0, y0, x1, y1] in the model input's pixel coordinates, one (4,) for every sample or (B, 4);
    ``category``: one class or one per sample.  A sample without a match on the unperturbed output explains
    nothing (a zero map).  Eigen-CAM (no score, no gradient) is the gradient-free alternative for detectors."""

    def __init__(self, box: Sequence[float] | Tensor, category: PerSample, min_iou: float = 0.5) -> None:
        self.box = torch.as_tensor(box, dtype=torch.float32)
        if self.box.shape[-1:] != (4,) or self.box.ndim > 2:
            raise CamlensError(f"Detection: box has shape {tuple(self.box.shape)}; give [x0, y0, x1, y1] or (B, 4)")
        self.category = category
        self.min_iou = min_iou
        self._matched: Tensor | None = None

    def bind(self, output: Any, x: Tensor) -> list[Target]:
        detections = _detections(output)
        batch = x.shape[0]
        if len(detections) != batch:
            raise CamlensError(f"Detection: the model returned {len(detections)} detection sets for {batch} images")
        boxes = self.box.expand(batch, 4) if self.box.ndim == 1 else self.box
        if boxes.shape[0] != batch:
            raise CamlensError(f"Detection: {boxes.shape[0]} boxes given for {batch} images")
        height, width = x.shape[-2:]
        for b in boxes.tolist():
            if not (0 <= b[0] < b[2] <= width and 0 <= b[1] < b[3] <= height):
                raise CamlensError(
                    f"Detection: box {b} is empty or lies outside the {width}x{height} input "
                    "([x0, y0, x1, y1] with 0 <= x0 < x1 <= W, 0 <= y0 < y1 <= H)"
                )
        bound = Detection(boxes, _per_sample(self.category, batch, "category", torch.device("cpu")), self.min_iou)
        with torch.no_grad():
            bound._matched = bound(output, torch.arange(batch)) > 0
        return [bound]

    def classes(self, batch: int, device: torch.device) -> Tensor:
        return _per_sample(self.category, batch, "category", device)

    def valid(self, batch: int, device: torch.device) -> Tensor | None:
        return None if self._matched is None else self._matched.to(device)

    def __call__(self, output: Any, rows: Tensor) -> Tensor:
        detections = _detections(output)
        category = torch.as_tensor(self.category, dtype=torch.long)
        scores = []
        for r, source in enumerate(rows.tolist()):
            found = detections[r]
            box = (self.box if self.box.ndim == 1 else self.box[source]).to(found["boxes"].device)
            label = int(category if category.ndim == 0 else category[source])
            keep = (found["labels"] == label).nonzero()[:, 0]
            zero = found["scores"].sum() * 0  # keeps the graph, so a lost detection still has a gradient (zero)
            if len(keep):
                iou = _box_iou(box, found["boxes"][keep].detach().to(box.dtype))
                best = int(iou.argmax())
                if iou[best] >= self.min_iou:
                    scores.append(found["scores"][keep[best]] + zero)
                    continue
            scores.append(zero)
        return torch.stack(scores) if scores else torch.zeros(0)

    def __repr__(self) -> str:
        return f"Detection({self.box.tolist()}, {self.category!r}, min_iou={self.min_iou})"


def bind_targets(targets: Sequence[Any], output: Any, x: Tensor) -> list[Any]:
    """Each built-in target bound to the unperturbed output (see :meth:`Target.bind`); callables as given."""
    bound: list[Any] = []
    for target in targets:
        bound.extend(target.bind(output, x) if isinstance(target, Target) else [target])
    return bound


def default_layer(model: nn.Module) -> str | None:
    """The layer explained by default in torchvision's detection and segmentation models: the last stage of the
    backbone (``backbone.body.layer4`` for ResNet-FPN detectors, ``backbone.layer4`` for DeepLabV3 / FCN), whose
    output is one feature map per image; None for other models (automatic search)."""
    backbone: Any = getattr(model, "backbone", None)
    path, module = ("backbone.body", backbone.body) if hasattr(backbone, "body") else ("backbone", backbone)
    children = list(module.named_children()) if isinstance(module, nn.Module) else []
    return f"{path}.{children[-1][0]}" if children else None


def set_box_threshold(model: nn.Module, threshold: float) -> None:
    """Keep the predicted boxes scoring at least ``threshold`` in a torchvision detector (Faster R-CNN's
    ``roi_heads.score_thresh``, RetinaNet's and FCOS's ``score_thresh``): a weak detection can then be explained."""
    owner = getattr(model, "roi_heads", model)
    if not hasattr(owner, "score_thresh"):
        raise CamlensError(f"{type(model).__name__} is not a torchvision detector: it has no box score threshold")
    owner.score_thresh = threshold


@dataclass(frozen=True)
class TargetRecipe:
    """A target named on the command line or the web page, built per batch from each image's size (boxes are
    given in the original image's pixels and scaled to the model input).  Parse with :func:`parse_target`."""

    kind: str  # logit, softmax, sigmoid, labels, regression, segment, box
    category: int | None = None
    threshold: float = 0.5
    index: int | None = None
    box: tuple[float, float, float, float] | None = None

    def check(self, width: int, height: int) -> None:
        """Raise :class:`CamlensError` when the target cannot apply to an image of this size."""
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
                raise CamlensError(f"box {list(self.box)} is empty or lies outside the {width}x{height} image")

    def build(self, sizes: Sequence[tuple[int, int]], input_size: Sequence[int]) -> Target:
        """The target for a batch of images of (width, height) ``sizes`` fed to the model at ``input_size``
        (H, W).  Classification kinds without a class explain the top class (or ``classes=``) per sample."""
        if self.kind == "labels":
            return PositiveLabels(self.threshold)
        if self.kind == "regression":
            return Regression(self.index)
        if self.kind == "segment":
            return Segmentation(int(self.category or 0))
        if self.kind == "box":
            assert self.box is not None and self.category is not None
            height, width = int(input_size[-2]), int(input_size[-1])
            scale = torch.tensor([[width / w, height / h, width / w, height / h] for w, h in sizes])
            return Detection(torch.tensor(self.box) * scale, self.category)
        return {"logit": Logit, "softmax": Softmax, "sigmoid": Sigmoid}[self.kind](self.category)


KINDS = ("logit[:C]", "softmax[:C]", "sigmoid[:C]", "labels[:T]", "regression[:I]", "segment:C", "box:C:x0,y0,x1,y1")


def parse_target(spec: str, class_names: Sequence[str] | None = None) -> TargetRecipe:
    """A target from text: ``logit:C``, ``softmax:C``, ``sigmoid:C`` (C a class index or name; without it the
    classes asked for otherwise), ``labels[:T]`` (multi-label: every label with sigmoid >= T, default 0.5),
    ``regression[:I]`` (the output, or its column I), ``segment:C`` (segmentation: class C's scores over the
    pixels predicted as C), ``box:C:x0,y0,x1,y1`` (detection: the score of the predicted box of class C that
    best matches that box, in the image's pixels)."""
    kind, _, rest = spec.strip().partition(":")
    kind = kind.lower()
    usage = f"--target {spec!r}: use one of {', '.join(KINDS)}"

    def category(text: str) -> int:
        if class_names is not None and text in class_names:
            return list(class_names).index(text)
        try:
            value = int(text)
        except ValueError:
            raise CamlensError(f"--target {spec!r}: {text!r} is neither a class index nor a class name") from None
        if value < 0 or (class_names is not None and value >= len(class_names)):
            count = "" if class_names is None else f": the model has {len(class_names)} classes"
            raise CamlensError(f"--target {spec!r}: class {value} is out of range{count}")
        return value

    if kind in ("logit", "softmax", "sigmoid"):
        return TargetRecipe(kind, category(rest) if rest else None)
    if kind == "labels":
        try:
            threshold = float(rest) if rest else 0.5
        except ValueError:
            raise CamlensError(f"--target {spec!r}: the threshold {rest!r} is not a number") from None
        if not 0.0 < threshold < 1.0:
            raise CamlensError(f"--target {spec!r}: the threshold must be between 0 and 1")
        return TargetRecipe("labels", threshold=threshold)
    if kind == "regression":
        if rest and not rest.lstrip("-").isdigit():
            raise CamlensError(f"--target {spec!r}: the output column {rest!r} is not an integer")
        return TargetRecipe("regression", index=int(rest) if rest else None)
    if kind == "segment":
        if not rest:
            raise CamlensError(f"--target {spec!r}: name the class, segment:C")
        return TargetRecipe("segment", category(rest))
    if kind == "box":
        label, _, coords = rest.partition(":")
        try:
            box = tuple(float(v) for v in coords.split(","))
        except ValueError:
            box = ()
        if not label or len(box) != 4:
            raise CamlensError(f"--target {spec!r}: give box:C:x0,y0,x1,y1 (class, then the box in image pixels)")
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 and 0 <= y0 < y1):
            raise CamlensError(f"--target {spec!r}: the box must have 0 <= x0 < x1 and 0 <= y0 < y1")
        return TargetRecipe("box", category(label), box=(x0, y0, x1, y1))
    raise CamlensError(usage)


__all__ = [
    "Detection",
    "Logit",
    "PositiveLabels",
    "Regression",
    "Segmentation",
    "Sigmoid",
    "Softmax",
    "Target",
    "TargetRecipe",
    "bind_targets",
    "default_layer",
    "parse_target",
    "set_box_threshold",
]
