"""Training under torchrun: 2 gloo processes on CPU give a single process's weights (same global batch) up to
float rounding, and a run whose rank crashed resumes to the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from _cli_setup import free_port
from _train_worker import run

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
WORKER = Path(__file__).with_name("_train_worker.py")
# Bound on |w_ddp - w_single| after 3 epochs (12 SGD steps, weights of order 0.1): the two differ only in the
# order of float32 sums (two half-batch gradients all-reduced instead of one batch's), ~1e-7 relative per step;
# the largest difference measured was 4.7e-8, so 1e-6 leaves a 20x margin
ATOL = 1e-6


def _torchrun(out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        "--monitor-interval=0.1",
        str(WORKER),
        str(out),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ONE_THREAD)


def test_two_ranks_equal_one_process_and_a_crashed_run_resumes(tmp_path):
    torch.set_num_threads(1)
    try:
        run(str(tmp_path / "single"), 3)
    finally:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    crashed = _torchrun(tmp_path / "ddp", "--crash-after", "1")
    assert crashed.returncode != 0 and "stopped after epoch 1" in crashed.stderr
    assert json.loads((tmp_path / "ddp" / "train_state.json").read_text())["epoch"] == 1
    resumed = _torchrun(tmp_path / "ddp", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = json.loads((tmp_path / "ddp" / "train_state.json").read_text())
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3]
    single = load_file(str(tmp_path / "single" / "last.safetensors"))
    ddp = load_file(str(tmp_path / "ddp" / "last.safetensors"))
    assert single.keys() == ddp.keys()
    worst = max(float((single[k] - ddp[k]).abs().max()) for k in single)
    assert worst <= ATOL, worst
    print(f"largest |w_ddp - w_single| after 3 epochs: {worst:.3g}")
