"""Choe et al.'s fair comparison of the WSOL training methods, small: ``camlens train --trials`` draws the same
number of random trials per method (learning rate and the method's own parameters), selects each method's trial
by MaxBoxAccV2 on the boxed validation split, and reports it on the test split.

    OMP_NUM_THREADS=1 python benchmarks/bench_wsol_search.py [--out runs/wsol-search] [--trials 3] [--epochs 6]

``gapnet`` from scratch at 32 px on the built-in dataset.  A rerun resumes the search in ``--out`` (finished trials
are kept); delete it to start over.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

from camlens.training.wsol import WSOL_METHODS
from common import header, rounded, run_camlens, write_result

COLUMNS = ["method", "accuracy", "GT-known Loc", "MaxBoxAccV2", "PxAP"]
COLUMNS += ["selected trial: MaxBoxAccV2 on val, lr, parameters", "val MaxBoxAccV2 of its trials"]


def search_command(args: argparse.Namespace) -> list[str]:
    return [
        "train",
        "--trials",
        str(args.trials),
        "--wsol-method",
        "all",
        "--data",
        "builtin",
        "--size",
        "32",
        "--num-train",
        "3000",
        "--num-val",
        "200",
        "--epochs",
        str(args.epochs),
        "--batch-size",
        "64",
        "--select-by",
        "maxboxacc_v2",
        "--num-test",
        "500",
        "--quiet",
        "--out",
        str(args.out),
    ]


def describe(trial: dict[str, Any]) -> str:
    params = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in trial["params"].items())
    return f"{trial['trial']}: {trial['val_score']:.1f}, lr {trial['lr']:.2g}" + (f", {params}" if params else "")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("runs/wsol-search"))
    parser.add_argument("--trials", type=int, default=3, help="trials per method")
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    header(f"fair search of the WSOL methods: {args.trials} trials per method")

    command = search_command(args)
    run_camlens(*command)
    summary = json.loads((args.out / "search.json").read_text())
    trials = {t["trial"]: t for t in summary["trials"]}

    rows: list[list[Any]] = []
    for method in (m for m in WSOL_METHODS if m in summary["best"]):
        best = trials[summary["best"][method]]
        test = best["test"]
        metrics = [rounded(test[k]) for k in ("accuracy", "gt_known_loc", "maxboxacc_v2", "pxap")]
        spread = sorted(t["val_score"] for t in summary["trials"] if t["method"] == method)
        rows.append([method, *metrics, describe(best), " / ".join(f"{v:.1f}" for v in spread)])
        print(rows[-1], flush=True)
    for label, box in (
        ("center box (half width and height)", "center_box"),
        ("best fixed box (chosen on test: an upper bound)", "best_fixed_box"),
    ):
        values = summary["baselines"][box]
        rows.append([label, None, *[rounded(values[k]) for k in ("gt_known_loc", "maxboxacc_v2")], None, None, None])

    count = len(summary["trials"])
    seconds = sum(t["train_seconds"] for t in summary["trials"])
    notes = (
        f"gapnet from scratch, 32 px, 3000 training images, {args.epochs} epochs of AdamW, {args.trials} trials per "
        "method (learning rate log-uniform in 1e-4..1e-2 and the method's parameters over their search ranges: "
        "Choe et al.'s for the six methods they compared), "
        f"every epoch scored by MaxBoxAccV2 on 200 val images, the best epoch of the best trial per method reported "
        f"on 500 test images (%). The {count} trials trained in {seconds:.0f} s in all (one torch thread; a rerun "
        "resumes the search in its folder and keeps these times). "
        f"{args.trials} trials per method is a small search: differences between methods within the spread of "
        "their own trials are not a ranking. Made by python benchmarks/bench_wsol_search.py."
    )
    write_result(
        "wsol_search_builtin",
        "WSOL training methods, fair search on the built-in dataset (test split, %)",
        COLUMNS,
        rows,
        notes,
        command="OMP_NUM_THREADS=1 " + shlex.join(["camlens", *command]),
    )


if __name__ == "__main__":
    main()
