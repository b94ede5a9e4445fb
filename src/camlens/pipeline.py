"""Explaining many image files: load in background threads, batch, explain, write overlays and a summary.

Bad files never stop the run: each becomes one error line in the summary, the rest is still done.
"""

from __future__ import annotations

import csv
import io
import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, cast

import numpy as np
import torch
from torch import Tensor

from .capture import CamlensError
from .data.arrays import VOLUME_SHAPES, input_channels, input_rank, load_array, prepare_volume
from .data.images import DEFAULT_MAX_PIXELS, ImageError, load_image
from .methods.base import ClassSpec, Explainer
from .methods.layered import LayerExplainer
from .distributed import Context, ProgressLog, barrier, gather, resume_entries, shard_batches, write_atomic
from .models import LoadedModel
from .maps import upsample
from .render import overlay, save_image, three_panel_figure, volume_figure, volume_panels
from .targets import TargetRecipe


@dataclass
class RenderOptions:
    colormap: str = "jet"
    alpha: float = 0.5
    classic: bool = False
    figure: bool = False
    image_format: str = "png"


@dataclass
class Summary:
    """Per-image records (predictions, scores, files written) and one line per file that failed."""

    records: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def write(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(out_dir / "summary.json", json.dumps({"images": self.records, "errors": self.errors}, indent=2))
        rows = io.StringIO()
        writer = csv.writer(rows)
        writer.writerow(["file", "rank", "class", "label", "score", "overlay"])
        for rec in self.records:
            for rank, pred in enumerate(rec["explained"], 1):
                score = "" if pred["score"] is None else f"{pred['score']:.6f}"
                writer.writerow([rec["file"], rank, pred["class"], pred["label"], score, pred["overlay"]])
        write_atomic(out_dir / "summary.csv", rows.getvalue())


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "x"


def _load_batches(
    batches: Sequence[Sequence[Path]], workers: int, max_pixels: int, rank: int = 2
) -> Iterator[list[tuple[Path, Tensor | ImageError]]]:
    def load(path: Path) -> Tensor | ImageError:
        try:
            if path.suffix.lower() == ".npy":
                return load_array(path, rank, max_pixels)
            if rank != 2:
                raise ImageError(f"{path}: this model takes {rank}-D inputs: give them as .npy arrays ({VOLUME_SHAPES})")
            return load_image(path, max_pixels)
        except ImageError as err:
            return err

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        loaded = pool.map(load, [path for batch in batches for path in batch])
        for batch in batches:
            yield [(path, next(loaded)) for path in batch]


def output_stems(paths: Sequence[Path]) -> dict[Path, str]:
    """File-name stems for outputs, unique and fixed by the whole path list (so any sharding names alike)."""
    stems: dict[Path, str] = {}
    used: set[str] = set()
    for index, path in enumerate(paths):
        stem = _safe(path.stem)
        stems[path] = stem if stem not in used else f"{stem}_{index}"
        used.add(stems[path])
    return stems


def explain_files(
    loaded: LoadedModel,
    explainer: Explainer,
    paths: Sequence[Path],
    out_dir: Path,
    *,
    classes: ClassSpec = None,
    topk: int = 1,
    batch_size: int = 16,
    workers: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    render: RenderOptions = RenderOptions(),
    run_key: dict | None = None,
    resume: bool = True,
    ctx: Context | None = None,
    on_error: Callable[[str], None] = lambda line: None,
    progress: Callable[[int], None] = lambda n: None,
    target: TargetRecipe | None = None,
) -> Summary:
    """Explain every file: one overlay per image and explained class in ``out_dir``, named
    ``<stem>_<rank>_<label>.<format>``; returns the summary (written by the main rank as summary.json and .csv).

    Under torchrun each rank takes its share of the batches (:func:`camlens.distributed.shard_batches`).
    Finished batches are logged per rank in ``out_dir/.progress``; with ``resume`` a rerun with the same
    ``run_key`` skips them, so an interrupted run completes to the same outputs as an uninterrupted one.
    ``target`` (:func:`camlens.targets.parse_target`) explains that target instead of classes; an image it does
    not fit (a box outside it) is one error line.  A model with 3-D convolutions reads ``.npy`` volumes; their
    maps are written upsampled to the volume as ``.npy``, with a maximum-intensity projection overlay.
    """
    rank = input_rank(loaded.model)
    ctx = ctx or Context(0, 1, 0, next(loaded.model.parameters()).device)
    progress_dir = out_dir / ".progress"
    previous = resume_entries(progress_dir, {**(run_key or {}), "batch_size": batch_size}, resume, ctx)
    finished = {entry["file"] for entry in previous}
    mine = [[paths[i] for i in batch] for _, batch in shard_batches(len(paths), batch_size, ctx)]
    todo = [batch for batch in mine if not all(str(p) in finished for p in batch)]
    progress(sum(map(len, mine)) - sum(map(len, todo)))
    log = ProgressLog(progress_dir, ctx)
    stems = output_stems(paths)
    entries: list[dict] = []
    for batch in _load_batches(todo, workers, max_pixels, rank):
        done: list[dict[str, Any]] = []
        good: list[tuple[Path, Tensor]] = []
        for path, item in batch:
            if not isinstance(item, ImageError) and target is not None:
                try:
                    target.check(int(item.shape[-1]), int(item.shape[-2]))
                except CamlensError as err:
                    item = ImageError(f"{path}: {err}")
            if isinstance(item, ImageError):
                done.append({"file": str(path), "error": str(item)})
                on_error(str(item))
            else:
                good.append((path, item))
        if good:
            x = torch.cat([_model_input(loaded, img.to(ctx.device), rank) for _, img in good])
            per_sample = classes if isinstance(classes, (int, str)) or classes is None else cast(ClassSpec, [classes] * len(good))
            if target is not None:
                if not isinstance(explainer, LayerExplainer):
                    raise CamlensError(f"{type(explainer).__name__} explains classes; a target needs a layer method")
                sizes = [(int(img.shape[-1]), int(img.shape[-2])) for _, img in good]
                res = explainer(x, target=target.build(sizes, x.shape[-2:]))
            else:
                res = explainer(x, per_sample, topk=topk)
            probs = res.logits.float().softmax(-1)
            for i, (path, img) in enumerate(good):
                done.append({"file": str(path), "record": _write_image(loaded, res, probs, i, path, img, stems[path], out_dir, render)})
        log.append(done)
        entries.extend(done)
        progress(len(batch))
    gathered = [e for rank_entries in gather(entries, ctx) for e in rank_entries]
    summary = _merge(paths, previous + gathered)
    if ctx.is_main:
        summary.write(out_dir)
    barrier(ctx)
    return summary


def _merge(paths: Sequence[Path], entries: list[dict]) -> Summary:
    """One summary in input order, whatever ranks and runs the entries came from."""
    by_file = {e["file"]: e for e in entries}
    summary = Summary()
    for path in paths:
        entry = by_file.get(str(path))
        if entry is None:
            continue
        if "error" in entry:
            summary.errors.append(entry["error"])
        else:
            summary.records.append(entry["record"])
    return summary


def _model_input(loaded: LoadedModel, img: Tensor, rank: int) -> Tensor:
    if rank != 3:
        return loaded.preprocess(img)
    pre = loaded.preprocess
    return prepare_volume(img, pre.size, pre.mean, pre.std, input_channels(loaded.model))


def _write_image(loaded, res, probs, i, path, img, stem, out_dir, render: RenderOptions) -> dict:
    explained = []
    volume = img.ndim == 4
    for rank, cls in enumerate(res.classes[i].tolist(), 1):
        value = None if res.target_scores is None else float(res.target_scores[i, rank - 1])
        label = loaded.class_names[cls] if 0 <= cls < len(loaded.class_names) else "target"
        if value is not None and value != value:  # NaN: the target explains nothing here (no label, no match)
            if cls >= 0:  # not a multi-label padding slot: say why there is no overlay
                explained.append({"class": cls, "label": label, "score": None, "overlay": "",
                                  "note": "nothing to explain: no matching box or no pixel of this class"})
            continue
        name = f"{stem}_{rank}_{_safe(label)}.{render.image_format}"
        cam = res.maps[i, rank - 1]
        if volume:  # the map at the volume's size as .npy; the overlay is the maximum-intensity projection
            np.save(out_dir / f"{stem}_{rank}_{_safe(label)}.npy", upsample(cam.float(), tuple(img.shape[-3:])).cpu().numpy())
            save_image(volume_panels(img, cam, colormap=render.colormap, alpha=render.alpha).mip, out_dir / name)
        else:
            save_image(overlay(img, cam, colormap=render.colormap, alpha=render.alpha, classic=render.classic), out_dir / name)
        score = value if value is not None else float(probs[i, cls]) if cls >= 0 else None
        entry = {"class": cls, "label": label, "score": score, "overlay": name}
        if render.figure:
            fig = f"{stem}_{rank}_{_safe(label)}_figure.png"
            figure = volume_figure if volume else three_panel_figure
            title = label if score is None else f"{label} ({score:.2f})"
            figure(img, cam, out_dir / fig, title=title, colormap=render.colormap, alpha=render.alpha)
            entry["figure"] = fig
        explained.append(entry)
    if probs.ndim != 2 or loaded.meta.get("task") in ("detection", "segmentation"):  # no image-level classes
        probs = probs.new_zeros(probs.shape[0], 0)
    top = probs[i].topk(min(5, probs.shape[1]))
    predictions = [{"class": int(c), "label": loaded.class_names[int(c)], "score": float(s)} for s, c in zip(top.values, top.indices)]
    return {"file": str(path), "size": [int(img.shape[-1]), int(img.shape[-2])], "predictions": predictions, "explained": explained}
