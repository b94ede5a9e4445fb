"""Scale-out on torch.distributed, as launched by torchrun (also under Slurm or Kubernetes launchers).

A run is one process per device.  The work is cut into the batches a single process would run, and the batches are
dealt out to the ranks round robin (no duplicates, no gaps, counts differ by at most one batch): every image is
computed in the same batch whatever the number of ranks, so the numbers are bit-identical to a single-process run
(a convolution's rounding can depend on what else is in the batch).  Results are combined exactly: metrics from
summed integer statistics, per-image records gathered and put back in input order.  Without torchrun's
environment everything degrades to a single process with no process group.

Every collective waits at most the context's ``timeout`` (``--dist-timeout``, default :data:`DEFAULT_TIMEOUT`
seconds) for the other ranks: a rank that hangs ends the job with one line from a waiting rank naming the rank(s)
that did not arrive (each rank records in torchrun's store how many collectives it has entered), instead of
torch's default of 30 minutes.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import zlib
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from .errors import CamlensError
from .files import write_atomic

DEFAULT_TIMEOUT = 300.0  # seconds a rank waits for the others in a collective
T = TypeVar("T")
_entered = itertools.count(1)  # collectives this process has entered


class RankTimeout(CamlensError):
    """Another rank did not answer a collective in time (hung, or gone)."""


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    timeout: float = DEFAULT_TIMEOUT

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "cpu", timeout: float = DEFAULT_TIMEOUT) -> Context:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on CUDA) and pick this
    rank's device: ``cuda`` becomes ``cuda:LOCAL_RANK``.  Collectives wait at most ``timeout`` seconds."""
    if not timeout > 0:
        raise CamlensError(f"--dist-timeout {timeout}: give a positive number of seconds")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local % max(1, torch.cuda.device_count()))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout))
    return Context(rank, world, local, dev, timeout)


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
    _collective("gathering results", ctx, lambda: dist.all_gather_object(out, obj))
    return out


def sum_tensors(tensors: dict[str, torch.Tensor], ctx: Context) -> dict[str, torch.Tensor]:
    """Element-wise sums over ranks of integer or float statistics (counts, histograms), exact for integers."""
    if not ctx.distributed:
        return tensors
    backend_device = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
    out = {}
    for name, value in tensors.items():
        t = value.to(backend_device).clone()
        _collective("summing counts", ctx, partial(dist.all_reduce, t, op=dist.ReduceOp.SUM))
        out[name] = t.to(value.device)
    return out


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        _collective("waiting for the other ranks", ctx, dist.barrier)


def _store() -> Any:
    try:
        return dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):  # no default store in this torch, or no group
        return None


def _collective(what: str, ctx: Context, run: Callable[[], T]) -> T:
    """``run()`` a collective; when it fails (a timeout, a peer gone), :class:`RankTimeout` naming the ranks that
    had not entered it."""
    step = next(_entered)
    store = _store()
    if store is not None:
        store.set(f"camlens/entered/{ctx.rank}", str(step))
    try:
        return run()
    except RuntimeError as err:
        late = [r for r in range(ctx.world_size) if r != ctx.rank and _entered_by(store, r) < step]
        who = f"rank {', '.join(map(str, late))}" if late else "another rank"
        raise RankTimeout(
            f"rank {ctx.rank}: {who} did not answer within {ctx.timeout:g} s while {what} (hung or gone: "
            f"{str(err).splitlines()[0][:120]}); finished work is logged, so rerunning the command resumes "
            "(--dist-timeout SECONDS sets the wait)"
        ) from err


def _entered_by(store: Any, rank: int) -> int:
    """How many collectives ``rank`` had entered, as it recorded in the store (0 when unknown)."""
    key = f"camlens/entered/{rank}"
    try:
        return int(store.get(key)) if store is not None and store.check([key]) else 0
    except (RuntimeError, ValueError):
        return 0


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
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "a") as f:
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


def earlier_run(progress_dir: Path) -> dict | None:
    """The ``run_key`` recorded in ``progress_dir`` by an earlier run, or None."""
    key_file = progress_dir / "run.json"
    try:
        return json.loads(key_file.read_text()) if key_file.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}  # unreadable: some other run's


def resume_entries(
    progress_dir: Path, run_key: dict, resume: bool, ctx: Context, overwrite: bool = False
) -> list[dict]:
    """Entries that earlier runs logged in ``progress_dir`` (by any number of ranks) when ``resume`` and the
    earlier run had the same ``run_key``; otherwise the folder is emptied and the new key recorded.  An earlier
    run with another key is kept (:class:`CamlensError`, saying so) unless ``overwrite``."""
    key_file = progress_dir / "run.json"
    earlier = earlier_run(progress_dir)
    if earlier is not None and earlier != run_key and not overwrite:
        changed = ", ".join(sorted(k for k in {*earlier, *run_key} if earlier.get(k) != run_key.get(k)))
        raise CamlensError(
            f"{progress_dir} records a run with other options ({changed or 'unreadable'}): its results would be "
            "overwritten and could no longer be resumed; keep them by choosing another output folder, or pass "
            "--overwrite to replace them"
        )
    if resume and earlier is not None and earlier == run_key:
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
