"""Which map localizes best on a ViT: vit-tiny-gap trained on the built-in dataset through `camlens train`, then
`camlens evaluate` with CAM, four layer methods and the three attention methods, localization and faithfulness
metrics side by side (the other layer methods run with `--methods` too).

The network (64 px, an 8x8 grid of patch tokens from Xiao et al.'s convolutional stem, 4 blocks of width 96, the
mean of the patch tokens -> LayerNorm -> linear) is the ViT on which CAM is exact, so CAM, the gradient and
perturbation methods on the last block's tokens and the attention methods (rollout, Chefer et al.'s gae, LeGrad)
explain the same trained weights.  Everything runs through the command line, as a user would:

    OMP_NUM_THREADS=1 python benchmarks/bench_vit_wsol.py [--out runs/vit-wsol] [--epochs 20] [--lr 1e-3]
        [--num-images 500] [--faithfulness-images 200] [--methods cam gradcam ...] [--reuse]

Each method is evaluated twice: the localization metrics on ``--num-images`` test images, the faithfulness metrics
(the costly part) on the first ``--faithfulness-images``.  The network selected is the epoch of best validation
accuracy: selecting by MaxBoxAccV2 keeps an untrained early epoch here.  One torch thread: on a shared 2-core
machine two threads spin against each other (a ViT step took 8x longer).  ``--reuse`` evaluates the run already
in ``--out`` (its training time is read from its ``train_state.json``) instead of training again.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from common import header, rounded, run_camlens, write_result

METHODS = ("cam", "gradcam", "hirescam", "scorecam", "eigencam", "rollout", "gae", "legrad")
COLUMNS = [
    "method",
    "Top-1 Cls",
    "GT-known Loc",
    "MaxBoxAcc",
    "MaxBoxAccV2",
    "PxAP",
    "Average Drop % (lower)",
    "Increase in Conf. %",
    "Deletion AUC (lower)",
    "Insertion AUC",
    "ROAD",
    "Pointing game",
    "evaluation s",
]
LOCALIZATION = ["top1_cls", "gt_known_loc", "maxboxacc", "maxboxacc_v2", "pxap"]
FAITHFULNESS = ["average_drop", "increase_in_confidence", "deletion_auc", "insertion_auc", "road", "pointing_game"]
PERCENT = {"average_drop", "increase_in_confidence"}


def train_command(args: argparse.Namespace) -> list[str]:
    return [
        "train",
        "--arch",
        "vit-tiny-gap",
        "--data",
        "builtin",
        "--size",
        "64",
        "--num-train",
        str(args.num_train),
        "--num-val",
        "200",
        "--epochs",
        str(args.epochs),
        "--batch-size",
        "64",
        "--lr",
        str(args.lr),
        "--select-by",
        "accuracy",
        "--quiet",
        "--out",
        str(args.out),
    ]


def evaluate_command(method: str, checkpoint: Path, images: int, json_path: Path, faithfulness: bool) -> list[str]:
    return [
        "evaluate",
        "--checkpoint",
        str(checkpoint),
        "--data",
        "builtin",
        "--split",
        "test",
        "--num-images",
        str(images),
        "--method",
        method,
        *(["--faithfulness"] if faithfulness else []),
        "--quiet",
        "--json",
        str(json_path),
        "--overwrite",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("runs/vit-wsol"))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--num-train", type=int, default=3000)
    parser.add_argument("--num-images", type=int, default=500, help="test images for the localization metrics")
    parser.add_argument("--faithfulness-images", type=int, default=200, help="test images for faithfulness")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--reuse", action="store_true", help="evaluate the run already in --out")
    parser.add_argument("--machine-note", default="", help="how loaded the machine was, for the notes")
    args = parser.parse_args()
    header(f"vit-tiny-gap on the built-in dataset: {args.epochs} epochs, {len(args.methods)} methods")

    command = train_command(args)
    train_wall = None if args.reuse else run_camlens(*command, "--overwrite")
    state = json.loads((args.out / "train_state.json").read_text())
    history = state["history"]
    train_seconds = sum(h["seconds"] for h in history)
    best = history[state["best_epoch"] - 1]
    checkpoint = args.out / "best.safetensors"

    rows = []
    for method in args.methods:
        loc_json, faith_json = args.out / f"localize-{method}.json", args.out / f"faithfulness-{method}.json"
        seconds = run_camlens(*evaluate_command(method, checkpoint, args.num_images, loc_json, False))
        seconds += run_camlens(*evaluate_command(method, checkpoint, args.faithfulness_images, faith_json, True))
        loc, faith = json.loads(loc_json.read_text()), json.loads(faith_json.read_text())
        cells = [rounded(loc.get(k), 2) for k in LOCALIZATION]
        cells += [rounded(faith.get(k), 2 if k in PERCENT else 4) for k in FAITHFULNESS]
        rows.append([method, *cells, round(seconds)])
        print(rows[-1], flush=True)
    blank = [None] * (len(FAITHFULNESS) + 1)
    for name, key in (("center box", "center_box"), ("best fixed box (chosen on test)", "best_fixed_box")):
        box = loc["baselines"][key]
        rows.append([name, None, *[rounded(box[k], 2) for k in LOCALIZATION[1:4]], None, *blank])

    load = f" ({args.machine_note})" if args.machine_note else ""
    notes = (
        f"vit-tiny-gap (369k parameters) from scratch: {args.num_train} training images, {args.epochs} epochs of AdamW "
        f"(peak lr {args.lr}, warm-up + cosine, batch 64, shift augmentation), the epoch of best validation "
        f"accuracy on 200 images kept: epoch {state['best_epoch']}, val accuracy {100 * best['val_acc']:.1f}%. "
        f"Training took {train_seconds:.0f} s"
        + (f" ({train_wall:.0f} s wall with start-up)" if train_wall is not None else "")
        + f" on 2 shared CPU cores, one torch thread{load}. Every method explains the same checkpoint on the test "
        f"split: localization metrics (%, Choe et al.'s definitions) on the first {args.num_images} images, the "
        f"faithfulness metrics for the predicted class on the first {args.faithfulness_images} (their defaults: "
        "100 deletion/insertion steps, ROAD at 10..90% combined, pointing tolerance 15 px). CAM is exact on this "
        "head (its map's mean plus the bias is the logit). Selection by accuracy, not by MaxBoxAccV2: the same "
        "run selected by --select-by maxboxacc_v2 kept epoch 3 (12% validation accuracy, MaxBoxAccV2 50.5), its "
        "CAM boxes scored higher there than the trained network's. 'evaluation s' is "
        "the wall time of the two `camlens evaluate` runs of a method. Made by python benchmarks/bench_vit_wsol.py."
    )
    evaluate = "; ".join(
        shlex.join(["camlens", *evaluate_command("METHOD", checkpoint, images, Path("M.json"), faithful)[:-4]])
        for images, faithful in ((args.num_images, False), (args.faithfulness_images, True))
    )
    write_result(
        "vit_wsol",
        "Which map localizes best on a ViT: vit-tiny-gap trained on the built-in dataset (test split)",
        COLUMNS,
        rows,
        notes,
        command=f"OMP_NUM_THREADS=1 {shlex.join(['camlens', *command])}; {evaluate}",
    )


if __name__ == "__main__":
    main()
