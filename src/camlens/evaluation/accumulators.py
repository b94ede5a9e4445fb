"""The localization accumulators of one evaluation (Top-1/Top-5/GT-known Loc, MaxBoxAcc(V2), PxAP) as one object
that merges other runs' counts and sums across ranks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from torch import Tensor

from ..constants import PAPER_THRESHOLD
from ..metrics.localization import DEFAULT_IOUS, BoxAccuracy, ClassLocalization, PixelAP


@dataclass
class Accumulators:
    """All localization accumulators of one evaluation; ``merge`` adds another run's counts."""

    loc: ClassLocalization
    box: BoxAccuracy
    pixel: PixelAP

    @classmethod
    def create(
        cls,
        thresholds: np.ndarray | None = None,
        paper_threshold: float = PAPER_THRESHOLD,
        ious: Sequence[float] = DEFAULT_IOUS,
    ) -> "Accumulators":
        return cls(ClassLocalization(paper_threshold), BoxAccuracy(thresholds, ious), PixelAP(thresholds))

    def merge(self, other: "Accumulators") -> "Accumulators":
        self.loc.merge(other.loc)
        self.box.merge(other.box)
        self.pixel.merge(other.pixel)
        return self

    def state_dict(self) -> dict[str, Tensor]:
        """Every count tensor, named ``loc.*``, ``box.*``, ``pixel.*``: sum them across ranks to combine runs."""
        return {f"{k}.{n}": t for k in ("loc", "box", "pixel") for n, t in getattr(self, k).state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for k in ("loc", "box", "pixel"):
            part = getattr(self, k)
            part.load_state_dict({n: state[f"{k}.{n}"] for n in part._names})

    def compute(self) -> dict:
        out: dict = {"num_images": int(self.box.count) or int(self.loc.count)}
        out.update(self.loc.compute())
        out.update(self.box.compute())
        out.update(self.pixel.compute())
        out["paper_threshold"] = self.loc.threshold
        return out
