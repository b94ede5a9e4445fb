"""WSOL training methods: one module per method, each a :class:`TrainingMethod`.

``get_wsol_method("has", drop_rate=0.3)`` builds one by name; :func:`wsol_method_from_config` rebuilds one from
a checkpoint's record; :func:`method_explainer` (re-exported from :mod:`camlens.wsolnet`, the inference side) gives the explainer
of the method a network was trained with.
"""

from __future__ import annotations

from typing import Any, Mapping

from ...errors import CamlensError
from ...wsolnet import META_KEY, ACoLCAM, method_explainer
from .acol import ACoL
from .adl import ADL, ADLMethod
from .base import Param, TrainingMethod
from .bridging import Bridging
from .cutmix import CutMix
from .dawsol import DAWSOL
from .has import HaS
from .spg import SPG

WSOL_METHODS: dict[str, type[TrainingMethod]] = {
    cls.name: cls for cls in (TrainingMethod, HaS, ACoL, SPG, ADLMethod, CutMix, DAWSOL, Bridging)
}


def get_wsol_method(name: str, **params: Any) -> TrainingMethod:
    """The training method registered under ``name`` (cam, has, acol, spg, adl, cutmix, dawsol, bridging) with ``params``."""
    cls = WSOL_METHODS.get(name.lower())
    if cls is None:
        raise CamlensError(f"unknown WSOL method {name!r}; choose from {', '.join(WSOL_METHODS)}")
    known = {f for f in cls.__dataclass_fields__ if cls.__dataclass_fields__[f].init}
    unknown = sorted(set(params) - known)
    if unknown:
        raise CamlensError(
            f"WSOL method {name}: unknown parameter(s) {', '.join(unknown)}; "
            f"it takes {', '.join(sorted(known)) or 'none'}"
        )
    return cls(**params)


def wsol_method_from_config(config: Mapping[str, Any]) -> TrainingMethod:
    """The method a checkpoint recorded (:meth:`TrainingMethod.config`)."""
    params = dict(config)
    return get_wsol_method(str(params.pop("name", "cam")), **params)


__all__ = [
    "ACoL",
    "ACoLCAM",
    "ADL",
    "ADLMethod",
    "Bridging",
    "CutMix",
    "DAWSOL",
    "HaS",
    "META_KEY",
    "Param",
    "SPG",
    "TrainingMethod",
    "WSOL_METHODS",
    "get_wsol_method",
    "method_explainer",
    "wsol_method_from_config",
]
