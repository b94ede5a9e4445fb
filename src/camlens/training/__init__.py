"""Training CAM networks: the loop, its training methods (``wsol``), selection by localization, search.

- ``config``: :class:`TrainConfig`, every setting and default of a run.
- ``data``: the splits (built-in, STL-10, ImageFolder, WSOL metadata), sharded batches, augmentation.
- ``optim``: parameter groups (new layers at a higher rate), AdamW warm-up + cosine, SGD step decay.
- ``select``: selection by a localization metric on a boxed split, and the thresholds it records.
- ``checkpoint``: self-describing checkpoints and the resume file.
- ``loop``: :func:`train`, one loop calling the hooks of a :class:`wsol.TrainingMethod`, DDP under torchrun.
"""

from .config import TrainConfig
from .data import TrainData, load_data
from .loop import EpochLog, TrainResult, train

__all__ = ["EpochLog", "TrainConfig", "TrainData", "TrainResult", "load_data", "train"]
