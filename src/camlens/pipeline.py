"""Explaining many image files: decode in background threads, batch, explain, render and write overlays in
background threads while the model runs the next batch, and a summary.

Bad files never stop the run: each becomes one error line in the summary, the rest is still done.

Only the model and what must stay on its device run on the calling thread (the batch's preprocessing, the
explainer, the maps' upsampling to colormap indices).  Decoding (PIL) and rendering (numpy table lookups,
:mod:`camlens.blend`; :mod:`camlens.png` or PIL's JPEG encoder) run in threads, release the GIL and touch no torch
operation, so they do not compete for the intra-op threads the model runs on (the optional three-panel figure
aside, drawn by matplotlib in a single render thread).  Decoding runs at most AHEAD batches ahead of the model and
rendering at most AHEAD batches behind it, so memory stays bounded on any number of files.  A batch is logged as
done (for resuming) once its files are written.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, cast

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .blend import blend, blend_table, colormap_index
from .data.images import DEFAULT_MAX_PIXELS, ImageError, array_to_tensor, read_rgb
from .methods.base import CAMResult, ClassSpec, Explainer
from .distributed import Context, ProgressLog, barrier, gather, resume_entries, shard_batches, write_atomic
from .models import LoadedModel
from .png import write_png
from .render import three_panel_figure

AHEAD = 2  # batches decoded ahead of the model, and batches whose overlays may still be rendering behind it
JPEG_QUALITY = 92


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


Decoded = list[tuple[Path, "np.ndarray | ImageError"]]


def _decoded_batches(batches: Sequence[Sequence[Path]], pool: ThreadPoolExecutor, max_pixels: int) -> Iterator[Decoded]:
    """The batches' images as (H, W, 3) uint8 arrays (or the error), decoded in ``pool`` up to AHEAD batches ahead."""
    def decode(path: Path) -> np.ndarray | ImageError:
        try:
            return read_rgb(path, max_pixels)
        except ImageError as err:
            return err

    queued: deque[list[tuple[Path, Future[np.ndarray | ImageError]]]] = deque()
    for batch in [*batches, *([None] * AHEAD)]:
        if batch is not None:
            queued.append([(path, pool.submit(decode, path)) for path in batch])
        if len(queued) > AHEAD or (batch is None and queued):
            yield [(path, future.result()) for path, future in queued.popleft()]


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
) -> Summary:
    """Explain every file: one overlay per image and explained class in ``out_dir``, named
    ``<stem>_<rank>_<label>.<format>``; returns the summary (written by the main rank as summary.json and .csv).

    Under torchrun each rank takes its share of the batches (:func:`camlens.distributed.shard_batches`).
    Finished batches are logged per rank in ``out_dir/.progress``; with ``resume`` a rerun with the same
    ``run_key`` skips them, so an interrupted run completes to the same outputs as an uninterrupted one.
    """
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
    rendering: deque[tuple[list[dict], list[Future[Any]], int]] = deque()

    def finish(keep: int) -> None:
        """Log the oldest batches, in order, once their files are written, until ``keep`` are left in flight."""
        while len(rendering) > keep:
            done, futures, count = rendering.popleft()
            for future in futures:
                future.result()  # a failed write raises here, before its batch is logged as done
            log.append(done)
            entries.extend(done)
            progress(count)

    blend_table(render.colormap, render.alpha, render.classic)  # a bad colormap or alpha fails before any work
    out_dir.mkdir(parents=True, exist_ok=True)
    # the three-panel figure draws with pyplot, which is not thread-safe: one render thread then
    with ThreadPoolExecutor(max(1, workers)) as decode_pool, \
            ThreadPoolExecutor(1 if render.figure else max(1, workers)) as render_pool:
        for batch in _decoded_batches(todo, decode_pool, max_pixels):
            done: list[dict] = []
            good: list[tuple[Path, np.ndarray]] = []
            for path, item in batch:
                if isinstance(item, ImageError):
                    done.append({"file": str(path), "error": str(item)})
                    on_error(str(item))
                else:
                    good.append((path, item))
            futures: list[Future[Any]] = []
            if good:
                x = torch.cat([loaded.preprocess(array_to_tensor(rgb).to(ctx.device)) for _, rgb in good])
                per_sample = classes if isinstance(classes, (int, str)) or classes is None else cast(ClassSpec, [classes] * len(good))
                res = explainer(x, per_sample, topk=topk)
                probs = res.logits.float().softmax(-1)
                for i, (path, rgb) in enumerate(good):
                    record = _image_record(loaded, res, probs, i, path, rgb, stems[path], render)
                    done.append({"file": str(path), "record": record})
                    futures += _write_image(record, res, i, rgb, out_dir, render, render_pool)
            rendering.append((done, futures, len(batch)))
            finish(keep=AHEAD)
        finish(keep=0)
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


def _image_record(loaded: LoadedModel, res: CAMResult, probs: Tensor, i: int, path: Path, rgb: np.ndarray,
                  stem: str, render: RenderOptions) -> dict:
    explained: list[dict[str, Any]] = []
    for rank, cls in enumerate(res.classes[i].tolist(), 1):
        label = loaded.class_names[cls] if cls >= 0 else "target"
        entry: dict[str, Any] = {"class": cls, "label": label, "score": float(probs[i, cls]) if cls >= 0 else None,
                                 "overlay": f"{stem}_{rank}_{_safe(label)}.{render.image_format}"}
        if render.figure:
            entry["figure"] = f"{stem}_{rank}_{_safe(label)}_figure.png"
        explained.append(entry)
    top = probs[i].topk(min(5, probs.shape[1]))
    predictions = [{"class": int(c), "label": loaded.class_names[int(c)], "score": float(s)} for s, c in zip(top.values, top.indices)]
    return {"file": str(path), "size": [rgb.shape[1], rgb.shape[0]], "predictions": predictions, "explained": explained}


def _write_image(record: dict, res: CAMResult, i: int, rgb: np.ndarray, out_dir: Path, render: RenderOptions,
                 pool: ThreadPoolExecutor) -> list[Future[Any]]:
    """Queue the files of one image in ``pool``: its overlays (colormap indices computed here, on the maps'
    device, the blend and encoding in the pool) and figures."""
    futures: list[Future[Any]] = []
    for rank, entry in enumerate(record["explained"]):
        cam = res.maps[i, rank]
        index = colormap_index(cam, (rgb.shape[0], rgb.shape[1]))
        futures.append(pool.submit(_save_overlay, rgb, index, out_dir / entry["overlay"], render))
        if render.figure:
            title = f"{entry['label']} ({entry['score']:.2f})"
            futures.append(pool.submit(three_panel_figure, array_to_tensor(rgb), cam, out_dir / entry["figure"],
                                       title=title, colormap=render.colormap, alpha=render.alpha))
    return futures


def _save_overlay(rgb: np.ndarray, index: np.ndarray, path: Path, render: RenderOptions) -> None:
    """The overlay :func:`camlens.render.overlay` gives, written as PNG (:mod:`camlens.png`) or JPEG."""
    pixels = blend(rgb, index, render.colormap, render.alpha, render.classic)
    if render.image_format == "png":
        write_png(pixels, path)
    else:
        Image.fromarray(pixels).save(path, "JPEG", quality=JPEG_QUALITY)
