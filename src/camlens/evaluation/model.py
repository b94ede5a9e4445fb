"""A model and a CAM method over a dataset (:func:`evaluate_model`): batches from a DataLoader, maps of the
ground-truth class post-processed on the device, fed to the localization accumulators and, optionally, the
faithfulness metrics; sharded across torchrun ranks and resumable from per-batch progress logs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..boxes import scale_boxes, wsol_resize_boxes
from ..constants import PAPER_THRESHOLD
from ..data.samples import Sample
from ..distributed import (
    Context,
    ProgressLog,
    gather,
    pack_counts,
    resume_entries,
    shard_batches,
    sum_tensors,
    unpack_counts,
)
from ..errors import CamlensError
from ..files import output_folder
from ..maps import normalize, upsample
from ..metrics.faithfulness import FaithfulnessConfig, FaithfulnessTotals, faithfulness_scores
from ..reference import REFERENCE, check_protocol, nearest_masks, reference_input, reference_score_maps
from .accumulators import Accumulators
from .baselines import box_baselines
from .batch import explain_batch, image_maps


def _reference_batch(loaded, explainer, samples: Sequence[Sample], labels: Tensor, acc: Accumulators):
    """Add a batch to ``acc`` as Choe et al.'s code evaluates it (:mod:`camlens.reference`): PIL-resized input,
    bicubic maps at the input size, boxes and masks mapped onto that grid.  Returns the input and the result."""
    size = loaded.preprocess.size
    if size is None:
        raise CamlensError("--protocol wsolevaluation evaluates at the model's input size; give --size")
    pre = loaded.preprocess
    x = reference_input([s.image for s in samples], size, pre.mean, pre.std).to(next(loaded.model.parameters()).device)
    res = explainer(x, labels.tolist())
    raw = upsample(res.maps[:, 0].detach().float(), tuple(size), mode="bicubic").cpu()
    maps = reference_score_maps(res.maps[:, 0], size).cpu()
    if all(len(s.boxes) for s in samples):
        boxes = [wsol_resize_boxes(s.boxes, (int(s.image.shape[-1]), int(s.image.shape[-2])), size) for s in samples]
        acc.loc.update(raw, boxes, labels, res.logits.detach().float().cpu())
        acc.box.update(maps, boxes)
    if all(s.mask is not None for s in samples):
        masks = torch.cat([nearest_masks(s.mask[None], size) for s in samples])  # type: ignore[index]
        ignore = torch.cat(
            [
                nearest_masks(s.ignore[None], size) if s.ignore is not None else torch.zeros(1, *size, dtype=torch.bool)
                for s in samples
            ]
        )
        acc.pixel.update(maps, masks, ignore)
    return x, res


def _evaluate_batch(
    loaded,
    explainer,
    batch: Sequence[tuple[int, Sample]],
    acc: Accumulators,
    faithfulness: FaithfulnessConfig | None,
    protocol: str = "camlens",
) -> list[dict]:
    """Add one batch to ``acc``; returns its per-image records (index, ground truth for the baselines, and the
    faithfulness values)."""
    samples = [s for _, s in batch]
    labels = torch.tensor([s.label for s in samples])
    if protocol == REFERENCE:
        x, res = _reference_batch(loaded, explainer, samples, labels, acc)
        return _records(loaded, batch, x, res, labels, faithfulness)
    x, res = explain_batch(loaded, explainer, [s.image for s in samples], labels.tolist())
    raw = image_maps(res.maps, [s.image for s in samples], normalized=False)
    logits = res.logits.detach().float().cpu()
    same_size = len({tuple(m.shape) for m in raw}) == 1
    for group in [list(range(len(samples)))] if same_size else [[i] for i in range(len(samples))]:
        raw_stack = torch.cat([raw[i] for i in group])  # (g, H, W): one map per image
        stack = normalize(raw_stack)
        boxes = [samples[i].boxes for i in group]
        if all(len(b) for b in boxes):  # OpenImages-style folders have masks and no boxes
            acc.loc.update(raw_stack, boxes, labels[group], logits[group])
            acc.box.update(stack, boxes)
        if all(samples[i].mask is not None for i in group):
            # every mask is set (checked above), which mypy cannot see through all()
            ignore = [
                samples[i].ignore if samples[i].ignore is not None else torch.zeros_like(samples[i].mask)  # type: ignore[arg-type]
                for i in group
            ]
            acc.pixel.update(stack, torch.stack([samples[i].mask for i in group]), torch.stack(ignore))  # type: ignore[arg-type, misc]
    return _records(loaded, batch, x, res, labels, faithfulness)


def _records(
    loaded, batch: Sequence[tuple[int, Sample]], x: Tensor, res, labels: Tensor, faithfulness: FaithfulnessConfig | None
) -> list[dict]:
    """Each image's record: index, ground truth for the baselines, and the faithfulness values."""
    samples = [s for _, s in batch]
    scores: dict[str, Tensor] = {}
    if faithfulness is not None:
        input_boxes = [scale_boxes(s.boxes, s.image.shape[-2:], x.shape[-2:]).to(x.device) for s in samples]
        with torch.no_grad():
            scores = faithfulness_scores(
                loaded.model, x, res.maps[:, 0].detach(), labels.to(x.device), boxes=input_boxes, config=faithfulness
            )
    return [
        {
            "index": index,
            "label": s.label,
            "boxes": s.boxes.tolist(),
            "size": [int(s.image.shape[-1]), int(s.image.shape[-2])],
            "faithfulness": {k: float(v[i]) for k, v in scores.items()},
        }
        for i, (index, s) in enumerate(batch)
    ]


def evaluate_model(
    loaded,
    explainer,
    samples: torch.utils.data.Dataset,
    *,
    batch_size: int = 32,
    thresholds: np.ndarray | None = None,
    paper_threshold: float = PAPER_THRESHOLD,
    faithfulness: FaithfulnessConfig | None = None,
    workers: int = 0,
    ctx: Context | None = None,
    progress_dir: str | Path | None = None,
    run_key: dict | None = None,
    resume: bool = True,
    progress: Callable[[int], None] = lambda n: None,
    fixed_threshold: float | None = None,
    protocol: str = "camlens",
    overwrite: bool = False,
) -> dict:
    """Every localization metric of ``explainer`` (a CAM method on ``loaded.model``) on ``samples`` (a dataset of
    :class:`Sample`), with the box baselines on the same ground truth; with ``faithfulness``, also the means of
    :func:`camlens.metrics.faithfulness_scores` (pointing game against the boxes, scaled to the model input).
    Maps are those of the ground-truth class, for the localization and faithfulness metrics alike.

    Under torchrun each rank runs its share of the batches (:func:`camlens.distributed.shard_batches`) and the
    ranks' integer counts are summed, so the metrics equal a single-process run's exactly.  With
    ``progress_dir``, every finished batch is logged there (counts and per-image values); a rerun with the same
    ``run_key`` and ``resume`` skips those batches and gives the same result as an uninterrupted run.
    ``fixed_threshold`` (e.g. the one a checkpoint was selected with) adds the box accuracy at that threshold
    (``box_acc_at_fixed_threshold``).  ``protocol="wsolevaluation"`` evaluates as Choe et al.'s code does
    (:mod:`camlens.reference`): at the model's input size, bicubic maps, their box and mask resizing.  The
    progress of a run with another ``run_key`` in ``progress_dir`` is kept (:class:`CamlensError`) unless
    ``overwrite``.
    """
    check_protocol(protocol)
    ctx = ctx or Context(0, 1, 0, next(loaded.model.parameters()).device)
    create = lambda: Accumulators.create(thresholds, paper_threshold)  # noqa: E731
    # samples are map-style datasets, which have __len__ (torch's Dataset type does not declare it)
    key = {**(run_key or {}), "batch_size": batch_size, "num_images": len(samples)}  # type: ignore[arg-type]
    previous = [] if progress_dir is None else resume_entries(output_folder(progress_dir), key, resume, ctx, overwrite)
    finished = {e["batch"] for e in previous}
    mine = shard_batches(len(samples), batch_size, ctx)  # type: ignore[arg-type]
    todo = [(j, batch) for j, batch in mine if j not in finished]
    progress(sum(len(b) for j, b in mine if j in finished))
    log = ProgressLog(Path(progress_dir), ctx) if progress_dir is not None else None
    total = create()
    records: list[dict] = []
    if ctx.is_main:  # earlier runs' batches are counted once, by the main rank
        for entry in {e["batch"]: e for e in previous}.values():
            part = create()
            part.load_state_dict(unpack_counts(entry["counts"]))
            total.merge(part)
            records.extend(entry["images"])
    loader = torch.utils.data.DataLoader(
        _Indexed(samples),
        batch_sampler=[batch for _, batch in todo],
        collate_fn=list,
        num_workers=workers,
        pin_memory=ctx.device.type == "cuda",
    )
    with torch.inference_mode(not explainer.needs_gradients):
        for (j, _), batch in zip(todo, loader):
            part = create()
            batch_records = _evaluate_batch(loaded, explainer, batch, part, faithfulness, protocol)
            total.merge(part)
            records.extend(batch_records)
            if log is not None:
                log.append([{"batch": j, "counts": pack_counts(part.state_dict()), "images": batch_records}])
            progress(len(batch))
    total.load_state_dict(sum_tensors(total.state_dict(), ctx))
    records = sorted((r for rank in gather(records, ctx) for r in rank), key=lambda r: r["index"])
    result = total.compute()
    result["protocol"] = protocol
    if fixed_threshold is not None:
        result["fixed_threshold"] = fixed_threshold
        result["box_acc_at_fixed_threshold"] = total.box.accuracy_at(fixed_threshold)
    result["num_images"] = len(records)
    boxed = [r for r in records if r["boxes"]]
    gt_boxes = [torch.tensor(r["boxes"], dtype=torch.float64) for r in boxed]
    result["baselines"] = box_baselines(gt_boxes, [tuple(r["size"]) for r in boxed]) if boxed else {}
    if faithfulness is not None:
        result.update(_faithfulness_means(records))
    return result


class _Indexed(torch.utils.data.Dataset):
    """(index, sample) pairs, so a batch knows which images it holds."""

    def __init__(self, samples: torch.utils.data.Dataset) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[int, Sample]:
        return i, self.samples[i]


def _faithfulness_means(records: Sequence[dict]) -> dict[str, float | None]:
    """Dataset values from per-image ones, summed in image order (so any sharding gives the same floats)."""
    totals = FaithfulnessTotals()
    for r in records:
        values = r["faithfulness"]
        totals.update({k: torch.tensor([v], dtype=torch.float64) for k, v in values.items()}, [r["label"]])
    return {k: (None if math.isnan(v) else v) for k, v in totals.summary().items()}
