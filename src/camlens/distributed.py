"""Scale-out on torch.distributed, as launched by torchrun (also under Slurm or Kubernetes launchers).

A run is one process per device.  The work is cut into the batches a single process would run, and the batches are
dealt out to the ranks round robin (no duplicates, no gaps, counts differ by at most one batch): every image is
computed in the same batch whatever the number of ranks, so the numbers are bit-identical to a single-process run
(a convolution's rounding can depend on what else is in the batch).  Results are combined exactly: metrics from
summed integer statistics, per-image records gathered and put back in input order.  Without torchrun's
environment everything degrades to a single process with no process group.
"""

from __future__ import annotations

import base64
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

from .errors import CamlensError


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "cpu") -> Context:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on CUDA) and pick this
    rank's device: ``cuda`` becomes ``cuda:LOCAL_RANK``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local % max(1, torch.cuda.device_count()))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Context(rank, world, local, dev)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard_batches(count: int, batch_size: int, ctx: Context) -> list[tuple[int, list[int]]]:
    """This rank's batches as ``(batch number, indices)``: the run's batches are consecutive runs of ``batch_size``
    indices out of ``range(count)`` (the last may be shorter), and rank r takes batches r, r + world, ..."""
    if batch_size < 1:
        raise CamlensError(f"batch size {batch_size} must be at least 1")
    starts = range(0, count, batch_size)
    batches = [(j, list(range(s, min(s + batch_size, count)))) for j, s in enumerate(starts)]
    return batches[ctx.rank :: ctx.world_size]


def gather(obj: Any, ctx: Context) -> list[Any]:
    """Every rank's ``obj`` on every rank (plain JSON-like data from our own processes)."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def sum_tensors(tensors: dict[str, torch.Tensor], ctx: Context) -> dict[str, torch.Tensor]:
    """Element-wise sums over ranks of integer or float statistics (counts, histograms), exact for integers."""
    if not ctx.distributed:
        return tensors
    backend_device = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
    out = {}
    for name, value in tensors.items():
        t = value.to(backend_device).clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        out[name] = t.to(value.device)
    return out


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


class ProgressLog:
    """Append-only record of finished work for one rank, one JSON object a line, flushed and fsynced per write.

    A crash can at worst leave a partial last line, which :meth:`read_all` ignores; work is keyed, so a rerun with
    any number of ranks skips what any earlier rank finished.
    """

    def __init__(self, folder: Path, ctx: Context) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"rank{ctx.rank:04d}-of{ctx.world_size:04d}-pid{os.getpid()}.jsonl"

    def append(self, entries: Sequence[dict]) -> None:
        if not entries:
            return
        with open(self.path, "a") as f:
            f.write("".join(json.dumps(e) + "\n" for e in entries))
            f.flush()
            os.fsync(f.fileno())

    @staticmethod
    def read_all(folder: Path) -> list[dict]:
        entries = []
        for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
            for line in path.read_text().splitlines():
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # the torn last line of a crashed rank; that item is redone
        return entries


def resume_entries(progress_dir: Path, run_key: dict, resume: bool, ctx: Context) -> list[dict]:
    """Entries that earlier runs logged in ``progress_dir`` (by any number of ranks) when ``resume`` and the
    earlier run had the same ``run_key``; otherwise the folder is emptied and the new key recorded."""
    key_file = progress_dir / "run.json"
    if resume and key_file.exists():
        if json.loads(key_file.read_text()) != run_key:
            raise CamlensError(
                f"{progress_dir} holds the progress of a run with other options; use --restart or another folder"
            )
        return ProgressLog.read_all(progress_dir)
    barrier(ctx)  # every rank has checked the old key before the main rank replaces it
    if ctx.is_main:
        if progress_dir.exists():
            for old in progress_dir.glob("*.jsonl"):
                old.unlink()
        progress_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(key_file, json.dumps(run_key))
    barrier(ctx)
    return []


def pack_counts(tensors: dict[str, torch.Tensor]) -> dict[str, list]:
    """Integer count tensors as JSON-safe ``[shape, base64(zlib(int64 bytes))]`` for progress logs."""
    out = {}
    for name, t in tensors.items():
        raw = t.detach().cpu().to(torch.int64).numpy().tobytes()
        out[name] = [list(t.shape), base64.b64encode(zlib.compress(raw)).decode("ascii")]
    return out


def unpack_counts(packed: dict[str, list]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`pack_counts`."""
    out = {}
    for name, (shape, data) in packed.items():
        raw = np.frombuffer(zlib.decompress(base64.b64decode(data)), dtype=np.int64)
        out[name] = torch.from_numpy(raw.copy()).reshape(shape)
    return out


def temporary_name(path: Path) -> Path:
    """Where ``path`` is written before the rename that publishes it: hidden, beside it, one per process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so readers never see a half-written file."""
    tmp = temporary_name(path)
    tmp.write_text(text)
    os.replace(tmp, path)
