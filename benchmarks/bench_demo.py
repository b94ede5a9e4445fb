"""`make demo` as a benchmark: run `camlens demo` once as a whole process and write its tables (localization,
the CAM family, time per phase) to benchmarks/results/demo_*.json, the tables the demo's own report shows.

    python benchmarks/bench_demo.py                 # runs `camlens demo --out demo-out` (about 1.5 min, 2 cores)
    python benchmarks/bench_demo.py --reuse         # reads demo-out/summary.json of an earlier run
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from camlens.demo import localization_table, methods_table
from common import header, write_result

PHASES = {
    "data": "data",
    "train": "training",
    "explain": "maps",
    "localization": "localization",
    "methods": "methods compared",
    "photos: model and photos": "the photos' model",
    "photos: predictions and CAM overlays": "the photos' predictions with overlays",
    "photos: CAM family and faithfulness": "the CAM family with faithfulness on the cat",
    "report": "report",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo-out", help="the demo's output folder")
    parser.add_argument("--reuse", action="store_true", help="read OUT/summary.json instead of running the demo")
    args = parser.parse_args()
    header("make demo")
    out = Path(args.out)
    wall = None
    if not args.reuse:
        shutil.rmtree(out, ignore_errors=True)
        camlens = Path(sys.executable).with_name("camlens")
        start = time.perf_counter()
        subprocess.run([str(camlens), "demo", "--out", str(out)], check=True)
        wall = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    command = (
        None if wall is not None else f"camlens demo --out {out}, read back by python benchmarks/bench_demo.py --reuse"
    )
    for name, table in (
        ("demo_localization", localization_table(summary["localization"])),
        ("demo_methods", methods_table(summary["methods"])),
    ):
        title = f"make demo: {table.title[0].lower()}{table.title[1:]}"
        write_result(name, title, table.header, table.rows, table.note, command=command)
    rows = [[PHASES.get(phase, phase), round(seconds, 1)] for phase, seconds in summary["timings"].items()]
    rows.append(["whole job", round(summary["seconds"], 1)])
    if wall is not None:
        rows.append(["whole command (wall, with start-up)", round(wall, 1)])
    write_result(
        "demo_phases",
        "make demo: time per phase",
        ["phase", "seconds"],
        rows,
        f"test accuracy {summary['test_accuracy']:.2%} on {summary['num_test']} images; CPU: {summary['cpu']}.",
        command=command,
    )


if __name__ == "__main__":
    main()
