"""Model selection by localization: the protocol of Choe et al. (CVPR 2020), who choose checkpoints and the
score-map threshold on a small split with boxes (their train-fullsup), never on the test split.

After each epoch the training method's explainer (``camlens.CAM`` for vanilla CAM) is scored on that split with
the evaluation code of ``camlens evaluate`` (:func:`camlens.evaluation.evaluate_model`, the same sweep and
accumulators, sharded and reduced exactly under torchrun), and the epoch with the best ``select_by`` metric is
kept.  Its thresholds go into the checkpoint's ``selection`` metadata:

* ``wsol_threshold``: the threshold of the min-max normalized map at which the largest contour's box is most
  often right (IoU >= 0.5) on the selection split, i.e. where MaxBoxAcc is reached: what ``camlens localize
  --protocol wsol`` uses, and at which ``camlens evaluate`` also reports the box accuracy of its split;
* ``paper_threshold``: the CAM paper's fraction of the map's maximum (0.2, fixed by the paper, not tuned) behind
  GT-known Loc, which ``camlens localize --protocol paper`` uses.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.utils.data import Dataset

from ..constants import PAPER_THRESHOLD
from ..distributed import Context
from ..errors import CamlensError
from ..models import LoadedModel, Preprocess
from .config import TrainConfig
from .data import TrainData
from .wsol.base import TrainingMethod


def selection_samples(config: TrainConfig, data: TrainData) -> Dataset | None:
    """The boxed split a localization metric is measured on: ``config.val_data`` (a folder that
    :func:`camlens.data.samples.dataset_samples` reads: its ``val/`` split, Choe et al.'s train-fullsup, or the
    folder itself), else the built-in dataset's validation split, else the ``val/`` split of a WSOL metadata
    ``--data``; None when selecting by accuracy."""
    if config.select_by == "accuracy":
        return None
    from ..data.samples import BuiltinSamples, dataset_samples

    if config.val_data is not None:
        samples = dataset_samples(
            config.val_data,
            "val",
            images=config.val_images or config.images,
            mask_root=config.mask_root,
            class_names=data.classes,
        )
    elif data.name == "builtin":
        from ..data.builtin import BuiltinDataset

        samples = BuiltinSamples(
            BuiltinDataset("val", num_images=len(data.val), image_size=data.image_size, seed=config.seed)
        )
    elif data.metadata is not None and (data.metadata / "val" / "localization.txt").is_file():
        samples = dataset_samples(
            str(data.metadata),
            "val",
            images=config.val_images or config.images,
            mask_root=config.mask_root,
            class_names=data.classes,
        )
    else:
        raise CamlensError(
            f"--select-by {config.select_by} needs a split with boxes: give --val-data DIR "
            "(a WSOL metadata folder with localization.txt, e.g. Choe et al.'s train-fullsup)"
        )
    return samples


def localization_metrics(
    model: nn.Module,
    method: TrainingMethod,
    samples: Dataset,
    preprocess: Preprocess,
    class_names: list[str],
    ctx: Context,
    batch_size: int = 64,
    protocol: str = "camlens",
) -> dict[str, Any]:
    """Every localization metric of ``method``'s maps of ``model`` (eval mode) on ``samples``, evaluated under
    ``protocol`` (camlens's, or wsolevaluation's: :mod:`camlens.reference`)."""
    from ..evaluation import evaluate_model

    loaded = LoadedModel(model, class_names, preprocess, "")
    with method.explainer(model) as explainer:
        return evaluate_model(
            loaded,
            explainer,
            samples,
            batch_size=batch_size,
            paper_threshold=PAPER_THRESHOLD,
            ctx=ctx,
            protocol=protocol,
        )


def selection_record(metric: str, metrics: dict[str, Any], epoch: int, split: str) -> dict[str, Any]:
    """What the checkpoint records about how it was chosen."""
    score = metrics.get(metric)
    if score is None:
        raise CamlensError(
            f"--select-by {metric}: the selection split {split} gives no {metric} "
            "(pxap needs masks; top1_loc needs predictions)"
        )
    return {
        "metric": metric,
        "score": float(score),
        "epoch": epoch,
        "split": split,
        "wsol_threshold": metrics.get("best_threshold"),
        "paper_threshold": PAPER_THRESHOLD,
        "maxboxacc": metrics.get("maxboxacc"),
        "maxboxacc_v2": metrics.get("maxboxacc_v2"),
        "gt_known_loc": metrics.get("gt_known_loc"),
        "pxap": metrics.get("pxap"),
    }


def checkpoint_threshold(meta: dict[str, Any], protocol: str) -> float | None:
    """The threshold a checkpoint was selected with for ``protocol`` (``wsol``: ``wsol_threshold``, ``paper``:
    ``paper_threshold``), or None when it was not selected by localization."""
    selection = (meta or {}).get("selection") or {}
    value = selection.get("wsol_threshold" if protocol == "wsol" else "paper_threshold")
    return None if value is None else float(value)
