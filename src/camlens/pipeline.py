"""Explaining many files (images, ``.npy`` images and volumes): decode in background threads, batch, explain,
render and write overlays in background threads while the model runs the next batch, and a summary.

Bad files never stop the run: each becomes one error line in the summary, the rest is still done.

Only the model and what needs torch run on the calling thread (reading ``.npy`` arrays into tensors, the batch's
preprocessing, the explainer, the maps' upsampling to colormap indices, and the overlays of ``.npy`` inputs and
volumes, whose pixels are not bytes).  Decoding image files (PIL) and rendering them (numpy table lookups,
:mod:`camlens.blend`; :mod:`camlens.png` or PIL's JPEG encoder) run in threads, release the GIL and touch no torch
operation, so they do not compete for the intra-op threads the model runs on (the optional figures aside, drawn
by matplotlib in a single render thread).  Decoding runs at most AHEAD batches ahead of the model and rendering at
most AHEAD batches behind it, so memory stays bounded on any number of files.  A batch is logged as done (for
resuming) once its files are written.
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
from .data.arrays import VOLUME_SHAPES, input_channels, input_rank, load_array, prepare_volume
from .data.images import DEFAULT_MAX_PIXELS, ImageError, array_to_tensor, read_rgb
from .distributed import Context, ProgressLog, barrier, gather, resume_entries, shard_batches, write_atomic
from .errors import CamlensError
from .maps import upsample
from .methods.base import CAMResult, ClassSpec, Explainer
from .methods.layered import LayerExplainer
from .models import LoadedModel
from .png import write_png
from .render import JPEG_QUALITY, overlay, three_panel_figure, to_bytes, volume_figure, volume_panels
from .targets import TargetRecipe

AHEAD = 2  # batches decoded ahead of the model, and batches whose overlays may still be rendering behind it


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


# an image file's (H, W, 3) uint8 pixels, a .npy file still to read (on the main thread: torch), or the error
Decoded = list[tuple[Path, "np.ndarray | Path | ImageError"]]


def _decoded_batches(batches: Sequence[Sequence[Path]], pool: ThreadPoolExecutor, max_pixels: int,
                     rank: int) -> Iterator[Decoded]:
    """The batches' image files decoded in ``pool`` up to AHEAD batches ahead (``.npy`` files are passed on)."""
    def decode(path: Path) -> np.ndarray | Path | ImageError:
        if path.suffix.lower() == ".npy":
            return path
        if rank != 2:
            return ImageError(f"{path}: this model takes {rank}-D inputs: give them as .npy arrays ({VOLUME_SHAPES})")
        try:
            return read_rgb(path, max_pixels)
        except ImageError as err:
            return err

    queued: deque[list[tuple[Path, Future[np.ndarray | Path | ImageError]]]] = deque()
    for batch in [*batches, *([None] * AHEAD)]:
        if batch is not None:
            queued.append([(path, pool.submit(decode, path)) for path in batch])
        if len(queued) > AHEAD or (batch is None and queued):
            yield [(path, future.result()) for path, future in queued.popleft()]


def _as_input(path: Path, item: np.ndarray | Path | ImageError, rank: int, max_pixels: int,
              target: TargetRecipe | None) -> tuple[Tensor, np.ndarray | None] | ImageError:
    """The image (3, H, W) or volume (C, D, H, W) in [0, 1], with an image file's bytes; or why it cannot be used."""
    if isinstance(item, ImageError):
        return item
    try:
        img, rgb = (load_array(item, rank, max_pixels), None) if isinstance(item, Path) else (array_to_tensor(item), item)
    except ImageError as err:
        return err
    if target is not None:
        try:
            target.check(int(img.shape[-1]), int(img.shape[-2]))
        except CamlensError as err:
            return ImageError(f"{path}: {err}")
    return img, rgb


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
    render: RenderOptions = RenderOptions(),  # noqa: B008 (only read, never changed)
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
    if target is not None and not isinstance(explainer, LayerExplainer):
        raise CamlensError(f"{type(explainer).__name__} explains classes; a target needs a layer method")
    layered = explainer if isinstance(explainer, LayerExplainer) else None
    blend_table(render.colormap, render.alpha, render.classic)  # a bad colormap or alpha fails before any work
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

    out_dir.mkdir(parents=True, exist_ok=True)
    # the figures draw with pyplot, which is not thread-safe: one render thread then
    with ThreadPoolExecutor(max(1, workers)) as decode_pool, \
            ThreadPoolExecutor(1 if render.figure else max(1, workers)) as render_pool:
        for batch in _decoded_batches(todo, decode_pool, max_pixels, rank):
            done: list[dict] = []
            good: list[tuple[Path, Tensor, np.ndarray | None]] = []
            for path, decoded in batch:
                item = _as_input(path, decoded, rank, max_pixels, target)
                if isinstance(item, ImageError):
                    done.append({"file": str(path), "error": str(item)})
                    on_error(str(item))
                else:
                    good.append((path, *item))
            futures: list[Future[Any]] = []
            if good:
                x = torch.cat([_model_input(loaded, img.to(ctx.device), rank) for _, img, _ in good])
                if target is not None and layered is not None:
                    sizes = [(int(img.shape[-1]), int(img.shape[-2])) for _, img, _ in good]
                    res = layered(x, target=target.build(sizes, x.shape[-2:]))
                else:
                    per_sample = classes if isinstance(classes, (int, str)) or classes is None else cast(ClassSpec, [classes] * len(good))
                    res = explainer(x, per_sample, topk=topk)
                probs = res.logits.float().softmax(-1)
                for i, (path, img, rgb) in enumerate(good):
                    record, slots = _image_record(loaded, res, probs, i, path, img, stems[path], render)
                    done.append({"file": str(path), "record": record})
                    futures += _write_image(slots, res, i, img, rgb, out_dir, render, render_pool)
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


def _model_input(loaded: LoadedModel, img: Tensor, rank: int) -> Tensor:
    if rank != 3:
        return loaded.preprocess(img)
    pre = loaded.preprocess
    return prepare_volume(img, pre.size, pre.mean, pre.std, input_channels(loaded.model))


def _image_record(loaded: LoadedModel, res: CAMResult, probs: Tensor, i: int, path: Path, img: Tensor, stem: str,
                  render: RenderOptions) -> tuple[dict, list[tuple[int, dict[str, Any]]]]:
    """The image's summary record, and the (map slot, entry) of each explained class that gets files."""
    explained: list[dict[str, Any]] = []
    slots: list[tuple[int, dict[str, Any]]] = []
    for slot, cls in enumerate(res.classes[i].tolist()):
        value = None if res.target_scores is None else float(res.target_scores[i, slot])
        label = loaded.class_names[cls] if 0 <= cls < len(loaded.class_names) else "target"
        if value is not None and value != value:  # NaN: the target explains nothing here (no label, no match)
            if cls >= 0:  # not a multi-label padding slot: say why there is no overlay
                explained.append({"class": cls, "label": label, "score": None, "overlay": "",
                                  "note": "nothing to explain: no matching box or no pixel of this class"})
            continue
        name = f"{stem}_{slot + 1}_{_safe(label)}"
        score = value if value is not None else float(probs[i, cls]) if cls >= 0 else None
        entry: dict[str, Any] = {"class": cls, "label": label, "score": score,
                                 "overlay": f"{name}.{render.image_format}"}
        if render.figure:
            entry["figure"] = f"{name}_figure.png"
        explained.append(entry)
        slots.append((slot, entry))
    if probs.ndim != 2 or loaded.meta.get("task") in ("detection", "segmentation"):  # no image-level classes
        probs = probs.new_zeros(probs.shape[0], 0)
    top = probs[i].topk(min(5, probs.shape[1]))
    predictions = [{"class": int(c), "label": loaded.class_names[int(c)], "score": float(s)} for s, c in zip(top.values, top.indices)]
    record = {"file": str(path), "size": [int(img.shape[-1]), int(img.shape[-2])], "predictions": predictions,
              "explained": explained}
    return record, slots


def _write_image(slots: list[tuple[int, dict[str, Any]]], res: CAMResult, i: int, img: Tensor, rgb: np.ndarray | None,
                 out_dir: Path, render: RenderOptions, pool: ThreadPoolExecutor) -> list[Future[Any]]:
    """Queue the files of one input in ``pool``.  An image file's overlay: colormap indices computed here (on the
    maps' device), the blend and encoding in the pool.  A ``.npy`` image's or a volume's overlay is rendered here
    by :mod:`camlens.render` (its pixels are not bytes) and encoded in the pool; a volume's map is upsampled to
    the volume here and saved as ``.npy`` in the pool."""
    futures: list[Future[Any]] = []
    volume = img.ndim == 4
    for slot, entry in slots:
        cam = res.maps[i, slot]
        path = out_dir / entry["overlay"]
        if volume:
            up = upsample(cam.float(), tuple(img.shape[-3:])).cpu().numpy()
            futures.append(pool.submit(np.save, path.with_suffix(".npy"), up))
            mip = volume_panels(img, cam, colormap=render.colormap, alpha=render.alpha).mip
            futures.append(pool.submit(_save_pixels, _bytes(mip), path, render.image_format))
        elif rgb is None:
            pixels = _bytes(overlay(img, cam, colormap=render.colormap, alpha=render.alpha, classic=render.classic))
            futures.append(pool.submit(_save_pixels, pixels, path, render.image_format))
        else:
            index = colormap_index(cam, (rgb.shape[0], rgb.shape[1]))
            futures.append(pool.submit(_save_overlay, rgb, index, path, render))
        if render.figure:
            score = entry["score"]
            title = entry["label"] if score is None else f"{entry['label']} ({score:.2f})"
            figure = volume_figure if volume else three_panel_figure
            futures.append(pool.submit(figure, img, cam, out_dir / entry["figure"], title=title,
                                       colormap=render.colormap, alpha=render.alpha))
    return futures


def _bytes(image: Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] as (H, W, 3) uint8, the bytes :func:`camlens.render.to_pil` gives."""
    return np.ascontiguousarray(to_bytes(image.detach()).cpu().permute(1, 2, 0).numpy())


def _save_overlay(rgb: np.ndarray, index: np.ndarray, path: Path, render: RenderOptions) -> None:
    """The overlay :func:`camlens.render.overlay` gives, written as PNG (:mod:`camlens.png`) or JPEG."""
    _save_pixels(blend(rgb, index, render.colormap, render.alpha, render.classic), path, render.image_format)


def _save_pixels(pixels: np.ndarray, path: Path, image_format: str) -> None:
    if image_format == "png":
        write_png(pixels, path)
    else:
        Image.fromarray(pixels).save(path, "JPEG", quality=JPEG_QUALITY)
