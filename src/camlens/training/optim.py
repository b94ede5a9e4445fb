"""Parameter groups and learning-rate schedules.

New layers (those a CAM network builder adds, those a training method attaches, a replaced classifier) train at
a multiple of the base rate, as Choe et al. fine-tune their backbones (10x).  Each group carries its multiple as
``lr_mult``; the schedule gives the base rate of a step, so a resumed run needs only the step count.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..errors import CamlensError
from ..reference import REFERENCE, reference_parameter_groups
from .config import TrainConfig


def parameter_groups(model: nn.Module, new_layers: Sequence[str], lr_mult: float) -> list[dict]:
    """Two groups: the parameters of the modules named in ``new_layers`` (and their submodules) with ``lr_mult``,
    and the rest with 1; an empty group is left out.  A name that is not a module of ``model`` is an error."""
    modules = dict(model.named_modules())
    for name in new_layers:
        if name not in modules:
            raise CamlensError(f"new layer {name!r} is not a module of {type(model).__name__}")
    prefixes = tuple(f"{n}." for n in new_layers)
    old: list[nn.Parameter] = []
    new: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (new if name.startswith(prefixes) else old).append(param)
    groups = [
        {"params": old, "lr_mult": 1.0, "name": "pretrained"},
        {"params": new, "lr_mult": float(lr_mult), "name": "new"},
    ]
    return [g for g in groups if g["params"]]


def training_groups(config: TrainConfig, model: nn.Module, new_layers: Sequence[str]) -> list[dict]:
    """The parameter groups of a run: camlens's (new layers at ``lr_mult``) or, under the reference protocol,
    Choe et al.'s by parameter name (:func:`camlens.reference.reference_parameter_groups`)."""
    if config.protocol == REFERENCE:
        return reference_parameter_groups(model, config.arch, config.lr_mult)
    return parameter_groups(model, new_layers, config.lr_mult)


def build_optimizer(config: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """AdamW, or SGD with momentum (Choe et al.; Nesterov's under their protocol, as their code), over ``groups``
    at the configured base rate and weight decay."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups,
            lr=config.base_lr,
            momentum=config.momentum,
            weight_decay=config.decay,
            nesterov=config.protocol == REFERENCE,
        )
    return torch.optim.AdamW(groups, lr=config.base_lr, weight_decay=config.decay)


def learning_rate(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def step_decay(epoch: int, base: float, every: int, gamma: float = 0.1) -> float:
    """``base * gamma ** (epoch // every)`` for the 0-based ``epoch``: wsolevaluation's ``lr_decay_frequency``."""
    return base * gamma ** (epoch // every)


class Schedule:
    """The base learning rate of each global step: warm-up + cosine for AdamW, step decay for SGD."""

    def __init__(self, config: TrainConfig, steps_per_epoch: int) -> None:
        self.config = config
        self.steps_per_epoch = steps_per_epoch
        self.total = config.epochs * steps_per_epoch
        self.warmup = max(1, min(steps_per_epoch, self.total // 10))

    def __call__(self, step: int) -> float:
        c = self.config
        if c.optimizer == "sgd":
            return step_decay(step // self.steps_per_epoch, c.base_lr, c.lr_decay_every)
        return learning_rate(step, self.total, c.base_lr, self.warmup)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        return lr
