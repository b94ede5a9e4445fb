"""The interface every WSOL training method implements: a few hooks the one training loop calls.

Vanilla CAM is this base class itself (no change to the network, the batch or the loss).  A method adds what it
needs through :meth:`TrainingMethod.attach` (branches, dropout layers, hooks) instead of being written into each
backbone, and says how its map is read at inference through :meth:`TrainingMethod.explainer`.  Everything a
method needs to be rebuilt (its name and parameters) is in :meth:`TrainingMethod.config`, which the checkpoint
records, so ``explain``, ``localize``, ``evaluate`` and ``serve`` rebuild the trained network from the checkpoint
alone.

Methods are dataclasses whose init fields are their parameters (Choe et al.'s names and defaults, from
wsolevaluation's ``config.py``); :attr:`TrainingMethod.search_space` says how the random search of Choe et al.
draws each of them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...capture import output_logits
from ...errors import CamlensError
from ...methods.base import Explainer
from ...wsolnet import check_fraction, mark, trained_explainer

__all__ = ["Param", "TrainingMethod", "check_fraction", "unwrap"]


@dataclass(frozen=True)
class Param:
    """How the random search draws one parameter: ``uniform`` / ``loguniform`` floats in [low, high], ``int``
    integers in [low, high], or ``choice`` among ``values``."""

    kind: str
    low: float = 0.0
    high: float = 1.0
    values: tuple[Any, ...] = ()

    def sample(self, generator: torch.Generator) -> Any:
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        if self.kind == "uniform":
            return self.low + (self.high - self.low) * u
        if self.kind == "loguniform":
            return math.exp(math.log(self.low) + (math.log(self.high) - math.log(self.low)) * u)
        if self.kind == "int":
            return int(self.low + min(int(u * (self.high - self.low + 1)), int(self.high - self.low)))
        if self.kind == "choice":
            return self.values[min(int(u * len(self.values)), len(self.values) - 1)]
        raise CamlensError(f"unknown parameter distribution {self.kind!r}")


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel (or DataParallel) wrapper, else ``model``."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


@dataclass
class TrainingMethod:
    """Vanilla CAM training (Zhou et al., CVPR 2016): cross-entropy on the logits, maps read by ``camlens.CAM``.

    The loop calls, in order: ``attach`` once, before the optimizer is built; per step ``batch`` then ``loss``;
    ``explainer`` whenever maps are needed (selection by localization, evaluation, explain, serve).
    """

    name: ClassVar[str] = "cam"
    search_space: ClassVar[dict[str, Param]] = {}

    def attach(self, model: nn.Module) -> tuple[str, ...]:
        """Add what the method needs to ``model`` (in place) and return the qualified names of the modules it
        added: they train at the higher learning rate of new layers.  Called again on a freshly built network
        before a checkpoint's weights are loaded into it, so it must depend only on :meth:`config`.

        Subclasses call ``super().attach(model)`` first: it marks the network with this config, which
        :func:`camlens.wsolnet.method_explainer` reads."""
        mark(model, self.config())
        return ()

    def reference(self) -> "TrainingMethod":
        """This method as Choe et al.'s reference code runs it (``--protocol wsolevaluation``); the same method
        where camlens does not depart from it."""
        return self

    def check_input(self, size: Sequence[int]) -> None:
        """Raise a one-line :class:`CamlensError` if the parameters cannot work on (H, W) inputs (a HaS patch
        larger than the image); called before training starts, so nothing is written for a run that would fail."""

    def start_epoch(self, epoch: int) -> None:
        """Called before each training epoch (0-based), for methods whose loss changes over training (a warm-up)."""

    def batch(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Any]:
        """The training batch the network sees and the targets :meth:`loss` takes (HaS hides patches, CutMix
        pastes boxes and mixes labels).  ``images`` are preprocessed (B, 3, H, W) on the training device;
        ``generator`` is the loop's CPU generator, seeded per epoch, so a resumed run draws the same."""
        return images, labels

    def loss(self, model: nn.Module, images: Tensor, targets: Any) -> tuple[Tensor, Tensor]:
        """(loss, logits (B, C)) for one training step; the logits feed the running accuracy."""
        logits = output_logits(model(images))  # a tuple, dict or ModelOutput: its logits
        return F.cross_entropy(logits, targets), logits

    def explainer(self, model: nn.Module) -> Explainer:
        """The explainer whose maps are this method's localization maps (:func:`camlens.wsolnet.trained_explainer`:
        ``camlens.CAM`` for vanilla CAM)."""
        return trained_explainer(model, self.config())

    def params(self) -> dict[str, Any]:
        """The parameters (the dataclass's init fields), JSON-able."""
        out = {}
        for f in dataclasses.fields(self):
            if f.init:
                value = getattr(self, f.name)
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def config(self) -> dict[str, Any]:
        """Name and parameters, JSON-able, as recorded in checkpoints (``{"name": "cam"}`` for vanilla CAM)."""
        return {"name": self.name, **self.params()}
