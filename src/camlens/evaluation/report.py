"""An evaluation's result for people and files: the metrics table (model next to the box baselines, then the
faithfulness metrics) and the JSON file."""

from __future__ import annotations

import json
from pathlib import Path

from ..files import write_atomic

METRIC_ROWS = (
    ("Top-1 Cls", "top1_cls"),
    ("Top-1 Loc", "top1_loc"),
    ("Top-5 Loc", "top5_loc"),
    ("GT-known Loc", "gt_known_loc"),
    ("MaxBoxAcc", "maxboxacc"),
    ("MaxBoxAccV2", "maxboxacc_v2"),
    ("PxAP", "pxap"),
)

FAITHFULNESS_ROWS = (
    ("Average Drop %", "average_drop"),
    ("Increase in Conf. %", "increase_in_confidence"),
    ("Deletion AUC (lower)", "deletion_auc"),
    ("Insertion AUC", "insertion_auc"),
    ("ROAD (combined)", "road"),
    ("Pointing game", "pointing_game"),
)


def format_table(result: dict) -> str:
    """The metrics as a text table, model next to the box baselines (in percent; '-' where not computable), then
    the faithfulness metrics where computed."""
    base = result.get("baselines") or {}
    cols = ["model"] + [name.replace("_", " ") for name in base]
    lines = [f"{'metric':<22}" + "".join(f"{c:>16}" for c in cols)]
    for label, key in METRIC_ROWS:
        cells = [result.get(key)] + [b.get(key) for b in base.values()]
        lines.append(f"{label:<22}" + "".join(f"{'-' if v is None else f'{v:.2f}':>16}" for v in cells))
    for label, key in FAITHFULNESS_ROWS:
        if key in result:
            value = result[key]
            lines.append(f"{label:<22}" + f"{'-' if value is None else f'{value:.4f}':>16}")
    extra = [f"images: {result.get('num_images', 0)}"]
    if result.get("best_threshold") is not None:
        extra.append(f"best threshold (MaxBoxAcc): {result['best_threshold']:.3f}")
    extra.append(f"paper protocol threshold: {result.get('paper_threshold')}")
    if result.get("box_acc_at_fixed_threshold") is not None:
        extra.append(
            f"box accuracy at the checkpoint's threshold {result['fixed_threshold']:.3f}: "
            f"{result['box_acc_at_fixed_threshold']:.2f}"
        )
    if result.get("map_naming"):
        extra.append(f"maps named {result['map_naming']}")
    return "\n".join(lines + ["; ".join(extra)])


def write_json(result: dict, path: str | Path, replace: bool = True) -> Path:
    """``result`` as JSON at ``path``, written atomically (a crash leaves the old file or none, never half); an
    existing file is kept (:class:`camlens.files.OutputError`) unless ``replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(result, indent=2), replace=replace)
    return path
