"""Images per second of `camlens evaluate` and `camlens explain` with 1 and 2 processes (torchrun, gloo on CPU),
timed as whole processes (start-up, model load, data, work, merge), interleaved, medians.

    python benchmarks/bench_distributed.py [--checkpoint demo-out/model/best.safetensors] [--images 400]
                                           [--procs 1 2] [--repeats 3] [--faithfulness]

Run it from the repository root.  One process gets all the machine's threads; under torchrun each of the N
processes gets cpus / N threads, so the comparison is the same cores used two ways.  Without --checkpoint (and no
demo checkpoint in demo-out/) a random gapnet with 10 classes at 64 px is used.  The evaluate and explain runs
check that every process count gives the same metrics and the same summary.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import header, write_result

DEMO_CHECKPOINT = Path("demo-out/model/best.safetensors")


def _checkpoint(arg: str | None, tmp: Path) -> Path:
    if arg:
        return Path(arg).resolve()
    if DEMO_CHECKPOINT.is_file():
        return DEMO_CHECKPOINT.resolve()
    from camlens.models import GapNet, Preprocess, save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(
        tmp / "gapnet.safetensors",
        GapNet(10).eval(),
        arch="gapnet",
        class_names=[str(i) for i in range(10)],
        preprocess=Preprocess((64, 64), (0.5,) * 3, (0.25,) * 3),
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(procs: int, args: list[str]) -> tuple[list[str], dict]:
    cpus = os.cpu_count() or 1
    if procs == 1:
        return [sys.executable, "-m", "camlens", *args], {**os.environ, "OMP_NUM_THREADS": str(cpus)}
    return (
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={procs}",
            "--master-addr=127.0.0.1",
            f"--master-port={_free_port()}",
            "-m",
            "camlens",
            *args,
        ],
        {**os.environ, "OMP_NUM_THREADS": str(max(1, cpus // procs))},
    )


def _run(procs: int, args: list[str], cwd: Path) -> float:
    cmd, env = _command(procs, args)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--faithfulness", action="store_true", help="evaluate with --faithfulness --steps 20")
    opts = parser.parse_args()
    header(f"camlens evaluate / explain over {opts.images} built-in test images, processes {opts.procs}")

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ckpt = _checkpoint(opts.checkpoint, tmp)
        from camlens.data.builtin import BuiltinDataset
        from camlens.render import save_image

        files = tmp / "images"
        files.mkdir()
        data = BuiltinDataset("test", num_images=opts.images)
        for i in range(len(data)):
            save_image(data[i]["image"], files / f"{i:05d}.png")
        print(f"# checkpoint {ckpt}; {opts.images} PNG files written for explain")

        evaluate = [
            "evaluate",
            "--checkpoint",
            str(ckpt),
            "--num-images",
            str(opts.images),
            "--batch-size",
            str(opts.batch_size),
            "--quiet",
            "--overwrite",  # every repeat writes the same --json file again
        ] + (["--faithfulness", "--steps", "20"] if opts.faithfulness else [])
        jobs = {
            "evaluate": evaluate,
            "explain": [
                "explain",
                str(files),
                "--checkpoint",
                str(ckpt),
                "--batch-size",
                str(opts.batch_size),
                "--quiet",
                "--restart",
            ],
        }
        times: dict[tuple[str, int], list[float]] = {(job, p): [] for job in jobs for p in opts.procs}
        for _ in range(opts.repeats):
            for job, args in jobs.items():
                for p in opts.procs:
                    out = ["--json", f"{job}-{p}.json"] if job == "evaluate" else ["--out", f"{job}-{p}"]
                    times[job, p].append(_run(p, args + out, tmp))
        for p in opts.procs[1:]:
            first = opts.procs[0]
            same_metrics = json.loads((tmp / f"evaluate-{p}.json").read_text()) == json.loads(
                (tmp / f"evaluate-{first}.json").read_text()
            )
            same_summary = (tmp / f"explain-{p}" / "summary.json").read_text() == (
                tmp / f"explain-{first}" / "summary.json"
            ).read_text()
            print(
                f"# {p} processes vs {first}: identical metrics {same_metrics}, identical explain summary {same_summary}"
            )

    print(f"{'job':<10}{'procs':>6}{'median s':>10}{'images/s':>10}{'speed-up':>10}")
    rows = []
    for job in jobs:
        base = statistics.median(times[job, opts.procs[0]])
        for p in opts.procs:
            med = statistics.median(times[job, p])
            print(f"{job:<10}{p:>6}{med:>10.2f}{opts.images / med:>10.1f}{base / med:>10.2f}")
            rows.append([job, p, round(med, 2), round(opts.images / med, 1), round(base / med, 2)])
    write_result(
        "distributed_faithfulness" if opts.faithfulness else "distributed",
        f"torchrun: {opts.images} images, processes {' / '.join(map(str, opts.procs))}"
        + (" (evaluate --faithfulness --steps 20)" if opts.faithfulness else ""),
        ["job", "processes", "median s", "images/s", "speed-up"],
        rows,
        f"Whole processes, start-up included, medians of {opts.repeats} rounds; the threads of the machine's "
        "cores are split between the processes. Every process count gives identical metrics and summaries.",
    )


if __name__ == "__main__":
    main()
