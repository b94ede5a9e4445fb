"""The demo's real part, offline: the photos scikit-image and scikit-learn ship, explained by a real ImageNet
classifier (EfficientNet-Lite0, :mod:`camlens.zoo`): top-5 predictions, CAM overlays of the top classes, the
three-panel figure, and the CAM family side by side with their faithfulness scores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from PIL import Image
from torch import Tensor

from . import report
from .data.images import as_image
from .maps import upsample
from .methods import CAM, get_method
from .metrics.faithfulness import FaithfulnessConfig, faithfulness_scores
from .models import LoadedModel, load_model
from .render import overlay_image, three_panel

# name -> where it comes from; all ship inside the scikit-image / scikit-learn wheels (no download)
PHOTOS = {
    "chelsea": "skimage.data.chelsea",
    "coffee": "skimage.data.coffee",
    "camera": "skimage.data.camera",
    "rocket": "skimage.data.rocket",
    "astronaut": "skimage.data.astronaut",
    "china": "sklearn.datasets.load_sample_images",
    "flower": "sklearn.datasets.load_sample_images",
}
COMPARE_PHOTOS = (
    "chelsea",
)  # one photo: on 3 (cat, espresso, tripod) the family took over 7 min on a loaded 2-core machine
TOP_CLASSES = 3  # CAM overlays per photo
TILE_HEIGHT = 200
# as the synthetic comparison, without the pointing game (no boxes for these photos)
PHOTO_FAITHFULNESS = FaithfulnessConfig(
    metrics=("average_drop", "increase_in_confidence", "deletion_auc", "insertion_auc", "road"),
    steps=10,
    road_percentages=(20.0, 50.0, 80.0),
    batch_size=32,
)
FAMILY_COLUMNS = (
    ("Avg Drop % (lower)", "average_drop"),
    ("Increase %", "increase_in_confidence"),
    ("Deletion (lower)", "deletion_auc"),
    ("Insertion", "insertion_auc"),
    ("ROAD", "road"),
)


def shipped_photos(names: Sequence[str] = tuple(PHOTOS)) -> dict[str, Tensor]:
    """The shipped photos as (3, H, W) float tensors in [0, 1] (the grayscale cameraman as three equal channels)."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    samples = load_sample_images()
    arrays = {"china": samples.images[0], "flower": samples.images[1]}
    return {name: as_image(arrays[name] if name in arrays else getattr(data, name)()) for name in names}


@dataclass
class PhotoResult:
    """What the real part computed: per photo the top-5 (name, probability); per method its mean faithfulness
    over :data:`COMPARE_PHOTOS` and seconds; the report's galleries and tables."""

    arch: str
    top5: dict[str, list[tuple[str, float]]]
    family: list[dict]
    timings: dict[str, float]
    galleries: list[tuple[str, str, list[report.Example]]] = field(default_factory=list)
    tables: list[report.Table] = field(default_factory=list)


def _tile(img: Image.Image) -> Image.Image:
    return img.resize((max(1, round(img.width * TILE_HEIGHT / img.height)), TILE_HEIGHT), Image.Resampling.BILINEAR)


def _figure_image(fig) -> Image.Image:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


DEMO_METHODS = (
    "cam",
    "gradcam",
    "gradcampp",
    "xgradcam",
    "layercam",
    "hirescam",
    "scorecam",
    "ablationcam",
    "eigencam",
)  # the CAM family the demo compares, on its trained network and on the photos


def run_photos(
    loaded: LoadedModel | None = None,
    *,
    methods: Sequence[str] = DEMO_METHODS,
    compare: Sequence[str] = COMPARE_PHOTOS,
    log: Callable[[str], None] | None = print,
) -> PhotoResult:
    """Explain every shipped photo with ``loaded`` (default: EfficientNet-Lite0 with its ImageNet weights), and
    compare ``methods`` on the ``compare`` photos (maps of the predicted class at the last conv block)."""
    say = log or (lambda _: None)
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    loaded = loaded or load_model(arch="efficientnet_lite0", weights="imagenet")
    photos = shipped_photos()
    timings["photos: model and photos"] = time.perf_counter() - tick

    tick = time.perf_counter()
    x = torch.cat([loaded.preprocess(img) for img in photos.values()])
    with CAM(loaded.model) as cam:
        res = cam(x, topk=TOP_CLASSES)
    probs = res.logits.softmax(1)
    top5: dict[str, list[tuple[str, float]]] = {}
    predictions, figures = [], []
    for i, (name, img) in enumerate(photos.items()):
        values, indices = probs[i].topk(5)
        top5[name] = [(loaded.class_names[int(c)], float(p)) for p, c in zip(values, indices)]
        lines = [", ".join(f"{n} {p:.1%}" for n, p in top5[name])]
        for k in range(TOP_CLASSES):
            label, p = loaded.class_names[int(res.classes[i, k])], float(res.scores[i, k])
            caption = f"{name}: #{k + 1} {label} {p:.1%}"
            predictions.append(
                report.Example(_tile(overlay_image(img, res.maps[i, k])), caption, lines if k == 0 else [PHOTOS[name]])
            )
        if name in compare:
            label = loaded.class_names[int(res.classes[i, 0])]
            fig = three_panel(img, res.maps[i, 0], title=f"{name}: CAM of {label} ({float(res.scores[i, 0]):.1%})")
            figures.append(report.Example(_figure_image(fig), f"{name}: {label}", ["raw CAM (7x7), resized, overlay"]))
    timings["photos: predictions and CAM overlays"] = time.perf_counter() - tick
    say(
        f"{loaded.arch}: {len(photos)} shipped photos explained in "
        f"{timings['photos: predictions and CAM overlays']:.1f}s; "
        + "; ".join(f"{n} {top5[n][0][0]} {top5[n][0][1]:.0%}" for n in photos)
    )

    tick = time.perf_counter()
    index = [list(photos).index(n) for n in compare]
    xs, classes = x[index], res.classes[index, 0]
    family, tiles = [], []
    for method in methods:
        start = time.perf_counter()
        with get_method(method)(loaded.model) as explainer:
            maps = explainer(xs, classes=classes[:, None]).maps[:, 0]
        scores = faithfulness_scores(
            loaded.model, xs, upsample(maps, xs.shape[-2:]), classes, config=PHOTO_FAITHFULNESS
        )
        seconds = time.perf_counter() - start
        family.append(
            {
                "method": method,
                "seconds": seconds,
                "num_images": len(index),
                **{key: float(values.mean()) for key, values in scores.items()},
            }
        )
        for j, name in enumerate(compare):
            tiles.append(
                report.Example(
                    _tile(overlay_image(photos[name], maps[j])),
                    f"{method} · {name}",
                    [
                        f"deletion {float(scores['deletion_auc'][j]):.3f} · insertion {float(scores['insertion_auc'][j]):.3f}"
                    ],
                )
            )
    timings["photos: CAM family and faithfulness"] = time.perf_counter() - tick
    say(
        f"{len(methods)} methods on {len(index)} photos with faithfulness in "
        f"{timings['photos: CAM family and faithfulness']:.1f}s"
    )

    result = PhotoResult(loaded.arch, top5, family, timings)
    result.galleries = [
        (
            f"Real photos, a real classifier ({loaded.arch}, ImageNet): CAM of the top {TOP_CLASSES} classes",
            "Photos shipped with scikit-image and scikit-learn; first tile of each photo lists its top-5.",
            predictions,
        ),
        (
            "The three-panel figure",
            "Raw CAM at the feature resolution, resized to the photo, and the overlay.",
            figures,
        ),
        (
            "The CAM family side by side",
            "Maps of the predicted class at the last conv block (bn2, 1280 channels, 7x7 "
            "at 224 px); per-photo Deletion and Insertion AUC.",
            tiles,
        ),
    ]
    result.tables = [_top5_table(top5), _family_table(family)]
    return result


def _top5_table(top5: dict[str, list[tuple[str, float]]]) -> report.Table:
    rows = [(name, PHOTOS[name], *(f"{n} {p:.1%}" for n, p in ranked)) for name, ranked in top5.items()]
    return report.Table(
        "Real photos: top-5 ImageNet predictions",
        ("photo", "source", "1", "2", "3", "4", "5"),
        rows,
        "The whole photo resized to 224 px (no crop, so maps align with it), (x - 127) / 128 as "
        "EfficientNet-Lite was trained.  ImageNet has no 'astronaut' or 'temple' class.",
    )


def _family_table(rows: list[dict]) -> report.Table:
    def fmt(key: str, value: float) -> str:
        return f"{value:.1f}" if key in ("average_drop", "increase_in_confidence") else f"{value:.3f}"

    body = [(r["method"], *(fmt(key, r[key]) for _, key in FAMILY_COLUMNS), f"{r['seconds']:.1f}") for r in rows]
    c = PHOTO_FAITHFULNESS
    return report.Table(
        f"Real photos: the CAM family's faithfulness (mean over {rows[0]['num_images']} photos)",
        ("method", *(h for h, _ in FAMILY_COLUMNS), "seconds"),
        body,
        "Maps of the predicted class. Average Drop % / Increase in Confidence on the softmax score of the "
        f"map-masked photo; Deletion (to zeros) and Insertion (from a blur) AUC over {c.steps} steps; ROAD at "
        f"{', '.join(f'{p:g}' for p in c.road_percentages)}% removed. Seconds: maps and every metric.",
    )
