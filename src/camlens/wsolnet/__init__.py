"""What a network trained with a WSOL method carries at inference: the modules its method added (so that its
checkpoint loads into a freshly built network) and how its localization map is read.

The training side (losses, batch changes, search spaces) is :mod:`camlens.training.wsol`; it builds these modules
through the functions here, so a checkpoint needs nothing from ``training/`` to be loaded and explained.  A new
training method registers its modules in :data:`CHECKPOINT_MODULES` (and its map in :func:`trained_explainer` when
it is not CAM's).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from torch import nn

from ..capture import ModelLike, as_module
from ..errors import CamlensError
from ..methods import Explainer, get_method
from ..methods.activation import CAM
from .acol import BRANCH_B, ACoLCAM, attach_recorded_branch
from .adl import ADL, add_layers
from .base import MARK, META_KEY, check_fraction, mark
from .dawsol import add_cache
from .spg import BRANCHES, attach_recorded_branches


def _no_modules(model: nn.Module, params: Mapping[str, Any]) -> None:
    """Methods that change only the batch or the loss (CAM, HaS, CutMix) add nothing."""


CHECKPOINT_MODULES: dict[str, Callable[[nn.Module, Mapping[str, Any]], object]] = {
    "cam": _no_modules,
    "has": _no_modules,
    "cutmix": _no_modules,
    "acol": lambda model, params: attach_recorded_branch(model),
    "spg": lambda model, params: attach_recorded_branches(model, params.get("branches")),
    "dawsol": lambda model, params: add_cache(model),
    "bridging": _no_modules,
    "adl": lambda model, params: add_layers(model, params.get("positions"), params["drop_rate"], params["threshold"]),
}


# the parameters a checkpoint's network and map depend on, with Choe et al.'s defaults (wsolevaluation
# ``config.py``); the training methods take their defaults from here
ACOL_THRESHOLD = 0.7
ADL_DROP_RATE = 0.75
ADL_THRESHOLD = 0.9
RECORDED_DEFAULTS: dict[str, dict[str, Any]] = {
    "acol": {"threshold": ACOL_THRESHOLD},
    "adl": {"drop_rate": ADL_DROP_RATE, "threshold": ADL_THRESHOLD, "positions": None},
    "spg": {"branches": None},
}


# every parameter each method takes (the training dataclasses' fields; tests/test_wsol_methods.py keeps the two
# lists equal), so a checkpoint's record can be checked without the training side
PARAMETERS: dict[str, tuple[str, ...]] = {
    "cam": (),
    "has": ("patch_size", "drop_rate", "reference_grid"),
    "cutmix": ("beta", "prob"),
    "acol": ("threshold",),
    "adl": ("drop_rate", "threshold", "positions"),
    "dawsol": ("beta", "univer", "num_samples"),
    "bridging": (
        "sim_ratio",
        "norm_ratio",
        "drop_ratio",
        "fg_threshold",
        "bg_threshold",
        "drop_threshold",
        "drop_prob",
        "warm_epochs",
        "norm_sign",
        "drop_after",
    ),
    "spg": ("threshold_1h", "threshold_1l", "threshold_2h", "threshold_2l", "threshold_3h", "threshold_3l", "branches"),
}


def recorded_config(name: str, params: Mapping[str, Any], recorded: Mapping[str, Any] | None = None) -> dict:
    """The record of a WSOL method for a checkpoint that does not keep it (Choe et al.'s files) or keeps it without
    ``params``: the name, the defaults of the parameters its network and map depend on, ``recorded`` and
    ``params``.

    Args:
        name: the method's name (``cam``, ``has``, ``acol``, ``spg``, ``adl``, ``cutmix``...).
        params: parameters the caller states (``--wsol-param``).
        recorded: the checkpoint's own record of the method, if any.

    Returns:
        The record, as :func:`attach_recorded` takes it.
    """
    name = name.lower()
    if name not in CHECKPOINT_MODULES:
        raise CamlensError(f"unknown WSOL method {name!r}; choose from {', '.join(CHECKPOINT_MODULES)}")
    known = set(PARAMETERS.get(name, ())) | set(recorded or {}) - {"name"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise CamlensError(
            f"WSOL method {name}: unknown parameter(s) {', '.join(unknown)}; it takes "
            f"{', '.join(sorted(known)) or 'none'}"
        )
    return {**RECORDED_DEFAULTS.get(name, {}), **(recorded or {}), **params, "name": name}


def attach_recorded(model: nn.Module, config: Mapping[str, Any]) -> None:
    """Add to a freshly built ``model`` (in place) the modules of the WSOL method a checkpoint recorded, before the
    checkpoint's weights are loaded, and mark it with ``config`` (so :func:`method_explainer` reads its map).

    Args:
        model: the network, built from the checkpoint's architecture and options.
        config: the checkpoint's record (``{"name": "acol", "threshold": 0.7}``; ``TrainingMethod.config()``).

    Returns:
        None; ``model`` is changed in place.
    """
    params = dict(config)
    name = str(params.pop("name", "cam"))
    if name not in CHECKPOINT_MODULES:
        raise CamlensError(
            f"the checkpoint was trained with the WSOL method {name!r}, which this camlens does not "
            f"know ({', '.join(CHECKPOINT_MODULES)}); upgrade camlens"
        )
    CHECKPOINT_MODULES[name](model, params)
    mark(model, dict(config))


def trained_explainer(model: nn.Module, config: Mapping[str, Any]) -> Explainer:
    """The explainer whose maps are the localization maps of the WSOL method ``config`` names: ACoL's own
    (:class:`ACoLCAM`), ``camlens.CAM`` for the others.

    Args:
        model: a network that method was attached to.
        config: the method's record (``TrainingMethod.config()``).

    Returns:
        The explainer (not yet entered).
    """
    if config.get("name") == "acol":
        return ACoLCAM(model, threshold=float(config["threshold"]))
    return CAM(model)


def method_explainer(model: nn.Module) -> Explainer | None:
    """The explainer of the WSOL method ``model`` was attached to (its mark), or None for a network no method was
    attached to.

    Args:
        model: any network.

    Returns:
        :func:`trained_explainer` of its method, or None.
    """
    config = getattr(model, MARK, None)
    return None if config is None else trained_explainer(model, config)


def build_explainer(model: ModelLike, method: str = "cam", layer: str | None = None, **options: Any) -> Explainer:
    """The explainer of ``method`` (:func:`camlens.methods.get_method`) on ``model`` at ``layer``.  CAM with no
    layer on a network trained with a WSOL method (its checkpoint records the method) is that method's map, as its
    paper defines it: ACoL's max of two normalized maps (:class:`ACoLCAM`), plain CAM for the others.  Used by
    ``camlens.explain``, the CLI and the server.

    Args:
        model: the network, or a :func:`camlens.load_model` result.
        method: a method name of :data:`camlens.methods.METHODS` (``"cam"``, ``"gradcam"``, ...).
        layer: the target layer's name, or None for the method's default.
        **options: the method's own keyword arguments.

    Returns:
        The explainer (not yet entered).
    """
    cls = get_method(method)
    model = as_module(model)
    if cls.name == "cam" and layer is None:
        trained_with = method_explainer(model)
        if trained_with is not None:
            return trained_with
    return cls(model, layer=layer, **options)


__all__ = [
    "ADL",
    "ACoLCAM",
    "BRANCHES",
    "BRANCH_B",
    "CHECKPOINT_MODULES",
    "MARK",
    "META_KEY",
    "PARAMETERS",
    "RECORDED_DEFAULTS",
    "attach_recorded",
    "recorded_config",
    "build_explainer",
    "check_fraction",
    "mark",
    "method_explainer",
    "trained_explainer",
]
