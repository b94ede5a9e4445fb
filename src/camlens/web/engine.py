"""The model side of the web app: explainers per (method, layer), reused from a bounded cache, and two lanes of
threads that run them: ``workers`` threads for the one-pass methods (CAM, the Grad-CAM family, Eigen-CAM),
batching requests that arrive together, and one thread for the ``expensive`` ones (Score-CAM, SS-CAM, IS-CAM,
Ablation-CAM), so that a request that takes minutes never holds the model from the others.

What the caches hold, at most (the bound the soak test checks, docs/tutorials/serve.md): ``size`` explainers, each
one-pass explainer on its own deep copy of the model, plus up to one more per model thread for explainers
evicted while in use; and one copy shared by every expensive explainer, with its inference copy (see
:func:`camlens.methods.activation.pass_model`), made once.  Explainers place hooks, so the copies keep the served
model clean; the expensive explainers' hooks act only inside their own calls (``HookSet``), and their lane has
one thread, so sharing a copy between them is safe and makes the ``torch.fx`` inference copy once per server
rather than once per explainer (each ``torch.fx`` build also leaves its generated source in a process-wide
cache that is never emptied).

Work is bounded per request: an expensive call stops between passes when its compute budget runs out, when
every client waiting for it has gone, or when the server shuts down (:func:`camlens.methods.stop_when`), and
each lane's queue is bounded; all of these answer with a :class:`Refused`.
"""

from __future__ import annotations

import copy
import math
import threading
import time
import traceback
from collections import OrderedDict, deque
from concurrent.futures import Future
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from ..methods import Cancelled, get_method, stop_when
from ..methods.base import Explainer
from ..targets import TargetRecipe
from ..wsolnet import build_explainer

SEED = 0  # methods that draw noise (SS-CAM) are reseeded before every call: one image, one answer


class Refused(Exception):
    """Work the server will not start or finish now: the HTTP status to answer, and a Retry-After in seconds."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class JobKey:
    """Requests with equal keys can share one batch."""

    method: str
    layer: str | None
    target: int | TargetRecipe | None  # a class index, a target (built per batch from the images' sizes), or None
    topk: int
    shape: tuple[int, ...]


@dataclass
class Row:
    """One image's share of a :class:`camlens.CAMResult`."""

    logits: Tensor  # (C,)
    classes: Tensor  # (N,)
    maps: Tensor  # (N, h, w)
    layer: str
    target_scores: Tensor | None = None  # (N,) with a target: its scores, NaN where it explains nothing


@dataclass
class Job:
    """One queued image; ``cancel()`` when nobody waits for the answer any more."""

    key: JobKey
    x: Tensor  # (1, 3, h, w), preprocessed
    expensive: bool
    size: tuple[int, int] = (0, 0)  # the uploaded image's (width, height): a box target is given in its pixels
    future: Future = field(default_factory=Future)
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class _Entry:
    explainer: Explainer
    lock: threading.Lock | None
    generator: torch.Generator | None = None
    prepared: bool = False
    warm: bool = False  # a call has succeeded: a failure is then the input's, not the (method, layer)'s
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
    """At most ``size`` explainers, one per (method, layer), least recently used evicted first.

    One-pass explainers each get a deep copy of ``model``; expensive ones share one copy (their calls come from
    one thread, see :class:`ModelWorkers`).  Calls of the one-pass lane hold a shared lock; an explainer whose
    class has ``exclusive_setup`` prepares under the exclusive one (Score-CAM's inference copy is made by
    ``torch.fx`` tracing, which patches ``nn.Module.__call__`` for every thread while it runs), which waits
    only for the one-pass lane, never for an expensive call in progress.  The one-pass lane holds the shared
    lock while it prepares too (finding the layer runs the model).  An explainer whose first call failed (a
    layer the method cannot use) is dropped at once rather than kept.
    """

    def __init__(self, model: nn.Module, size: int = 4) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.size = max(1, size)
        self.created = 0
        self._entries: OrderedDict[tuple[str, str | None], _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._calls = _SharedLock()
        self._shared_copy: nn.Module | None = None

    def __len__(self) -> int:
        return len(self._entries)

    @contextmanager
    def use(self, method: str, layer: str | None, x: Tensor) -> Iterator[Explainer]:
        """The explainer for (method, layer), prepared for inputs like ``x`` and serialized with a lock unless
        its class is thread-safe."""
        entry = self._acquire(method, layer)
        cls = type(entry.explainer)
        lane_lock = nullcontext if cls.expensive else self._calls.shared
        try:
            if not entry.prepared:
                with self._calls.exclusive() if cls.exclusive_setup else lane_lock():
                    entry.explainer.prepare(x)
                entry.prepared = True
            with lane_lock(), entry.lock or nullcontext():
                if entry.generator is not None:
                    entry.generator.manual_seed(SEED)
                yield entry.explainer
            entry.warm = True
        except Exception as err:
            if not entry.warm and not isinstance(err, Cancelled):
                self._drop(method, layer, entry)
            raise
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
                    self._retire(old)
            self._entries.move_to_end(key)
            entry.users += 1
            return entry

    def _create(self, method: str, layer: str | None) -> _Entry:
        cls = get_method(method)
        if cls.expensive:
            if self._shared_copy is None:
                self._shared_copy = copy.deepcopy(self.model)
            model = self._shared_copy
        else:
            model = copy.deepcopy(self.model)
        generator = torch.Generator(device=self.device) if cls.draws_noise else None
        options: dict[str, Any] = {"generator": generator} if generator is not None else {}
        explainer = build_explainer(model, method, layer, **options)
        self.created += 1
        return _Entry(explainer, None if type(explainer).thread_safe else threading.Lock(), generator)

    def _drop(self, method: str, layer: str | None, entry: _Entry) -> None:
        with self._lock:
            if self._entries.get((method, layer)) is entry:
                del self._entries[(method, layer)]
                self._retire(entry)

    def _retire(self, entry: _Entry) -> None:
        """Close ``entry`` now, or when its last user is done (called with ``_lock`` held)."""
        entry.evicted = True
        if entry.users == 0:
            entry.explainer.close()

    def _release(self, entry: _Entry) -> None:
        with self._lock:
            entry.users -= 1
            if entry.evicted and entry.users == 0:
                entry.explainer.close()

    def close(self) -> None:
        with self._lock:
            for entry in self._entries.values():
                self._retire(entry)
            self._entries.clear()


def _forget_frames(err: BaseException) -> None:
    """Clear the local variables of the finished frames in ``err``'s traceback (and its causes').

    An exception handed to another thread through a future keeps its traceback, whose frames hold the batch,
    the explainer (with its model copy) and the method's intermediate tensors; the batch holds the future and
    the future the exception, a cycle that only the cyclic garbage collector frees, which in a process with
    millions of long-lived objects runs seldom.  The file and line of each frame stay, for the server log."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        current = current.__cause__ or current.__context__


class ModelWorkers:
    """Threads that take jobs from two bounded queues: ``workers`` threads for one-pass methods, each taking the
    oldest job and up to ``max_batch - 1`` waiting jobs with the same :class:`JobKey` as one batch, and one
    thread for expensive methods, one image at a time.

    ``budget`` seconds (None: no limit) bound each expensive call, which then stops between passes with a 504;
    at most ``max_expensive`` expensive jobs are queued or running (more get a 503).  With ``max_batch=1`` every
    image runs alone, so results are bit-for-bit those of a sequential run; larger batches raise throughput
    (mostly on GPUs) and agree with sequential runs to float rounding (about 1e-6).
    """

    def __init__(
        self,
        cache: ExplainerCache,
        device: torch.device,
        workers: int = 2,
        max_batch: int = 1,
        budget: float | None = None,
        max_expensive: int = 2,
    ) -> None:
        self.cache = cache
        self.device = device
        self.max_batch = max(1, max_batch)
        self.budget = budget
        self.max_expensive = max_expensive
        self.batches = 0
        self.images = 0
        self.largest_batch = 0
        self.stopped = 0  # expensive calls stopped between passes
        self.running: dict[str, int] = {"fast": 0, "expensive": 0}
        self._jobs: dict[bool, deque[Job]] = {False: deque(), True: deque()}
        self._expensive_jobs = 0  # queued or running
        self._cond = threading.Condition()
        self._closed = False
        lanes = [False] * max(1, workers) + [True]
        self._threads = [
            threading.Thread(
                target=self._loop, args=(lane,), daemon=True, name=f"camlens-model-{'expensive' if lane else i}"
            )
            for i, lane in enumerate(lanes)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, key: JobKey, x: Tensor, size: tuple[int, int] = (0, 0)) -> Job:
        """Queue ``x`` (1, 3, h, w) of an image of ``size`` (width, height); the job's future gives its
        :class:`Row`, or raises what the explainer raised or a :class:`Refused`.  Raises :class:`Refused` (503) at
        once when the expensive lane is full."""
        job = Job(key, x, get_method(key.method).expensive, size)
        with self._cond:
            if self._closed:
                raise Refused(503, "the server is shutting down")
            if job.expensive:
                if self._expensive_jobs >= self.max_expensive:
                    raise Refused(
                        503,
                        f"busy: {self._expensive_jobs} requests of the slow methods (Score-CAM, SS-CAM, "
                        "IS-CAM, Ablation-CAM) in progress; retry shortly or use a one-pass method",
                        retry_after=5,
                    )
                self._expensive_jobs += 1
            self._jobs[job.expensive].append(job)
            self._cond.notify_all()
        return job

    def _take(self, expensive: bool) -> list[Job] | None:
        jobs = self._jobs[expensive]
        with self._cond:
            while True:
                while not jobs and not self._closed:
                    self._cond.wait()
                if not jobs:
                    return None
                first = jobs.popleft()
                if not first.cancelled:
                    break
                self._finish([first], exception=Refused(499, "the client closed the connection"))
            batch = [first]
            if self.max_batch > 1 and not expensive:
                for job in list(jobs):
                    if len(batch) == self.max_batch:
                        break
                    if job.key == first.key and not job.cancelled:
                        jobs.remove(job)
                        batch.append(job)
            self.running["expensive" if expensive else "fast"] += 1
            return batch

    def _loop(self, expensive: bool) -> None:
        while (batch := self._take(expensive)) is not None:
            try:
                rows = self._run(batch)
            except Exception as err:  # handed to every waiting request; the thread lives on
                _forget_frames(err)
                self._finish(batch, exception=err)
                del err
            else:
                self._finish(batch, rows=rows)
            finally:
                with self._cond:
                    self.running["expensive" if expensive else "fast"] -= 1

    def _finish(self, batch: list[Job], rows: list[Row] | None = None, exception: Exception | None = None) -> None:
        with self._cond:
            if batch[0].expensive:
                self._expensive_jobs -= len(batch)
        for i, job in enumerate(batch):
            if rows is not None:
                job.future.set_result(rows[i])
            else:
                job.future.set_exception(exception)

    def _run(self, batch: list[Job]) -> list[Row]:
        key = batch[0].key
        x = torch.cat([job.x for job in batch]).to(self.device)
        deadline = time.monotonic() + self.budget if self.budget is not None and batch[0].expensive else math.inf

        def stop() -> bool:
            return self._closed or time.monotonic() > deadline or all(job.cancelled for job in batch)

        try:
            with stop_when(stop), self.cache.use(key.method, key.layer, x) as explainer:
                if isinstance(key.target, TargetRecipe):
                    target = key.target.build([job.size for job in batch], x.shape[-2:])
                    result = explainer(x, target=target)  # type: ignore[call-arg]  # a LayerExplainer (parse_options)
                else:
                    result = explainer(x, key.target, topk=key.topk)
        except Cancelled:
            with self._cond:
                self.stopped += 1
            if self._closed:
                raise Refused(503, "the server is shutting down") from None
            if all(job.cancelled for job in batch):
                raise Refused(499, "the client closed the connection") from None
            raise Refused(
                504,
                f"{key.method} ran over this server's compute budget of {self.budget:g} s per "
                "request; use a one-pass method (cam, gradcam...), a smaller image or a later "
                "layer with fewer channels",
            ) from None
        with self._cond:
            self.batches += 1
            self.images += len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
        logits, classes, maps = (t.detach().cpu() for t in (result.logits, result.classes, result.maps))
        scores = None if result.target_scores is None else result.target_scores.detach().cpu()
        return [
            Row(
                logits[i].clone(),
                classes[i].clone(),
                maps[i].clone(),
                result.layer,
                None if scores is None else scores[i].clone(),
            )
            for i in range(len(batch))
        ]

    def stop(self) -> None:
        """Refuse new jobs, fail the queued ones and stop the running expensive calls at their next pass (503);
        safe to call from a signal handler's thread.  :meth:`close` then joins the threads."""
        with self._cond:
            self._closed = True
            queued = [job for jobs in self._jobs.values() for job in jobs]
            for jobs in self._jobs.values():
                jobs.clear()
            self._cond.notify_all()
        for job in queued:
            self._finish([job], exception=Refused(503, "the server is shutting down"))

    def close(self) -> None:
        """:meth:`stop`, wait for the threads and close the explainers."""
        self.stop()
        for thread in self._threads:
            thread.join()
        self.cache.close()
