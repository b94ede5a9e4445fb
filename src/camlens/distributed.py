"""Scale-out on torch.distributed, as launched by torchrun (also under Slurm or Kubernetes launchers).

A run is one process per device; each takes a strided shard of the work (no duplicates, no gaps, sizes differ by at
most one), and results are combined exactly: metrics from summed sufficient statistics, per-image records gathered
to rank 0.  Without torchrun's environment everything degrades to a single process with no process group.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


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


def shard(items: Sequence[T], ctx: Context) -> list[T]:
    """This rank's items: every ``world_size``-th one starting at ``rank``."""
    return list(items[ctx.rank :: ctx.world_size])


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


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so readers never see a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
