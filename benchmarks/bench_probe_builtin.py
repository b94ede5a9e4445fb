"""The CAM paper's linear probe (Section 4) on the built-in dataset through the command line: a ``gapnet`` trained
for one epoch, the probe on its frozen features, and the probe on a random-weight ``gapnet`` (what the probe alone
contributes), each evaluated on the test split next to the box baselines.

    python benchmarks/bench_probe_builtin.py [--out runs/probe-builtin]

The built-in dataset at its defaults (64 px, 10 classes, 6000 training and 500 validation images); accuracy on the
validation images, localization on the 1000 test images of ``camlens evaluate --data builtin``.  Times are the
wall and CPU seconds of the whole ``camlens train`` process.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
from pathlib import Path
from typing import Any

from safetensors import safe_open

from common import header, rounded, run_camlens, write_result

COLUMNS = ["network", "val acc %", "GT-known Loc", "MaxBoxAccV2", "PxAP", "time (wall / CPU s)"]
METRICS = ["gt_known_loc", "maxboxacc_v2", "pxap"]
QUIET = ("--quiet", "--overwrite")  # left out of the commands the table shows


def timed(*args: str) -> str:
    """Run ``camlens ARGS``; its wall and CPU seconds as 'WALL / CPU'."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = run_camlens(*args)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return f"{wall:.0f} / {cpu:.0f}"


def evaluate(checkpoint: Path) -> dict[str, Any]:
    metrics = checkpoint.with_name(checkpoint.stem + "-test.json")
    run_camlens(
        "evaluate",
        "--checkpoint",
        str(checkpoint),
        "--data",
        "builtin",
        "--quiet",
        "--json",
        str(metrics),
        "--overwrite",
    )
    return json.loads(metrics.read_text())


def probe_val_accuracy(checkpoint: Path) -> float:
    """The validation accuracy ``camlens train --linear-probe`` recorded in its checkpoint's metadata."""
    with safe_open(str(checkpoint), "pt") as f:
        return json.loads(f.metadata()["camlens"])["linear_probe"]["val_acc"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("runs/probe-builtin"))
    args = parser.parse_args()
    header("the linear probe on the built-in dataset")
    trained, probe, random_probe = args.out / "gapnet1", args.out / "probe", args.out / "random-probe"

    train_cmd = ["train", "--epochs", "1", "--quiet", "--overwrite", "--out", str(trained)]
    probe_cmd = ["train", "--linear-probe", str(trained / "best.safetensors"), "--quiet", "--overwrite"]
    probe_cmd += ["--out", str(probe)]
    random_cmd = ["train", "--linear-probe", "--arch", "gapnet", "--quiet", "--overwrite", "--out", str(random_probe)]
    times = [timed(*train_cmd), timed(*probe_cmd), timed(*random_cmd)]

    state = json.loads((trained / "train_state.json").read_text())
    trained_acc = state["history"][state["best_epoch"] - 1]["val_acc"]
    checkpoints = [trained / "best.safetensors", probe / "probe.safetensors", random_probe / "probe.safetensors"]
    accuracies = [trained_acc, probe_val_accuracy(checkpoints[1]), probe_val_accuracy(checkpoints[2])]
    shown = [shlex.join(["camlens", *(a for a in cmd if a not in QUIET)]) for cmd in (train_cmd, probe_cmd, random_cmd)]
    labels = [
        f"gapnet trained 1 epoch ({shown[0]})",
        f"its frozen features + probe ({shown[1]})",
        f"random-init gapnet + probe ({shown[2]})",
    ]
    rows: list[list[Any]] = []
    for label, checkpoint, acc, seconds in zip(labels, checkpoints, accuracies, times):
        result = evaluate(checkpoint)
        rows.append([label, rounded(100 * acc), *[rounded(result.get(k)) for k in METRICS], seconds])
        print(rows[-1], flush=True)
    center, best = result["baselines"]["center_box"], result["baselines"]["best_fixed_box"]
    pairs = [f"{rounded(center[k])} / {rounded(best[k])}" for k in METRICS[:2]]
    rows.append(["centred box / best fixed box (no model)", None, *pairs, None, None])

    notes = (
        "The built-in dataset at its defaults: 64 px, 10 classes, 6000 training images; accuracy on the 500 "
        "validation images, localization (%) on the 1000 test images of camlens evaluate --checkpoint FILE --data "
        "builtin. The probe fits multinomial logistic regression (C = 1) on standardized pooled features; the "
        "random backbone shows what the probe alone contributes. Times are the wall and CPU seconds of the whole "
        "camlens train process. Made by python benchmarks/bench_probe_builtin.py."
    )
    write_result("probe_builtin", "The linear probe on the built-in dataset (64 px, 10 classes)", COLUMNS, rows, notes)


if __name__ == "__main__":
    main()
