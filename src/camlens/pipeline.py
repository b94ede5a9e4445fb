"""Explaining many image files: load in background threads, batch, explain, write overlays and a summary.

Bad files never stop the run: each becomes one error line in the summary, the rest is still done.
"""

from __future__ import annotations

import csv
import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor

from .data.images import DEFAULT_MAX_PIXELS, ImageError, load_image
from .methods.base import ClassSpec, Explainer
from .models import LoadedModel
from .render import overlay, save_image, three_panel_figure


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
        (out_dir / "summary.json").write_text(json.dumps({"images": self.records, "errors": self.errors}, indent=2))
        with open(out_dir / "summary.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "rank", "class", "label", "score", "overlay"])
            for rec in self.records:
                for rank, pred in enumerate(rec["explained"], 1):
                    writer.writerow([rec["file"], rank, pred["class"], pred["label"], f"{pred['score']:.6f}", pred["overlay"]])


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "x"


def _load_batches(
    paths: Sequence[Path], batch_size: int, workers: int, max_pixels: int
) -> Iterator[list[tuple[Path, Tensor | ImageError]]]:
    def load(path: Path) -> Tensor | ImageError:
        try:
            return load_image(path, max_pixels)
        except ImageError as err:
            return err

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        loaded = pool.map(load, paths)
        batch: list[tuple[Path, Tensor | ImageError]] = []
        for path, item in zip(paths, loaded):
            batch.append((path, item))
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


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
    on_error: Callable[[str], None] = lambda line: None,
    progress: Callable[[int], None] = lambda n: None,
) -> Summary:
    """Explain every file: one overlay per image and explained class in ``out_dir``, named
    ``<stem>_<rank>_<label>.<format>``; returns the summary (also written as summary.json and summary.csv)."""
    device = next(loaded.model.parameters()).device
    summary = Summary()
    used_stems: set[str] = set()
    for batch in _load_batches(paths, batch_size, workers, max_pixels):
        good = []
        for path, item in batch:
            if isinstance(item, ImageError):
                summary.errors.append(str(item))
                on_error(str(item))
            else:
                good.append((path, item))
        if good:
            x = torch.cat([loaded.preprocess(img.to(device)) for _, img in good])
            per_sample = classes if isinstance(classes, (int, str)) or classes is None else [classes] * len(good)
            res = explainer(x, per_sample, topk=topk)
            probs = res.logits.float().softmax(-1)
            for i, (path, img) in enumerate(good):
                stem = _safe(path.stem)
                while stem in used_stems:
                    stem = stem + "_"
                used_stems.add(stem)
                summary.records.append(_write_image(loaded, res, probs, i, path, img, stem, out_dir, render))
        progress(len(batch))
    summary.write(out_dir)
    return summary


def _write_image(loaded, res, probs, i, path, img, stem, out_dir, render: RenderOptions) -> dict:
    explained = []
    for rank, cls in enumerate(res.classes[i].tolist(), 1):
        label = loaded.class_names[cls] if cls >= 0 else "target"
        name = f"{stem}_{rank}_{_safe(label)}.{render.image_format}"
        save_image(overlay(img, res.maps[i, rank - 1], colormap=render.colormap, alpha=render.alpha, classic=render.classic), out_dir / name)
        entry = {"class": cls, "label": label, "score": float(probs[i, cls]) if cls >= 0 else None, "overlay": name}
        if render.figure:
            fig = f"{stem}_{rank}_{_safe(label)}_figure.png"
            three_panel_figure(img, res.maps[i, rank - 1], out_dir / fig, title=f"{label} ({entry['score']:.2f})",
                               colormap=render.colormap, alpha=render.alpha)
            entry["figure"] = fig
        explained.append(entry)
    top = probs[i].topk(min(5, probs.shape[1]))
    predictions = [{"class": int(c), "label": loaded.class_names[int(c)], "score": float(s)} for s, c in zip(top.values, top.indices)]
    return {"file": str(path), "size": [int(img.shape[-1]), int(img.shape[-2])], "predictions": predictions, "explained": explained}
