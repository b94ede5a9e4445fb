"""Explaining many files (images, ``.npy`` images and volumes): decode in background threads, batch, explain,
render and write overlays in background threads while the model runs the next batch, and a summary.

Bad files never stop the run: each becomes one error line, and one ``skipped`` entry (path and reason) in the
summary, the rest is still done; so does an item whose rendering fails.  Every file is written atomically, never
through a symlink (:mod:`camlens.files`), and the files of an earlier run with other options are kept unless asked
(``overwrite``).

Only the model and what needs torch run on the calling thread (reading ``.npy`` arrays into tensors, the batch's
preprocessing, the explainer, the maps' upsampling to colormap indices, and the overlays of ``.npy`` inputs and
volumes, whose pixels are not bytes).  Decoding image files (PIL) and rendering them (numpy table lookups,
:mod:`camlens.blend`; :mod:`camlens.png` or PIL's JPEG encoder) run in threads, release the GIL and touch no torch
operation, so they do not compete for the intra-op threads the model runs on (the optional figures aside, drawn
by matplotlib in a single render thread).  Decoding runs at most AHEAD batches ahead of the model and rendering at
most AHEAD batches behind it, so memory stays bounded on any number of files; and the image pixels held from
decoding until their overlays are written are bounded by a :class:`~camlens.data.images.DecodeBudget`: a batch
whose images do not fit is run in parts (each part a smaller batch), so memory is bounded on any image sizes
too.  A part is logged as done (for resuming) once its files are written.
"""

from __future__ import annotations

import csv
import io
import json
import re
import threading
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
from .data.images import DEFAULT_MAX_PIXELS, DecodeBudget, ImageError, array_to_tensor, image_pixels, read_rgb
from .distributed import Context, ProgressLog, barrier, earlier_run, gather, resume_entries, shard_batches
from .errors import CamlensError
from .files import OutputError, atomic_open, csv_text, output_folder, remove_temporaries, write_atomic
from .maps import normalize, upsample
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


SUMMARIES = ("summary.json", "summary.csv")
KEPT = "kept.json"  # in .progress: the files that were in the output folder before the run, never replaced


@dataclass
class Summary:
    """Per-image records (predictions, scores, files written), one line per file that failed, and the same
    failures as ``skipped`` entries ``{"path", "reason"}``."""

    records: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    def skip(self, path: str, line: str) -> None:
        """Record ``path`` as skipped; ``line`` is its error line (``path: reason``)."""
        self.errors.append(line)
        self.skipped.append({"path": path, "reason": line.removeprefix(f"{path}: ")})

    def write(self, out_dir: Path) -> None:
        """summary.json and summary.csv in ``out_dir``; text cells of the CSV neutralized (:func:`csv_text`)."""
        output_folder(out_dir)
        write_atomic(
            out_dir / SUMMARIES[0],
            json.dumps({"images": self.records, "errors": self.errors, "skipped": self.skipped}, indent=2),
        )
        rows = io.StringIO()
        writer = csv.writer(rows)
        writer.writerow(["file", "rank", "class", "label", "score", "overlay"])
        for rec in self.records:
            for rank, pred in enumerate(rec["explained"], 1):
                score = "" if pred["score"] is None else f"{pred['score']:.6f}"
                writer.writerow(
                    [
                        csv_text(rec["file"]),
                        rank,
                        pred["class"],
                        csv_text(pred["label"]),
                        score,
                        csv_text(pred["overlay"]),
                    ]
                )
        write_atomic(out_dir / SUMMARIES[1], rows.getvalue())


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "x"


# an image file's (H, W, 3) uint8 pixels, a .npy file still to read (on the main thread: torch), or the error; and
# the pixels it holds in the decode budget
Decoded = list[tuple[Path, "np.ndarray | Path | ImageError", int]]


def _decoded_batches(
    batches: Sequence[Sequence[Path]], pool: ThreadPoolExecutor, max_pixels: int, rank: int, budget: DecodeBudget
) -> Iterator[Decoded]:
    """The batches' image files decoded in ``pool`` up to AHEAD parts ahead (``.npy`` files are passed on).

    Each image file's pixels (from its header) are taken from ``budget`` before it is queued for decoding; the
    caller gives them back once the image's files are written.  When the next image does not fit, the images
    queued so far are handed out first (the current batch's as a part of it), so the caller can run them and
    give their pixels back; a part is never waited on while it holds pixels that the next image needs."""

    def decode(path: Path) -> np.ndarray | Path | ImageError:
        if path.suffix.lower() == ".npy":
            return path
        if rank != 2:
            return ImageError(f"{path}: this model takes {rank}-D inputs: give them as .npy arrays ({VOLUME_SHAPES})")
        try:
            return read_rgb(path, max_pixels)
        except ImageError as err:
            return err

    queued: deque[list[tuple[Path, Future[np.ndarray | Path | ImageError], int]]] = deque()

    def oldest() -> Decoded:
        return [(path, future.result(), pixels) for path, future, pixels in queued.popleft()]

    for batch in [*batches, *([None] * AHEAD)]:
        if batch is not None:
            part: list[tuple[Path, Future[np.ndarray | Path | ImageError], int]] = []
            for path in batch:
                pixels = 0 if path.suffix.lower() == ".npy" or rank != 2 else min(image_pixels(path), max_pixels)
                while not budget.try_acquire(pixels):
                    if part:
                        queued.append(part)
                        part = []
                    if not queued:  # only overlays being written hold pixels now: wait for them
                        budget.acquire(pixels)
                        break
                    yield oldest()
                part.append((path, pool.submit(decode, path), pixels))
            if part:
                queued.append(part)
        while len(queued) > AHEAD or (batch is None and queued):
            yield oldest()


def _as_input(
    path: Path, item: np.ndarray | Path | ImageError, rank: int, max_pixels: int, target: TargetRecipe | None
) -> tuple[Tensor, np.ndarray | None] | ImageError:
    """The image (3, H, W) or volume (C, D, H, W) in [0, 1], with an image file's bytes; or why it cannot be used."""
    if isinstance(item, ImageError):
        return item
    try:
        img, rgb = (
            (load_array(item, rank, max_pixels), None) if isinstance(item, Path) else (array_to_tensor(item), item)
        )
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
    decode_budget: int | None = None,
    overwrite: bool = False,
    input_errors: Sequence[str] = (),
    save_maps: dict[Path, Path] | None = None,
) -> Summary:
    """Explain every file: one overlay per image and explained class in ``out_dir``, named
    ``<stem>_<rank>_<label>.<format>``; returns the summary (written by the main rank as summary.json and .csv).

    Under torchrun each rank takes its share of the batches (:func:`camlens.distributed.shard_batches`).
    Finished batches are logged per rank in ``out_dir/.progress``; with ``resume`` a rerun with the same
    ``run_key`` skips them, so an interrupted run completes to the same outputs as an uninterrupted one.
    ``target`` (:func:`camlens.targets.parse_target`) explains that target instead of classes; an image it does
    not fit (a box outside it) is one error line.  A model with 3-D convolutions reads ``.npy`` volumes; their
    maps are written upsampled to the volume as ``.npy``, with a maximum-intensity projection overlay.
    Image pixels held at once (decoded, and not yet written as overlays) are bounded by ``decode_budget``
    (default: :meth:`DecodeBudget.for_batches` of ``batch_size``, the model's input and ``max_pixels``).

    Files in ``out_dir`` are replaced only when they are this run's (resuming, or ``--restart`` with the same
    ``run_key``) or with ``overwrite``; otherwise an earlier run's files are kept (:class:`CamlensError`, before
    any work when its options differ or it left a summary).  ``input_errors`` (``spec: reason`` lines of inputs
    skipped before this call, such as :func:`camlens.data.images.expand_paths` gives) join the summary's
    ``skipped`` list.
    ``save_maps`` names a ``.npy`` file for each image: its first explained map, upsampled to the image and min-max
    normalized (float32 (H, W) in [0, 1]), as ``camlens evaluate --maps`` scores maps.
    """
    rank = input_rank(loaded.model)
    ctx = ctx or Context(0, 1, 0, next(loaded.model.parameters()).device)
    if target is not None and not isinstance(explainer, LayerExplainer):
        raise CamlensError(f"{type(explainer).__name__} explains classes; a target needs a layer method")
    layered = explainer if isinstance(explainer, LayerExplainer) else None
    blend_table(render.colormap, render.alpha, render.classic)  # a bad colormap or alpha fails before any work
    progress_dir = output_folder(output_folder(out_dir) / ".progress")
    key = {**(run_key or {}), "batch_size": batch_size}
    taken = _kept_files(out_dir, progress_dir, key, overwrite)
    if taken & set(SUMMARIES):
        raise OutputError(
            f"{out_dir} holds the summary of an earlier run; keep it by choosing another --out, or "
            "pass --overwrite to replace it"
        )
    previous = resume_entries(progress_dir, key, resume, ctx, overwrite)
    if ctx.is_main:
        write_atomic(progress_dir / KEPT, json.dumps(sorted(taken)))
        remove_temporaries(out_dir)
    finished = {entry["file"] for entry in previous}
    mine = [[paths[i] for i in batch] for _, batch in shard_batches(len(paths), batch_size, ctx)]
    todo = [batch for batch in mine if not all(str(p) in finished for p in batch)]
    progress(sum(map(len, mine)) - sum(map(len, todo)))
    log = ProgressLog(progress_dir, ctx)
    budget = (
        DecodeBudget(decode_budget)
        if decode_budget
        else DecodeBudget.for_batches(batch_size, loaded.preprocess.size, max_pixels)
    )
    stems = output_stems(paths)
    entries: list[dict] = []
    rendering: deque[tuple[list[dict], list[tuple[int, Future[Any]]], int]] = deque()

    def finish(keep: int) -> None:
        """Log the oldest batches, in order, once their files are written, until ``keep`` are left in flight."""
        while len(rendering) > keep:
            done, futures, count = rendering.popleft()
            for index, future in futures:
                try:
                    future.result()  # a failed write raises here, before its batch is logged as done
                except (OutputError, OSError, MemoryError):
                    raise
                except Exception as err:  # this item could not be drawn (a figure, a colormap): one line
                    if "error" not in done[index]:
                        line = f"{done[index]['file']}: could not render ({type(err).__name__}: {err})"
                        done[index] = {"file": done[index]["file"], "error": line}
                        on_error(line)
            log.append(done)
            entries.extend(done)
            progress(count)

    # the figures draw with pyplot, which is not thread-safe: one render thread then
    with (
        ThreadPoolExecutor(max(1, workers)) as decode_pool,
        ThreadPoolExecutor(1 if render.figure else max(1, workers)) as render_pool,
    ):

        def run(batch: Decoded) -> tuple[list[dict], list[tuple[int, Future[Any]]]]:
            """Explain one part and queue its files; the part's pixels are dropped here (its list emptied, no
            local left), so that only the render queue holds them, as the budget counts."""
            done: list[dict] = []
            good: list[tuple[Path, Tensor, np.ndarray | None]] = []
            held: list[int] = []
            for path, decoded, pixels in batch:
                item = _as_input(path, decoded, rank, max_pixels, target)
                if isinstance(item, ImageError):
                    budget.release(pixels)
                    done.append({"file": str(path), "error": str(item)})
                    on_error(str(item))
                else:
                    good.append((path, *item))
                    held.append(pixels)
            batch.clear()
            futures: list[tuple[int, Future[Any]]] = []  # (index in done, a file of that item)
            if good:
                x = torch.cat([_model_input(loaded, img.to(ctx.device), rank) for _, img, _ in good])
                if target is not None and layered is not None:
                    sizes = [(int(img.shape[-1]), int(img.shape[-2])) for _, img, _ in good]
                    res = layered(x, target=target.build(sizes, x.shape[-2:]))
                else:
                    per_sample = (
                        classes
                        if isinstance(classes, (int, str)) or classes is None
                        else cast(ClassSpec, [classes] * len(good))
                    )
                    res = explainer(x, per_sample, topk=topk)
                probs = res.logits.float().softmax(-1)
                for i, (path, img, rgb) in enumerate(good):
                    record, slots = _image_record(loaded, res, probs, i, path, img, stems[path], render)
                    _check_free(out_dir, slots, taken)
                    written = _write_image(slots, res, i, img, rgb, out_dir, render, render_pool)
                    if save_maps is not None and img.ndim == 3 and slots and slots[0][0] == 0:
                        score_map = normalize(upsample(res.maps[i, 0].detach().float(), tuple(img.shape[-2:])))
                        written.append(render_pool.submit(_save_map, save_maps[path], score_map.cpu().numpy()))
                    _release_when_done(budget, held[i], written)
                    futures += [(len(done), future) for future in written]
                    done.append({"file": str(path), "record": record})
            return done, futures

        for batch in _decoded_batches(todo, decode_pool, max_pixels, rank, budget):
            count = len(batch)
            done, futures = run(batch)
            rendering.append((done, futures, count))
            finish(keep=AHEAD)
        finish(keep=0)
    gathered = [e for rank_entries in gather(entries, ctx) for e in rank_entries]
    summary = _merge(paths, previous + gathered)
    for line in input_errors:
        spec, _, reason = line.rpartition(": ")
        summary.errors.append(line)
        summary.skipped.append({"path": spec, "reason": reason})
    if ctx.is_main:
        summary.write(out_dir)  # checked above: a summary there is this run's
    barrier(ctx)
    return summary


def _release_when_done(budget: DecodeBudget, pixels: int, futures: list[Future[Any]]) -> None:
    """Give ``pixels`` back to ``budget`` once every one of ``futures`` (an image's files) is done."""
    left = [len(futures)]
    lock = threading.Lock()

    def one_done(_: Future[Any]) -> None:
        with lock:  # the futures finish in different render threads
            left[0] -= 1
            last = left[0] == 0
        if last:
            budget.release(pixels)

    if not futures:
        budget.release(pixels)
    for future in futures:
        future.add_done_callback(one_done)


def _kept_files(out_dir: Path, progress_dir: Path, key: dict, overwrite: bool) -> set[str]:
    """Names of the files in ``out_dir`` that this run must not replace: those that were there before the first
    run with this ``key`` began (recorded in ``.progress``, so a resumed run keeps them too); none with
    ``overwrite``."""
    if overwrite:
        return set()
    earlier = earlier_run(progress_dir)
    if earlier is None:
        return {p.name for p in out_dir.iterdir() if p.name != progress_dir.name}
    if earlier != key:
        return set()  # resume_entries refuses this run, saying why
    try:
        return set(json.loads((progress_dir / KEPT).read_text()))
    except (OSError, ValueError):  # a run from before this record: its folder held only its own files
        return set()


def _merge(paths: Sequence[Path], entries: list[dict]) -> Summary:
    """One summary in input order, whatever ranks and runs the entries came from."""
    by_file = {e["file"]: e for e in entries}
    summary = Summary()
    for path in paths:
        entry = by_file.get(str(path))
        if entry is None:
            continue
        if "error" in entry:
            summary.skip(entry["file"], entry["error"])
        else:
            summary.records.append(entry["record"])
    return summary


def _check_free(out_dir: Path, slots: list[tuple[int, dict[str, Any]]], taken: set[str]) -> None:
    """Refuse to write over a file that was in ``out_dir`` before this run (``taken``)."""
    for _, entry in slots:
        overlay = entry["overlay"]
        for name in (overlay, entry.get("figure"), overlay.rpartition(".")[0] + ".npy"):
            if name in taken:
                raise OutputError(
                    f"{out_dir / name} was there before this run: pass --overwrite to replace it, or "
                    "choose another --out"
                )


def _model_input(loaded: LoadedModel, img: Tensor, rank: int) -> Tensor:
    if rank != 3:
        return loaded.preprocess(img)
    pre = loaded.preprocess
    return prepare_volume(img, pre.size, pre.mean, pre.std, input_channels(loaded.model))


def _image_record(
    loaded: LoadedModel,
    res: CAMResult,
    probs: Tensor,
    i: int,
    path: Path,
    img: Tensor,
    stem: str,
    render: RenderOptions,
) -> tuple[dict, list[tuple[int, dict[str, Any]]]]:
    """The image's summary record, and the (map slot, entry) of each explained class that gets files."""
    explained: list[dict[str, Any]] = []
    slots: list[tuple[int, dict[str, Any]]] = []
    for slot, cls in enumerate(res.classes[i].tolist()):
        value = None if res.target_scores is None else float(res.target_scores[i, slot])
        label = loaded.class_names[cls] if 0 <= cls < len(loaded.class_names) else "target"
        if value is not None and value != value:  # NaN: the target explains nothing here (no label, no match)
            if cls >= 0:  # not a multi-label padding slot: say why there is no overlay
                explained.append(
                    {
                        "class": cls,
                        "label": label,
                        "score": None,
                        "overlay": "",
                        "note": "nothing to explain: no matching box or no pixel of this class",
                    }
                )
            continue
        name = f"{stem}_{slot + 1}_{_safe(label)}"
        score = value if value is not None else float(probs[i, cls]) if cls >= 0 else None
        entry: dict[str, Any] = {
            "class": cls,
            "label": label,
            "score": score,
            "overlay": f"{name}.{render.image_format}",
        }
        if render.figure:
            entry["figure"] = f"{name}_figure.png"
        explained.append(entry)
        slots.append((slot, entry))
    if probs.ndim != 2 or loaded.meta.get("task") in ("detection", "segmentation"):  # no image-level classes
        probs = probs.new_zeros(probs.shape[0], 0)
    top = probs[i].topk(min(5, probs.shape[1]))
    predictions = [
        {"class": int(c), "label": loaded.class_names[int(c)], "score": float(s)}
        for s, c in zip(top.values, top.indices)
    ]
    record = {
        "file": str(path),
        "size": [int(img.shape[-1]), int(img.shape[-2])],
        "predictions": predictions,
        "explained": explained,
    }
    return record, slots


def _write_image(
    slots: list[tuple[int, dict[str, Any]]],
    res: CAMResult,
    i: int,
    img: Tensor,
    rgb: np.ndarray | None,
    out_dir: Path,
    render: RenderOptions,
    pool: ThreadPoolExecutor,
) -> list[Future[Any]]:
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
            futures.append(pool.submit(_save_array, up, path.with_suffix(".npy")))
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
            futures.append(
                pool.submit(
                    figure,
                    img,
                    cam,
                    out_dir / entry["figure"],
                    title=title,
                    colormap=render.colormap,
                    alpha=render.alpha,
                )
            )
    return futures


def _save_map(path: Path, score_map: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_array(score_map, path)


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
        with atomic_open(path) as f:
            Image.fromarray(pixels).save(f, "JPEG", quality=JPEG_QUALITY)


def _save_array(values: np.ndarray, path: Path) -> None:
    with atomic_open(path) as f:
        np.save(f, values)
