"""Explaining a video file frame by frame with a 2-D classifier: an overlay video per explained rank and a
per-frame summary.

The flow is the image pipeline's (:mod:`camlens.pipeline`): one thread decodes frames (PyAV, FFmpeg underneath)
up to :data:`~camlens.pipeline.AHEAD` batches ahead of the model; the main thread preprocesses each batch, runs
the explainer and turns the maps into colormap indices (the only torch work); one thread blends the overlays by
table lookup (:func:`camlens.blend.blend`, byte-identical to :func:`camlens.render.overlay`) and encodes them,
in frame order, up to AHEAD batches behind the model.  Each output video is written under a temporary name and
renamed when complete, so a killed run leaves no half-written video under the final name.
"""

from __future__ import annotations

import csv
import io
import json
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .blend import blend, blend_table, colormap_index
from .data.images import ImageError
from .errors import CamlensError
from .files import atomic_path, csv_text, write_atomic
from .methods.base import ClassSpec, Explainer
from .models import LoadedModel
from .pipeline import AHEAD, RenderOptions, Summary, _safe

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg")

# the container each encoder writes to; lossless ones (ffv1, png) go into Matroska
CONTAINERS = {"libx264": "mp4", "h264": "mp4", "mpeg4": "mp4", "libvpx-vp9": "webm", "ffv1": "mkv", "png": "mkv"}


@dataclass
class VideoOptions:
    """How a video is read and written.

    Attributes:
        codec: the encoder of the overlay videos: libx264 (default), mpeg4, libvpx-vp9, or lossless ffv1 / png.
        crf: the constant rate factor of libx264 / libvpx-vp9 (lower: better quality, larger files).
        every: explain every n-th frame (the output has those frames, at the input's rate divided by n).
        max_frames: stop after this many explained frames (None: the whole clip).
    """

    codec: str = "libx264"
    crf: int = 23
    every: int = 1
    max_frames: int | None = None

    def check(self) -> None:
        if self.codec not in CONTAINERS:
            raise CamlensError(f"--video-codec {self.codec!r} is not one of {', '.join(CONTAINERS)}")
        if self.every < 1:
            raise CamlensError(f"--every {self.every} must be at least 1")
        if self.max_frames is not None and self.max_frames < 1:
            raise CamlensError(f"--max-frames {self.max_frames} must be at least 1")


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def _av() -> Any:
    try:
        import av
    except ImportError as err:
        raise CamlensError("explaining video files needs PyAV: pip install 'camlens[video]'") from err
    return av


Frame = tuple[int, float, np.ndarray]  # frame number in the clip, its time in seconds, (H, W, 3) uint8 pixels


def _frame_batches(container: Any, stream: Any, options: VideoOptions, batch_size: int) -> Iterator[list[Frame]]:
    """The explained frames of ``stream`` in batches, decoded in a thread up to AHEAD batches ahead."""
    batches: queue.Queue[list[Frame] | BaseException | None] = queue.Queue(maxsize=AHEAD)
    stop = threading.Event()

    def decode() -> None:
        batch: list[Frame] = []
        kept = 0
        try:
            for number, frame in enumerate(container.decode(stream)):
                if stop.is_set():
                    return
                if number % options.every:
                    continue
                seconds = float(frame.time) if frame.time is not None else number / float(stream.average_rate or 1)
                batch.append((number, seconds, frame.to_ndarray(format="rgb24")))
                kept += 1
                if len(batch) == batch_size:
                    batches.put(batch)
                    batch = []
                if options.max_frames is not None and kept >= options.max_frames:
                    break
            if batch:
                batches.put(batch)
            batches.put(None)
        except BaseException as err:  # handed to the consumer, which raises it as a one-line error
            batches.put(err)

    thread = threading.Thread(target=decode, name="camlens-video-decode", daemon=True)
    thread.start()
    try:
        while (item := batches.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # let a decoder blocked on a full queue see the stop
            try:
                batches.get_nowait()
            except queue.Empty:
                thread.join(0.01)


class _Writer:
    """One overlay video: frames encoded in order, written under a temporary name and renamed by :meth:`close`
    (:func:`camlens.files.atomic_path`: a symlink at ``path`` is refused, and an existing file unless ``replace``)."""

    def __init__(
        self, av: Any, path: Path, rate: Fraction, width: int, height: int, options: VideoOptions, replace: bool
    ) -> None:
        self.publish = ExitStack()
        self.temporary = self.publish.enter_context(atomic_path(path, replace=replace))
        self.container = av.open(
            str(self.temporary), mode="w", format=CONTAINERS[options.codec].replace("mkv", "matroska")
        )
        stream = self.container.add_stream(options.codec, rate=rate)
        stream.width, stream.height = width, height
        if options.codec in ("ffv1", "png"):
            stream.pix_fmt = "bgr0" if options.codec == "ffv1" else "rgb24"  # lossless RGB
        else:  # 4:2:0 chroma needs even sides; 4:4:4 takes any
            stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
            if options.codec in ("libx264", "libvpx-vp9"):
                stream.options = {"crf": str(options.crf)}
        self.stream = stream
        self.av = av

    def write(self, pixels: np.ndarray) -> None:
        frame = self.av.VideoFrame.from_ndarray(pixels, format="rgb24")
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        self.container.mux(self.stream.encode(None))
        self.container.close()
        self.publish.close()

    def abandon(self) -> None:
        try:
            self.container.close()
        finally:
            self.publish.pop_all()
            self.temporary.unlink(missing_ok=True)


def explain_video(
    loaded: LoadedModel,
    explainer: Explainer,
    path: Path,
    out_dir: Path,
    *,
    classes: ClassSpec = None,
    topk: int = 1,
    batch_size: int = 16,
    render: RenderOptions = RenderOptions(),  # noqa: B008 (only read, never changed)
    options: VideoOptions = VideoOptions(),  # noqa: B008 (only read, never changed)
    progress: Callable[[int], None] = lambda n: None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Explain every ``options.every``-th frame of the video at ``path`` with a 2-D classifier.

    Writes into ``out_dir`` one overlay video per explained rank, ``<stem>_<rank>.<mp4|mkv|webm>`` (the rank-th
    class of each frame, or the given ``classes``, over that frame), and ``<stem>_frames.json`` /
    ``<stem>_frames.csv`` with each frame's number, time, top-5 predictions and explained classes.

    Args:
        loaded: the model with its preprocessing and class names.
        explainer: any explainer of ``loaded.model`` (one call per batch of frames).
        path: the video file.
        out_dir: the output folder.
        classes: the classes to explain in every frame (None: the ``topk`` best of each frame).
        topk: how many of each frame's best classes to explain when ``classes`` is None.
        batch_size: frames per model call.
        render: colormap, opacity and blend of the overlays (``figure`` and ``image_format`` do not apply).
        options: codec, quality, frame stride and frame limit.
        progress: called with the number of frames done after each batch.
        overwrite: replace the outputs of an earlier run (else they are kept: :class:`camlens.files.OutputError`).

    Returns:
        The video's summary record: file, size, rate, frames explained, the overlay videos and frame tables.

    Raises:
        ImageError: the file is not a readable video (corrupt, no video stream, or a codec FFmpeg lacks).
    """
    av = _av()
    options.check()
    blend_table(render.colormap, render.alpha, render.classic)  # a bad colormap or alpha fails before any work
    stem = _safe(path.stem)
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as err:
        raise ImageError(f"{path}: not a readable video ({_reason(err)})") from err
    writers: list[_Writer] = []
    frames: list[dict[str, Any]] = []
    try:
        if not container.streams.video:
            raise ImageError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = Fraction(stream.average_rate or 25) / options.every
        per_frame = [classes] if isinstance(classes, list) and classes and not isinstance(classes[0], list) else None
        out_dir.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(1) as encoder:
            pending: list[Future[None]] = []
            try:
                for batch in _frame_batches(container, stream, options, batch_size):
                    rgb = np.stack([pixels for _, _, pixels in batch])
                    x = loaded.preprocess(
                        torch.from_numpy(rgb)
                        .permute(0, 3, 1, 2)
                        .float()
                        .div_(255)
                        .to(next(loaded.model.parameters()).device)
                    )
                    res = explainer(x, per_frame * len(batch) if per_frame else classes, topk=topk)
                    probs = res.logits.float().softmax(-1)
                    height, width = rgb.shape[1:3]
                    if not writers:
                        extension = CONTAINERS[options.codec]
                        writers = [
                            _Writer(
                                av, out_dir / f"{stem}_{rank + 1}.{extension}", rate, width, height, options, overwrite
                            )
                            for rank in range(res.classes.shape[1])
                        ]
                    indices = [
                        [colormap_index(res.maps[i, k], (height, width)) for k in range(len(writers))]
                        for i in range(len(batch))
                    ]
                    for i, (number, seconds, _) in enumerate(batch):
                        frames.append(_frame_record(loaded, probs[i], res.classes[i].tolist(), number, seconds))
                    pending.append(encoder.submit(_encode, writers, rgb, indices, render))
                    while len(pending) > AHEAD:
                        pending.pop(0).result()
                    progress(len(batch))
                for future in pending:
                    future.result()
            except av.FFmpegError as err:
                raise ImageError(f"{path}: cannot decode frame {len(frames)} ({_reason(err)})") from err
        if not frames:
            raise ImageError(f"{path}: no frames to explain")
        for writer in writers:
            writer.close()
        writers = []
    finally:
        for writer in writers:
            writer.abandon()
        container.close()
    outputs = [f"{stem}_{rank + 1}.{CONTAINERS[options.codec]}" for rank in range(len(frames[0]["explained"]))]
    record = {
        "file": str(path),
        "size": [int(width), int(height)],
        "rate": str(rate),
        "frames": len(frames),
        "frame_table": f"{stem}_frames.csv",
        "explained": [
            {"class": None, "label": f"rank {rank} of each frame", "score": None, "overlay": name}
            for rank, name in enumerate(outputs, 1)
        ],
    }
    write_atomic(
        out_dir / f"{stem}_frames.json", json.dumps({**record, "per_frame": frames}, indent=2), replace=overwrite
    )
    write_atomic(out_dir / f"{stem}_frames.csv", _frames_csv(frames), replace=overwrite)
    return record


def _reason(err: BaseException) -> str:
    return (getattr(err, "strerror", None) or str(err)).strip().splitlines()[0] if str(err) else type(err).__name__


def _encode(writers: list[_Writer], rgb: np.ndarray, indices: list[list[np.ndarray]], render: RenderOptions) -> None:
    for frame, frame_indices in zip(rgb, indices):
        for writer, index in zip(writers, frame_indices):
            writer.write(blend(frame, index, render.colormap, render.alpha, render.classic))


def _frame_record(
    loaded: LoadedModel, probs: torch.Tensor, classes: list[int], number: int, seconds: float
) -> dict[str, Any]:
    top = probs.topk(min(5, probs.shape[0]))
    name = loaded.class_names
    return {
        "frame": number,
        "time": round(seconds, 6),
        "predictions": [
            {"class": int(c), "label": name[int(c)], "score": float(s)} for s, c in zip(top.values, top.indices)
        ],
        "explained": [{"class": c, "label": name[c], "score": float(probs[c])} for c in classes],
    }


def _frames_csv(frames: list[dict[str, Any]]) -> str:
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["frame", "time", "rank", "class", "label", "score"])
    for frame in frames:
        for rank, entry in enumerate(frame["explained"], 1):
            writer.writerow(
                [
                    frame["frame"],
                    f"{frame['time']:.6f}",
                    rank,
                    entry["class"],
                    csv_text(entry["label"]),
                    f"{entry['score']:.6f}",
                ]
            )
    return rows.getvalue()


def explain_videos(
    loaded: LoadedModel,
    explainer: Explainer,
    paths: list[Path],
    out_dir: Path,
    *,
    on_error: Callable[[str], None] = lambda line: None,
    **kwargs: Any,
) -> Summary:
    """:func:`explain_video` on each file; a file that cannot be read costs one error line, the rest are done."""
    summary = Summary()
    for path in paths:
        try:
            summary.records.append(explain_video(loaded, explainer, path, out_dir, **kwargs))
        except ImageError as err:
            summary.errors.append(str(err))
            on_error(str(err))
    return summary
