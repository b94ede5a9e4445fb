"""``camlens localize``: boxes of image files, with overlays and ``boxes.json``; a consumer of the evaluation's
maps and boxes and of the pipeline's output names."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch

from .constants import PAPER_THRESHOLD
from .data.images import ImageError, load_image
from .evaluation import explain_batch, image_maps, map_boxes, write_json
from .files import OutputError, output_folder
from .methods.base import Explainer
from .models import LoadedModel
from .pipeline import output_stems
from .render import draw_boxes, overlay, save_image


def localize_files(
    loaded: LoadedModel,
    explainer: Explainer,
    paths: Sequence[Path],
    out_dir: Path,
    *,
    protocol: str = "paper",
    threshold: float = PAPER_THRESHOLD,
    topk: int = 1,
    progress: Callable[[int], None] = lambda n: None,
    on_error: Callable[[str], None] = lambda line: None,
    overwrite: bool = False,
) -> list[dict]:
    """Boxes for the top-``topk`` classes of each image, in original-image pixels: ``boxes.json`` in
    ``out_dir`` and one overlay per image with the boxes drawn (``<stem>_boxes.png``).

    Args:
        loaded: the model with its preprocessing and class names.
        explainer: the explainer on ``loaded.model``.
        paths: the image files.
        out_dir: where ``boxes.json`` and the overlays go (created).
        protocol: ``paper`` (the raw map thresholded at ``threshold`` of its maximum) or ``wsol`` (the min-max
            normalized map at ``threshold``, the largest box).
        threshold: the box threshold.
        topk: boxes for that many top classes per image.
        progress: called with 1 after each image.
        on_error: called with the one-line error of an image that cannot be read (the others are still done).
        overwrite: replace the files of an earlier run (else they are kept: :class:`camlens.files.OutputError`,
            before any work when it left ``boxes.json``).

    Returns:
        One record per image, as written to ``boxes.json``.
    """
    output_folder(out_dir)
    if not overwrite and (out_dir / "boxes.json").exists():
        raise OutputError(
            f"{out_dir} holds the boxes of an earlier run; keep them by choosing another --out, or "
            "pass --overwrite to replace them"
        )
    stems = output_stems(paths)
    records: list[dict] = []
    written: set[str] = set()  # an input given twice writes its overlay twice
    with torch.inference_mode(not explainer.needs_gradients):
        for path in paths:
            try:
                image = load_image(path)
            except ImageError as err:
                on_error(str(err))
                records.append({"file": str(path), "error": str(err)})
                progress(1)
                continue
            _, res = explain_batch(loaded, explainer, [image], None, topk)
            maps = image_maps(res.maps, [image], normalized=protocol != "paper")[0]
            logits, classes = res.logits.detach().cpu(), res.classes.cpu()
            boxes = map_boxes(maps, protocol, threshold)
            probs = logits.float().softmax(-1)[0]
            entries = []
            for rank, (cls, box) in enumerate(zip(classes[0].tolist(), boxes.tolist()), 1):
                entries.append(
                    {
                        "rank": rank,
                        "class": cls,
                        "label": loaded.class_names[cls],
                        "score": float(probs[cls]),
                        "box": [float(v) for v in box],
                    }
                )
            drawn = [e for e in entries if e["box"][2] > e["box"][0] and e["box"][3] > e["box"][1]]
            picture = overlay(image, maps[0]) if entries else image
            name = f"{stems[path]}_boxes.png"
            save_image(
                draw_boxes(
                    picture,
                    [e["box"] for e in drawn],
                    colors=("lime", "red", "yellow", "cyan", "magenta"),
                    labels=[f"{e['label']} {e['score']:.0%}" for e in drawn],
                ),
                out_dir / name,
                replace=overwrite or name in written,
            )
            written.add(name)
            records.append(
                {
                    "file": str(path),
                    "size": [int(image.shape[-1]), int(image.shape[-2])],
                    "protocol": protocol,
                    "threshold": threshold,
                    "boxes": entries,
                    "overlay": name,
                }
            )
            progress(1)
    write_json({"images": records}, out_dir / "boxes.json", replace=overwrite)
    return records


__all__ = ["localize_files"]
