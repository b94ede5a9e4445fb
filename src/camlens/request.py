"""One explain request, as ``camlens explain`` (and ``localize``, ``evaluate``, ``layers``) and the web API's
``POST /api/explain`` take it: the method, its layers, the classes (``topk`` or one ``class``), a ``target`` and the
overlay's ``alpha``, each checked once against the model by :meth:`ExplainRequest.parse`.

Errors are one line (a :class:`RequestError`) that names the field as the caller spells it: the command line's
``--topk 0``, the web API's ``topk=0`` (a :class:`Caller`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence

from .capture import resolve_module
from .errors import CamlensError
from .methods import applicable_methods, get_method
from .methods.attention import no_attention_message
from .methods.layered import LayerExplainer
from .targets import TargetRecipe, default_layer, parse_target

if TYPE_CHECKING:
    from .models import LoadedModel

TASK_TARGETS = {"detection": ("box",), "segmentation": ("segment",)}  # the target kinds each task's output takes
CLASS_TARGETS = ("logit", "softmax", "sigmoid", "labels", "regression")  # and a classifier's
TARGET_HINT = {
    "detection": "box:C:x0,y0,x1,y1 (in the image's pixels)",
    "segmentation": "segment:C",
    "classification": "logit[:C], softmax[:C], sigmoid[:C], labels[:T] (multi-label), regression[:I]",
}


class RequestError(CamlensError):
    """A field of an explain request that does not fit the model (the web API answers it with a 400).

    Args:
        field: the field: ``method``, ``layer``, ``topk``, ``class``, ``target`` or ``alpha``.
        message: what was wrong and what to do, one line.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Caller:
    """How a caller spells a field in its errors, and what its form sends.

    Attributes:
        name: a field's name, ``{}`` the field (``--{}`` on the command line, ``{}=`` in the web API).
        given: a field with its value, ``{0}`` the field and ``{1}`` the value (``--{0} {1}``, ``{0}={1}``).
        layers_hint: where the caller lists the model's layers.
        classes_hint: where the caller lists the model's class labels.
        sends_topk: whether the caller's form sends ``topk`` with every request (the web page), so a target
            ignores it; else a ``topk`` other than 1 with a target is refused.
    """

    name: str
    given: str
    layers_hint: str
    classes_hint: str
    sends_topk: bool

    def field(self, field: str, value: str | None = None) -> str:
        """``field`` as the caller spells it, with ``value`` (already formatted) when given."""
        return self.name.format(field) if value is None else self.given.format(field, value)


CLI = Caller("--{}", "--{0} {1}", "camlens layers lists them", "the model's class names: --classes", False)
WEB = Caller("{}=", "{0}={1}", "GET /api/info lists the layers", "GET /api/info lists them", True)


def task_of(loaded: LoadedModel) -> str:
    """``detection``, ``segmentation`` (torchvision models by ``--arch``) or ``classification``.

    Args:
        loaded: a :class:`~camlens.models.LoadedModel`.

    Returns:
        The task, a key of :data:`TARGET_HINT`.
    """
    task = loaded.meta.get("task")
    return task if task in TASK_TARGETS else "classification"


@dataclass(frozen=True)
class ExplainRequest:
    """An explain request whose fields were checked against one model (build it with :meth:`parse`).

    Attributes:
        method: the method's registered name (a key of :data:`camlens.methods.METHODS`).
        layers: the target layers (empty: the method's default; detectors and segmenters: their default layer).
        topk: how many of the best classes to explain (1 when ``category`` or ``target`` is given).
        category: the one class to explain, or None.
        target: what to explain instead of classes, or None; a ``logit``/``softmax``/``sigmoid`` target without
            a class takes ``category``.
        alpha: the overlay's heatmap opacity, in [0, 1].
    """

    method: str = "cam"
    layers: tuple[str, ...] = ()
    topk: int = 1
    category: int | None = None
    target: TargetRecipe | None = None
    alpha: float = 0.5

    @property
    def layer(self) -> str | None:
        """The one target layer, or None for the default (the web API takes one)."""
        return self.layers[0] if len(self.layers) == 1 else None

    @property
    def explains(self) -> int | TargetRecipe | None:
        """The target, else the class, else None (the top-``topk`` classes)."""
        return self.target if self.target is not None else self.category

    @classmethod
    def parse(
        cls,
        loaded: LoadedModel,
        *,
        method: str | None = None,
        layers: Sequence[str] | None = None,
        topk: int | str | None = None,
        category: int | str | None = None,
        target: str | None = None,
        alpha: float | str | None = None,
        caller: Caller = CLI,
        offered: Sequence[str] | None = None,
        max_topk: int | None = None,
        targets: bool = True,
    ) -> ExplainRequest:
        """Check each field against the model, in this order: method, layers, topk, class, target, alpha.

        Args:
            loaded: the :class:`~camlens.models.LoadedModel` the request is for.
            method: a method name (``Grad-CAM++`` = ``gradcampp``); None or empty: ``cam`` (or the first offered).
            layers: target layer names (several are fused, by a method that fuses); ``auto`` or empty: the default.
            topk: the number of best classes, an int or its text; None or empty: 1.
            category: one class, an index or a label (or their text); None or empty: none.
            target: a target in :func:`camlens.targets.parse_target`'s syntax; None or empty: none (detectors and
                segmenters need one; detectors may use ``eigencam`` instead).
            alpha: the overlay's opacity in [0, 1], a number or its text; None or empty: 0.5.
            caller: how the caller spells fields in errors (:data:`CLI`, :data:`WEB`).
            offered: the methods the caller offers (default: every method that applies to the model).
            max_topk: the caller's own limit on ``topk`` (default: the number of classes).
            targets: whether the caller takes a ``target`` (``camlens localize`` and ``evaluate`` explain classes
                only: then a detector or segmenter is not asked for one).

        Returns:
            The checked request; a :class:`RequestError` (one line, naming the field) otherwise.
        """
        name = _method(loaded, method, offered)
        task = task_of(loaded)
        chosen = _layers(loaded, name, layers, task, caller)
        count = _topk(topk, min(max_topk or math.inf, len(loaded.class_names)), caller)
        index = _category(category, loaded.class_names, caller)
        recipe = _target(target, loaded, name, task, caller) if targets else None
        if recipe is not None:
            if count != 1 and not caller.sends_topk:
                raise RequestError(
                    "topk",
                    f"{caller.field('topk')} ranks classes; with {caller.field('target')} one target is explained "
                    "(labels:T gives one map per positive label)",
                )
            if recipe.kind in ("logit", "softmax", "sigmoid") and recipe.category is None and index is not None:
                recipe = replace(recipe, category=index)
        return cls(
            name,
            chosen,
            1 if recipe is not None or index is not None else count,
            index,
            recipe,
            _alpha(alpha, caller),
        )


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def _method(loaded: LoadedModel, raw: str | None, offered: Sequence[str] | None) -> str:
    text = _text(raw)
    if not text:
        return "cam" if offered is None or "cam" in offered else offered[0]
    try:
        name = get_method(text).name
    except CamlensError:
        choices = offered if offered is not None else applicable_methods(loaded.model)
        raise RequestError("method", f"unknown method {text!r}; choose from {', '.join(choices)}") from None
    if offered is None:  # every method that applies: only the attention methods may not
        if get_method(name).needs_attention and name not in applicable_methods(loaded.model):
            raise RequestError("method", no_attention_message(name, loaded.model))
    elif name not in offered:
        if name not in applicable_methods(loaded.model):
            raise RequestError("method", no_attention_message(name, loaded.model))
        raise RequestError("method", f"method {name!r} is not offered by this server; choose from {', '.join(offered)}")
    return name


def _layers(loaded: LoadedModel, method: str, raw: Sequence[str] | None, task: str, caller: Caller) -> tuple[str, ...]:
    names = tuple(name.strip() for name in raw or () if name.strip() not in ("", "auto"))
    if not names:
        found = default_layer(loaded.model) if task in TASK_TARGETS else None
        return (found,) if found else ()
    if len(names) > 1 and not get_method(method).fuses_layers:
        raise RequestError(
            "layer",
            f"{caller.field('method', method)} explains one layer; fusing {len(names)} layers needs a method "
            "such as gradcam, layercam or scorecam",
        )
    for name in names:
        try:
            resolve_module(loaded.model, name)
        except CamlensError as err:
            raise RequestError("layer", f"{err} ({caller.layers_hint})") from None
    return names


def _topk(raw: int | str | None, limit: float, caller: Caller) -> int:
    text = _text(raw)
    if not text:
        return 1
    try:
        topk = int(text)
    except ValueError:
        raise RequestError("topk", f"{caller.field('topk', repr(text))} is not an integer") from None
    if not 1 <= topk <= limit:
        raise RequestError("topk", f"{caller.field('topk', str(topk))} must be between 1 and {limit:g}")
    return topk


def _category(raw: int | str | None, names: Sequence[str], caller: Caller) -> int | None:
    text = _text(raw)
    if not text:
        return None
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < len(names):
            raise RequestError(
                "class",
                f"{caller.field('class', str(index))} is out of range: the model has {len(names)} classes "
                f"(0..{len(names) - 1})",
            )
        return index
    if text in names:
        return list(names).index(text)
    raise RequestError(
        "class", f"{caller.field('class', repr(text))} is neither a class index nor a label ({caller.classes_hint})"
    )


def _target(raw: str | None, loaded: LoadedModel, method: str, task: str, caller: Caller) -> TargetRecipe | None:
    text = _text(raw)
    if not text:
        if task == "segmentation" or (task == "detection" and method != "eigencam"):
            raise RequestError(
                "target",
                f"a {task} model has no image-level classes: give {caller.field('target', TARGET_HINT[task])}"
                + (f" or {caller.field('method', 'eigencam')}" if task == "detection" else ""),
            )
        return None
    try:
        recipe = parse_target(text, loaded.class_names)
    except CamlensError as err:
        raise RequestError(
            "target", str(err).replace(f"--target {text!r}", caller.field("target", repr(text)))
        ) from None
    if not issubclass(get_method(method), LayerExplainer):
        raise RequestError(
            "target",
            f"{caller.field('method', method)} explains classes ({caller.field('class')}, {caller.field('topk')}); "
            f"{caller.field('target')} needs a layer method (gradcam, hirescam, eigencam, scorecam...)",
        )
    if recipe.kind not in TASK_TARGETS.get(task, CLASS_TARGETS):
        raise RequestError(
            "target",
            f"{caller.field('target', repr(text))} does not fit a {task} model's output; use {TARGET_HINT[task]}",
        )
    return recipe


def _alpha(raw: float | str | None, caller: Caller) -> float:
    text = _text(raw) or "0.5"
    try:
        alpha = float(text)
    except ValueError:
        alpha = math.nan
    if not 0.0 <= alpha <= 1.0:
        raise RequestError("alpha", f"{caller.field('alpha', repr(text))} must be a number between 0 and 1")
    return alpha


__all__ = ["CLI", "WEB", "Caller", "ExplainRequest", "RequestError", "TARGET_HINT", "task_of"]
