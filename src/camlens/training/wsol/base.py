"""The interface every WSOL training method implements: a few hooks the one training loop calls.

Vanilla CAM is this base class itself (no change to the network, the batch or the loss).  A method adds what it
needs through :meth:`TrainingMethod.attach` (branches, dropout layers, hooks) instead of being written into each
backbone, and says how its map is read at inference through :meth:`TrainingMethod.explainer`.  Everything a
method needs to be rebuilt (its name and parameters) is in :meth:`TrainingMethod.config`, which the checkpoint
records, so ``explain``, ``localize``, ``evaluate`` and ``serve`` rebuild the trained network from the checkpoint
alone.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...methods.base import Explainer


class TrainingMethod:
    """Vanilla CAM training (Zhou et al., CVPR 2016): cross-entropy on the logits, maps read by ``camlens.CAM``.

    The loop calls, in order: ``attach`` once, before the optimizer is built; per step ``batch`` then ``loss``;
    ``explainer`` whenever maps are needed (selection by localization, evaluation, explain, serve).
    """

    name: ClassVar[str] = "cam"

    def attach(self, model: nn.Module) -> tuple[str, ...]:
        """Add what the method needs to ``model`` (in place) and return the qualified names of the modules it
        added: they train at the higher learning rate of new layers.  Called again on a freshly built network
        before a checkpoint's weights are loaded into it, so it must depend only on :meth:`config`."""
        return ()

    def batch(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Any]:
        """The training batch the network sees and the targets :meth:`loss` takes (HaS hides patches, CutMix
        pastes boxes and mixes labels).  ``images`` are preprocessed (B, 3, H, W) on the training device;
        ``generator`` is the loop's CPU generator, seeded per epoch, so a resumed run draws the same."""
        return images, labels

    def loss(self, model: nn.Module, images: Tensor, targets: Any) -> tuple[Tensor, Tensor]:
        """(loss, logits (B, C)) for one training step; the logits feed the running accuracy."""
        logits = model(images)
        return F.cross_entropy(logits, targets), logits

    def explainer(self, model: nn.Module) -> Explainer:
        """The explainer whose maps are this method's localization maps (``camlens.CAM`` for vanilla CAM)."""
        from ...methods.activation import CAM

        return CAM(model)

    def config(self) -> dict[str, Any]:
        """Name and parameters, JSON-able, as recorded in checkpoints (``{"name": "cam"}`` for vanilla CAM)."""
        return {"name": self.name}
