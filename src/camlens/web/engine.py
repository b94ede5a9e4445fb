"""The model side of the web app: explainers per (method, layer), reused, and a bounded pool of threads that
run them, batching requests that arrive together.

Each explainer works on its own copy of the model.  Explainers place hooks (gradient methods may even replace a
layer's output to start the autograd graph there), so two explainers sharing one model would see each other's
hooks on every pass; a copy each keeps them apart.  The cache is small (LRU) and an evicted explainer is closed
only once no thread is using it.
"""

from __future__ import annotations

import copy
import inspect
import threading
from collections import OrderedDict, deque
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import Tensor, nn

from ..methods import CAM, EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM, get_method
from ..methods.base import Explainer

# Explainers whose calls keep no state between them (thread-local hooks, per-call autograd graphs), checked from
# 8 threads in tests/test_web_api.py; any other method is called under a lock, one call at a time.
THREAD_SAFE = (CAM, GradCAM, GradCAMPlusPlus, XGradCAM, LayerCAM, HiResCAM, EigenCAM)
SEED = 0  # methods that draw noise (SS-CAM) are reseeded before every call: one image, one answer


@dataclass(frozen=True)
class JobKey:
    """Requests with equal keys can share one batch."""

    method: str
    layer: str | None
    target: int | None  # a class index, or None for the top-k
    topk: int
    shape: tuple[int, ...]


@dataclass
class Row:
    """One image's share of a :class:`camlens.CAMResult`."""

    logits: Tensor  # (C,)
    classes: Tensor  # (N,)
    maps: Tensor  # (N, h, w)
    layer: str


@dataclass
class _Job:
    key: JobKey
    x: Tensor  # (1, 3, h, w), preprocessed
    future: Future = field(default_factory=Future)


@dataclass
class _Entry:
    explainer: Explainer
    lock: threading.Lock | None
    generator: torch.Generator | None = None
    warm: bool = False  # a call has succeeded, so the explainer's lazy set-up is done
    users: int = 0
    evicted: bool = False


class _SharedLock:
    """Held by many at once (shared) or by one alone (exclusive); a waiting exclusive holder goes first."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive and not self._waiting)
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: not self._exclusive and not self._shared)
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class ExplainerCache:
    """At most ``size`` explainers, one per (method, layer), each on its own deep copy of ``model``.

    An explainer's first call runs alone, with no other model call in flight: lazy set-up may touch process-wide
    state (Score-CAM's inference copy is made by ``torch.fx`` tracing, which patches ``nn.Module.__call__`` for
    every thread while it runs).  Later calls run side by side.
    """

    def __init__(self, model: nn.Module, size: int = 4) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.size = max(1, size)
        self._entries: OrderedDict[tuple[str, str | None], _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._calls = _SharedLock()

    @contextmanager
    def use(self, method: str, layer: str | None) -> Iterator[Explainer]:
        """The explainer for (method, layer), serialized with a lock unless its class is thread-safe."""
        entry = self._acquire(method, layer)
        try:
            with self._calls.shared() if entry.warm else self._calls.exclusive():
                if entry.lock is None:
                    yield entry.explainer
                else:
                    with entry.lock:
                        if entry.generator is not None:
                            entry.generator.manual_seed(SEED)
                        yield entry.explainer
            entry.warm = True
        finally:
            self._release(entry)

    def _acquire(self, method: str, layer: str | None) -> _Entry:
        key = (method, layer)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._create(method, layer)
                self._entries[key] = entry
                while len(self._entries) > self.size:
                    _, old = self._entries.popitem(last=False)
                    old.evicted = True
                    if old.users == 0:
                        old.explainer.close()
            self._entries.move_to_end(key)
            entry.users += 1
            return entry

    def _create(self, method: str, layer: str | None) -> _Entry:
        cls = get_method(method)
        model = copy.deepcopy(self.model)
        if "generator" in inspect.signature(cls).parameters:
            generator = torch.Generator(device=self.device)
            # the method's own signature takes a generator (checked above); the base Explainer's does not
            return _Entry(cls(model, layer=layer, generator=generator), threading.Lock(), generator)  # type: ignore[call-arg]
        return _Entry(cls(model, layer=layer), None if issubclass(cls, THREAD_SAFE) else threading.Lock())

    def _release(self, entry: _Entry) -> None:
        with self._lock:
            entry.users -= 1
            if entry.evicted and entry.users == 0:
                entry.explainer.close()

    def close(self) -> None:
        with self._lock:
            for entry in self._entries.values():
                entry.evicted = True
                if entry.users == 0:
                    entry.explainer.close()
            self._entries.clear()


class ModelWorkers:
    """``workers`` threads that take jobs from one queue; each takes the oldest job and up to ``max_batch - 1``
    waiting jobs with the same :class:`JobKey`, and runs them as one batch.

    With ``max_batch=1`` every image runs alone, so results are bit-for-bit those of a sequential run; larger
    batches raise throughput (mostly on GPUs) and agree with sequential runs to float rounding (about 1e-6).
    """

    def __init__(self, cache: ExplainerCache, device: torch.device, workers: int = 2, max_batch: int = 1) -> None:
        self.cache = cache
        self.device = device
        self.max_batch = max(1, max_batch)
        self.batches = 0
        self.images = 0
        self.largest_batch = 0
        self._jobs: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._loop, name=f"camlens-model-{i}", daemon=True)
                         for i in range(max(1, workers))]
        for thread in self._threads:
            thread.start()

    def submit(self, key: JobKey, x: Tensor) -> Future:
        """A future for the :class:`Row` of ``x`` (1, 3, h, w); it raises what the explainer raised."""
        job = _Job(key, x)
        with self._cond:
            if self._closed:
                raise RuntimeError("the model workers are shut down")
            self._jobs.append(job)
            self._cond.notify()
        return job.future

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if not self._jobs:
                return None
            first = self._jobs.popleft()
            batch = [first]
            if self.max_batch > 1:
                for job in list(self._jobs):
                    if len(batch) == self.max_batch:
                        break
                    if job.key == first.key:
                        self._jobs.remove(job)
                        batch.append(job)
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            try:
                rows = self._run(batch)
            except Exception as err:  # handed to every waiting request; the thread lives on
                for job in batch:
                    job.future.set_exception(err)
            else:
                for job, row in zip(batch, rows):
                    job.future.set_result(row)

    def _run(self, batch: list[_Job]) -> list[Row]:
        key = batch[0].key
        x = torch.cat([job.x for job in batch]).to(self.device)
        with self.cache.use(key.method, key.layer) as explainer:
            result = explainer(x, key.target, topk=key.topk)
        with self._cond:
            self.batches += 1
            self.images += len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
        logits, classes, maps = (t.detach().cpu() for t in (result.logits, result.classes, result.maps))
        return [Row(logits[i].clone(), classes[i].clone(), maps[i].clone(), result.layer) for i in range(len(batch))]

    def close(self) -> None:
        """Finish the queued jobs, stop the threads and close the explainers."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()
        self.cache.close()
