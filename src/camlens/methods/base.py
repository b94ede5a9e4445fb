"""The result type and base class shared by every method of the CAM family."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Sequence, Union

import torch
from torch import Tensor

from ..capture import HookSet, LayerCapture, LayerSpec, ModelLike, unwrap_model, unwrapped_spec
from ..errors import CamlensError

ClassSpec = Union[None, int, str, Sequence[int], Sequence[Sequence[int]], Tensor]
Target = Callable[[Any], Tensor]


@dataclass
class CAMResult:
    """What every method returns for a batch of B images and N explained classes (or targets) per image.

    ``maps`` are raw: exact to the method's formula at the layer's resolution, with no ReLU, normalization or
    resizing applied (see :func:`camlens.normalize` and :func:`camlens.upsample`).  Maps are (B, N, *S) with S
    the layer's positions: (L,) for 1-D signals, (h, w) for images, (d, h, w) for volumes.  For CAM, ``bias``
    holds the offsets that make the mean of each map over S plus ``bias`` equal the explained logits exactly.

    Attributes:
        logits: the model's class scores (B, C).
        classes: the explained classes (B, N), long; -1 where a target without a class (a callable, padding) was
            explained.
        maps: the raw maps (B, N, *S).
        layer: the name of the layer the maps come from.
        bias: CAM's offsets (B, N), None for the other methods.
        target_scores: the explained targets' scores (B, N), NaN where a target explains nothing; None for classes.
    """

    logits: Tensor  # (B, C)
    classes: Tensor  # (B, N) long; -1 where a target without a class (a callable, padding) was explained
    maps: Tensor  # (B, N, *S)
    layer: str
    bias: Tensor | None = None  # (B, N)
    target_scores: Tensor | None = None  # (B, N) the explained targets' scores, NaN where a target explains nothing

    @property
    def spatial_dims(self) -> int:
        """len(S): 1 for signals, 2 for images, 3 for volumes (``camlens.normalize(maps, spatial_dims=...)``)."""
        return self.maps.ndim - 2

    @property
    def scores(self) -> Tensor:
        """Softmax probabilities of the explained classes, (B, N)."""
        return self.logits.float().softmax(-1).gather(1, self.classes.clamp_min(0))

    def to(self, device: torch.device | str) -> "CAMResult":
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return CAMResult(
            self.logits.to(device),
            self.classes.to(device),
            self.maps.to(device),
            self.layer,
            move(self.bias),
            move(self.target_scores),
        )


def select_classes(logits: Tensor, classes: ClassSpec = None, topk: int = 1) -> Tensor:
    """The (B, N) long tensor of classes to explain.

    ``classes``: None (the ``topk`` highest logits), an int (that class for every sample), a sequence with one
    class per sample (for a batch of one: that image's classes, ``[281, 285]``), a sequence of sequences (N per
    sample), a tensor of shape (B,) or (B, N), or ``"all"``.

    Args:
        logits: the model's class scores (B, C).
        classes: the classes, in any of the forms above.
        topk: how many of the highest logits when ``classes`` is None.

    Returns:
        The classes (B, N), long, each in 0..C-1 (a one-line error otherwise).
    """
    batch, num_classes = logits.shape
    device = logits.device
    if classes is None:
        if not 1 <= topk <= num_classes:
            raise CamlensError(f"topk={topk} must be between 1 and the number of classes ({num_classes})")
        return logits.topk(topk, dim=1).indices
    if isinstance(classes, str):
        if classes != "all":
            raise CamlensError(f"classes={classes!r}: use an int, a list of ints, a tensor or 'all'")
        return torch.arange(num_classes, device=device).expand(batch, num_classes)
    if isinstance(classes, int):
        out = torch.full((batch, 1), classes, dtype=torch.long, device=device)
    else:
        out = torch.as_tensor(classes, dtype=torch.long, device=device)
        if out.ndim == 1:  # one class per sample; for a single sample, a flat list is that sample's N classes
            out = out[None] if batch == 1 else out[:, None]
        if out.ndim != 2 or out.shape[0] != batch:
            raise CamlensError(
                f"classes has shape {tuple(out.shape)}; give one class per sample ({batch}) or a ({batch}, N) table"
            )
    if out.numel() and (out.min() < 0 or out.max() >= num_classes):
        raise CamlensError(f"class index out of range: the model has {num_classes} classes (0..{num_classes - 1})")
    return out


class Cancelled(Exception):
    """Raised between the passes of a method when the check given to :func:`stop_when` says to stop."""


_stop = threading.local()


@contextmanager
def stop_when(check: Callable[[], bool]) -> Iterator[None]:
    """Within the block, methods that run many passes (``expensive``) call ``check()`` between passes, in this
    thread, and raise :class:`Cancelled` when it returns True (a deadline passed, the client left...).

    Args:
        check: called between passes; True stops the method.

    Returns:
        The context manager (``with stop_when(check): ...``); the previous check is restored on exit.
    """
    previous = getattr(_stop, "check", None)
    _stop.check = check
    try:
        yield
    finally:
        _stop.check = previous


def check_stop() -> None:
    """Raise :class:`Cancelled` if this thread's :func:`stop_when` check says to stop; a no-op outside one."""
    check = getattr(_stop, "check", None)
    if check is not None and check():
        raise Cancelled("stopped between passes")


class Explainer:
    """Base class: holds the model and the hooks it placed, and removes them on ``close`` or at the end of a
    ``with`` block (also when the block raised).  Subclasses implement ``__call__(x, classes=None, *, topk=1)``
    returning a :class:`CAMResult`.

    What a method can do is said once, here and in the subclasses, for the callers that schedule them (the web
    server, the CLI): ``thread_safe`` (one instance may be called from several threads at once, tested from 8),
    ``draws_noise`` (takes a ``generator``), ``fuses_layers`` (``layer`` may be a list), ``expensive`` (passes per
    channel, seconds to minutes an image on CPU; stops between passes under :func:`stop_when`) and
    ``exclusive_setup`` (:meth:`prepare` touches process-wide state: run it while no other thread runs a model) and
    ``needs_attention`` (reads a transformer's self-attention: applies to ViTs only, see
    :func:`camlens.methods.applicable_methods`).

    Args:
        model: the model; a DataParallel / DistributedDataParallel wrapper is looked through (hooks go on the
            module inside).
        layer: the target layer: a qualified name (see :func:`camlens.layer_names`), a module, a list of them for
            methods that fuse layers, or None for the method's automatic choice.
    """

    name: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = False
    thread_safe: ClassVar[bool] = False
    draws_noise: ClassVar[bool] = False
    fuses_layers: ClassVar[bool] = False
    expensive: ClassVar[bool] = False
    exclusive_setup: ClassVar[bool] = False
    needs_attention: ClassVar[bool] = False

    def __init__(self, model: ModelLike, layer: LayerSpec | Sequence[LayerSpec] | None = None) -> None:
        self.model = unwrap_model(model)  # DataParallel / DistributedDataParallel: the module inside
        self.layer = unwrapped_spec(model, layer)
        self._captures: list[LayerCapture | HookSet] = []
        self._setup_lock = threading.Lock()

    def prepare(self, x: Tensor) -> None:
        """Do now, for inputs like ``x``, the lazy set-up that the first call would do (hooks, layer search,
        inference copies); the default does nothing."""

    def close(self) -> None:
        """Remove every hook this explainer placed on the model."""
        for capture in self._captures:
            capture.close()
        self._captures.clear()

    def __enter__(self) -> "Explainer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        captures = getattr(self, "_captures", None)
        if captures:
            self.close()

    def __call__(self, x: Tensor, classes: ClassSpec = None, *, topk: int = 1) -> CAMResult:
        """The method's maps of ``classes`` for the batch ``x``.

        Args:
            x: the preprocessed batch (B, C, *S) the model takes.
            classes: the classes to explain (see :func:`select_classes`); None for the ``topk`` best.
            topk: how many of the best classes when ``classes`` is None.

        Returns:
            The :class:`CAMResult`: logits, explained classes and raw maps (B, N, *S).
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={type(self.model).__name__}, layer={self.layer!r})"
