"""CAM networks trained on the built-in dataset through the command line, each evaluated on the same 500 test
images: the small ``gapnet``, a cut ResNet18, the CAM paper's and Choe et al.'s networks from scratch,
EfficientNet-Lite0's real ImageNet weights fine-tuned and under the linear probe, and the box baselines.

    python benchmarks/bench_train_builtin.py [--out runs/train-builtin] [--retrain]

Every row is ``camlens train --data builtin --size SIZE --num-train 3000 --num-val 200 --epochs 4 --batch-size 64
--select-by maxboxacc_v2`` plus the row's network (a probe row: ``camlens train --linear-probe``), then ``camlens
evaluate --split test --num-images 500`` of the checkpoint kept.  'training' is the wall time of the whole
``camlens train`` process (start-up, the per-epoch validation and selection passes included), kept in the run's
folder as ``wall_seconds.txt``: a rerun evaluates the runs already finished in ``--out`` again and trains only
the others (all of them with ``--retrain``).
"""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import header, rounded, run_camlens, write_result

COMMON = ["--data", "builtin", "--num-train", "3000", "--num-val", "200", "--quiet"]
TRAIN = ["--epochs", "4", "--batch-size", "64", "--select-by", "maxboxacc_v2"]
METRICS = ["top1_cls", "gt_known_loc", "maxboxacc", "maxboxacc_v2", "pxap"]
COLUMNS = ["network", "input (map)", "accuracy (Top-1 Cls)", "GT-known Loc", "MaxBoxAcc", "MaxBoxAccV2", "PxAP"]
COLUMNS += ["training"]


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    size: int
    grid: str
    args: tuple[str, ...]
    probe: bool = False

    def train_command(self, out: Path) -> list[str]:
        """The row's ``camlens train`` arguments: its own after the shared ones, so that they win."""
        shared = ["--linear-probe", *COMMON] if self.probe else [*COMMON, *TRAIN]
        return ["train", *shared, "--size", str(self.size), *self.args, "--out", str(out)]

    def checkpoint(self, out: Path) -> Path:
        return out / ("probe.safetensors" if self.probe else "best.safetensors")


ROWS = (
    Row("gapnet", "gapnet (width 16, 136k parameters)", 32, "8x8", ("--arch", "gapnet")),
    Row(
        "gapify-resnet18",
        "gapify resnet18 cut at layer1, conv width 64 (195k)",
        32,
        "8x8",
        ("--arch", "gapify", "--arch-option", "backbone=resnet18", "--arch-option", "cut=layer1")
        + ("--arch-option", "width=64", "--arch-option", "input_size=32"),
    ),
    Row(
        "googlenet-cam",
        "googlenet-cam (the paper's recipe, width 1024, groups 2; 7.1M)",
        64,
        "4x4",
        ("--arch", "googlenet-cam", "--weights", "none"),
    ),
    Row(
        "wsol-resnet50",
        "wsol-resnet50 (Choe et al.'s, layer4 at stride 1; 23.5M)",
        64,
        "4x4",
        ("--arch", "wsol-resnet50", "--weights", "none"),
    ),
    Row(
        "wsol-inceptionv3",
        "wsol-inceptionv3 (25.5M; --lr 1e-3 --epochs 12)",
        64,
        "4x4",
        ("--arch", "wsol-inceptionv3", "--weights", "none", "--lr", "1e-3", "--epochs", "12"),
    ),
    Row(
        "alexnet-cam",
        "alexnet-cam (3.7M; --lr 2e-4 --epochs 16)",
        64,
        "3x3",
        ("--arch", "alexnet-cam", "--weights", "none", "--lr", "2e-4", "--epochs", "16"),
    ),
    Row(
        "vgg16-cam",
        "vgg16-cam (17.1M; --lr 3e-4)",
        64,
        "4x4",
        ("--arch", "vgg16-cam", "--weights", "none", "--lr", "3e-4"),
    ),
    Row(
        "lite0-finetuned",
        "efficientnet_lite0, ImageNet weights, fine-tuned (classifier new, 10x rate)",
        224,
        "7x7",
        ("--arch", "efficientnet_lite0", "--weights", "imagenet"),
    ),
    Row(
        "lite0-probe",
        "linear probe on frozen efficientnet_lite0 ImageNet features",
        224,
        "7x7",
        ("--arch", "efficientnet_lite0", "--weights", "imagenet"),
        probe=True,
    ),
    Row("gapnet-probe", "linear probe on a frozen random-weight gapnet", 32, "8x8", ("--arch", "gapnet"), probe=True),
)


def evaluate_command(checkpoint: Path) -> list[str]:
    return ["evaluate", "--checkpoint", str(checkpoint), "--data", "builtin", "--split", "test", "--num-images", "500"]


def train(row: Row, out: Path, retrain: bool) -> float:
    """Train ``row`` into ``out`` unless a finished run is there; the process's wall time in seconds."""
    wall = out / "wall_seconds.txt"
    if retrain or not wall.exists():
        wall.parent.mkdir(parents=True, exist_ok=True)
        wall.write_text(f"{run_camlens(*row.train_command(out), '--overwrite'):.1f}\n")
    return float(wall.read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("runs/train-builtin"))
    parser.add_argument("--retrain", action="store_true", help="train every row again, even one finished in --out")
    args = parser.parse_args()
    header("CAM networks trained on the built-in dataset")

    rows: list[list[Any]] = []
    baselines: dict[int, dict[str, Any]] = {}
    thresholds: list[str] = []
    for row in ROWS:
        out = args.out / row.key
        seconds = train(row, out, args.retrain)
        metrics_file = out / "test-metrics.json"
        run_camlens(*evaluate_command(row.checkpoint(out)), "--json", str(metrics_file), "--quiet", "--overwrite")
        result = json.loads(metrics_file.read_text())
        metrics = [rounded(result.get(k)) for k in METRICS]
        rows.append([row.label, f"{row.size} px ({row.grid})", *metrics, f"{seconds:.0f} s"])
        baselines[row.size] = result["baselines"]
        if not row.probe and result.get("best_threshold") is not None:
            thresholds.append(f"{row.key} {result['best_threshold']:.2f}")
        print(rows[-1], flush=True)

    for size, base in sorted(baselines.items()):
        center, best = base["center_box"], base["best_fixed_box"]
        pairs = [f"{rounded(center[k])} / {rounded(best[k])}" for k in ("gt_known_loc", "maxboxacc", "maxboxacc_v2")]
        rows.append([f"centred box / best fixed box, {size} px test images", None, None, *pairs, None, None])

    recipe = Row("NAME", "", 0, "", ("--arch", "ARCH", "..."))
    command = shlex.join(["camlens", *recipe.train_command(Path("runs/NAME"))]).replace("--size 0", "--size SIZE")
    command += "; " + shlex.join(["camlens", *evaluate_command(Path("runs/NAME/best.safetensors"))])
    notes = (
        "3000 training images, 4 epochs unless a row says otherwise (batch 64, AdamW with warm-up and cosine decay, "
        "the CLI's default rate: 3e-3 from scratch, 3e-4 fine-tuning with the new layers at 10x), the epoch kept by "
        "MaxBoxAccV2 on 200 validation images; from scratch unless a row says otherwise; one seed (0). The resnet18 "
        "row is --arch gapify --arch-option backbone=resnet18 --arch-option cut=layer1 --arch-option width=64 "
        "--arch-option input_size=32; a probe row is camlens train --linear-probe --arch ARCH [--weights imagenet] "
        "--data builtin --size SIZE --num-train 3000 --num-val 200, its checkpoint probe.safetensors. Training is "
        "the wall time of the whole camlens train process. MaxBoxAcc's sweep chose the thresholds "
        + ", ".join(thresholds)
        + ". The box baselines are evaluate's, on the same test images at each input size. Made by python "
        "benchmarks/bench_train_builtin.py."
    )
    write_result(
        "train_builtin",
        "CAM networks trained on the built-in dataset (500 test images, %)",
        COLUMNS,
        rows,
        notes,
        command=command,
    )


if __name__ == "__main__":
    main()
