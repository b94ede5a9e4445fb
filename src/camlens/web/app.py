"""The ASGI app of `camlens serve`: the page, ``POST /api/explain``, ``GET /api/info`` and ``GET /healthz``.

Uploads are untrusted: they are read into memory under a size limit and a minimum rate (never written to disk)
before they take one of the ``max_pending`` request slots, decoded by content in an allowed format with a pixel
limit and under a process-wide :class:`~camlens.data.images.DecodeBudget`, and every failure is a 4xx JSON
``{"error": ...}``.  Requests for other hosts and cross-site state-changing requests are refused
(:mod:`camlens.web.guard`).  Decoding and rendering run in a small
thread pool, the model in :class:`~camlens.web.engine.ModelWorkers`; the event loop only waits, and watches the
connection: a request whose client left is cancelled (an expensive method stops at its next pass).  Work the
server will not do now is a JSON 503 (busy, shutting down) or 504 (over the compute budget).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable, Mapping, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from torch import Tensor

from .. import __version__
from ..capture import layer_names
from ..data.images import BudgetFull, DecodeBudget, FormatError, ImageError, decode_image, image_pixels, to_tensor
from ..errors import CamlensError
from ..methods import METHODS, applicable_methods, get_method
from ..methods.attention import no_attention_message
from ..models import LoadedModel
from ..request import TARGET_HINT, WEB, ExplainRequest, RequestError, task_of
from .engine import ExplainerCache, Job, JobKey, ModelWorkers, Refused, Row
from .guard import cross_site_reason, host_allowed
from .payload import explain_payload, for_display
from .upload import FORM_OVERHEAD, BadRequest, Form, read_form

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("camlens.web")

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
DECODE_WAIT_S = 1.0  # an upload waits this long for room in the decode budget, then gets a 503
BODY_TIMEOUT_S = 10.0  # the upload's body: each read waits at most this long
MIN_BODY_RATE = 8192  # bytes/s on average once BODY_TIMEOUT_S has passed; slower bodies are refused (408)


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int
    max_pixels: int
    max_topk: int
    max_side: int
    max_pending: int
    body_timeout: float = BODY_TIMEOUT_S
    min_body_rate: float = MIN_BODY_RATE


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def parse_options(
    params: Mapping[str, str], loaded: LoadedModel, max_topk: int, methods: Sequence[str] = tuple(METHODS)
) -> ExplainRequest:
    """The request's ``method`` (one of ``methods``), ``layer``, ``topk``, ``class``, ``target`` and ``alpha``
    (query or form fields), checked by :meth:`camlens.request.ExplainRequest.parse` as the CLI's flags are.
    ``target`` has the syntax of the CLI's ``--target`` and must fit the model's task; with it ``topk`` is ignored
    (the page always sends one), and ``class`` fills in a ``logit``, ``softmax`` or ``sigmoid`` target without a
    class.  Detection and segmentation models explain their default layer and need a target (detectors: or
    Eigen-CAM).  A field that does not fit is a :class:`BadRequest` (400)."""
    try:
        return ExplainRequest.parse(
            loaded,
            method=params.get("method"),
            layers=[params.get("layer", "")],
            topk=params.get("topk"),
            category=params.get("class"),
            target=params.get("target"),
            alpha=params.get("alpha"),
            caller=WEB,
            offered=methods,
            max_topk=max_topk,
        )
    except RequestError as err:
        raise BadRequest(400, str(err)) from None


def _decode(
    data: bytes, max_pixels: int, max_side: int, loaded: LoadedModel, budget: DecodeBudget | None = None
) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """The model's input (1, 3, h, w), the image scaled for display, and the image's (width, height); the full
    size image is dropped here, so a request waiting for the model holds only small tensors.  The image's pixels
    (read from its header) are held in ``budget`` meanwhile (:class:`BudgetFull` after :data:`DECODE_WAIT_S`
    seconds without room)."""
    pixels = min(image_pixels(data), max_pixels)  # larger images are refused by decode_image before decoding
    with budget.hold(pixels, DECODE_WAIT_S) if budget is not None else nullcontext():
        image = to_tensor(decode_image(data, max_pixels))
        return loaded.preprocess(image), for_display(image, max_side), (image.shape[-1], image.shape[-2])


async def timed_body(chunks: AsyncIterator[bytes], read_timeout: float, min_rate: float) -> AsyncIterator[bytes]:
    """``chunks`` as they come, while each arrives within ``read_timeout`` seconds and, once ``read_timeout``
    seconds have passed, the body averages at least ``min_rate`` bytes/s; :class:`BadRequest` (408) otherwise.

    Args:
        chunks: the request's body (``request.stream()``).
        read_timeout: seconds one read may wait, and the grace period before the rate counts.
        min_rate: bytes per second, on average after the grace period (0: no minimum).

    Returns:
        The chunks, as an async iterator.
    """
    start = time.monotonic()
    received = 0
    iterator = chunks.__aiter__()
    while True:
        allowance = received / min_rate if min_rate > 0 else math.inf  # seconds the bytes so far buy
        left = min(read_timeout, start + read_timeout + allowance - time.monotonic())
        try:
            if left <= 0:
                raise TimeoutError
            chunk = await asyncio.wait_for(iterator.__anext__(), left)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise BadRequest(
                408,
                f"the upload arrived too slowly (at least {min_rate:g} bytes/s after "
                f"{read_timeout:g} s, no pause over {read_timeout:g} s)",
            ) from None
        received += len(chunk)
        yield chunk


def create_app(
    loaded: LoadedModel,
    *,
    max_upload_bytes: int = 20 * 2**20,
    max_pixels: int = 40_000_000,
    workers: int = 2,
    max_batch: int = 1,
    max_side: int = 1024,
    max_topk: int = 10,
    max_pending: int = 64,
    max_explainers: int = 4,
    compute_budget: float | None = 30.0,
    max_expensive: int = 2,
    methods: Sequence[str] | None = None,
    model_name: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    cors_origin: str | None = None,
    decode_budget: int | None = None,
    body_timeout: float = BODY_TIMEOUT_S,
    min_body_rate: float = MIN_BODY_RATE,
) -> FastAPI:
    """The app around one loaded model.

    ``workers`` threads run the one-pass methods (and as many others decode uploads and render answers), one
    more the expensive ones (Score-CAM, SS-CAM, IS-CAM, Ablation-CAM), each call of which stops after
    ``compute_budget`` seconds (504; None: no limit), with at most ``max_expensive`` of them queued or running
    (more get 503); ``max_batch`` > 1 lets a model thread batch requests that arrive together; ``max_pending``
    requests at most are held at once (more get 503); at most ``max_explainers`` explainers are kept (each
    one-pass one on its own copy of the model, see :mod:`camlens.web.engine`); ``methods`` restricts the methods
    offered (default: all that apply: rollout, gae and legrad on transformers only); overlays are rendered at most ``max_side`` pixels on the longer side.

    Only requests whose Host is in ``allowed_hosts`` are served (None: any host; `camlens serve` passes the
    bound address and the loopback names, see :func:`camlens.web.guard.default_hosts`); cross-site
    state-changing requests are refused (403), except from ``cors_origin``, the one origin CORS is opened to.
    An upload's body must arrive with no pause over ``body_timeout`` seconds and, after that long, at
    ``min_body_rate`` bytes/s (408); only then does it take one of the ``max_pending`` slots.  Decoding holds
    the image's pixels in a :class:`~camlens.data.images.DecodeBudget` of ``decode_budget`` pixels (default:
    ``DecodeBudget.for_batches(workers * max_batch, input size, max_pixels)``); an upload that finds no room
    within :data:`DECODE_WAIT_S` seconds gets a 503 with Retry-After.
    """
    fit = applicable_methods(loaded.model)  # the attention methods on transformers only
    offered = tuple(get_method(m).name for m in methods) if methods else fit
    if not offered:
        raise CamlensError("methods= names no method")
    unfit = sorted(set(offered) - set(fit))
    if unfit:
        raise CamlensError(no_attention_message(unfit[0], loaded.model))
    limits = Limits(max_upload_bytes, max_pixels, max_topk, max_side, max_pending, body_timeout, min_body_rate)
    budget = (
        DecodeBudget(decode_budget)
        if decode_budget
        else DecodeBudget.for_batches(workers * max_batch, loaded.preprocess.size, max_pixels)
    )
    name = model_name or loaded.arch
    device = next(loaded.model.parameters()).device
    engine = ModelWorkers(
        ExplainerCache(loaded.model, max_explainers),
        device,
        workers,
        max_batch,
        budget=compute_budget,
        max_expensive=max_expensive,
    )
    pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="camlens-io")
    pending = 0

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        close()

    def close() -> None:
        engine.close()
        pool.shutdown(wait=True)

    app = FastAPI(
        title="camlens", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.engine = engine
    app.state.close = close
    app.state.stop = engine.stop  # on SIGTERM, before the server waits for the requests in flight

    async def in_pool(fn: Callable, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(pool, lambda: fn(*args, **kwargs))

    @app.middleware("http")
    async def guard(request: Request, call_next):
        """Refuse other hosts (400) and cross-site state changes (403), answer CORS for ``cors_origin`` only,
        and add the security headers to every response."""
        host = request.headers.get("host")
        if allowed_hosts is not None and not host_allowed(host, allowed_hosts):
            response: Response = _error(
                400,
                f"this server does not serve the host {host!r}; start it with "
                "--allowed-hosts to add a name it is reached by",
            )
        elif reason := cross_site_reason(
            request.method, request.headers, f"{request.url.scheme}://{host}", cors_origin
        ):
            response = _error(403, reason)
        elif cors_origin and request.method == "OPTIONS" and request.headers.get("origin") == cors_origin:
            response = Response(
                status_code=204,
                headers={
                    "Access-Control-Allow-Methods": "GET, POST",
                    "Access-Control-Allow-Headers": "Content-Type",
                    "Access-Control-Max-Age": "600",
                },
            )
        else:
            response = await call_next(request)
        if cors_origin and request.headers.get("origin") == cors_origin:
            response.headers["Access-Control-Allow-Origin"] = cors_origin
        if cors_origin:
            response.headers["Vary"] = "Origin"
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, "internal error; the server log has the details", SECURITY_HEADERS)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz")
    async def healthz() -> dict:
        """Liveness, and the model calls running now and stopped so far (between passes) in each lane."""
        return {"status": "ok", "running": dict(engine.running), "stopped": engine.stopped}

    @app.get("/api/info")
    async def info() -> dict:
        return {
            "model": name,
            "arch": loaded.arch,
            "classes": loaded.class_names,
            "methods": [
                {"name": key, "gradients": METHODS[key].needs_gradients, "expensive": METHODS[key].expensive}
                for key in offered
            ],
            "default_method": "cam" if "cam" in offered else offered[0],
            "layers": layer_names(loaded.model),
            "input_size": list(loaded.preprocess.size)[::-1] if loaded.preprocess.size else None,
            "task": task_of(loaded),
            "targets": TARGET_HINT[task_of(loaded)],
            "limits": {
                "max_upload_bytes": max_upload_bytes,
                "max_pixels": max_pixels,
                "max_topk": max_topk,
                "compute_budget_s": compute_budget,
            },
            "version": __version__,
        }

    @app.post("/api/explain")
    async def explain(request: Request) -> Response:
        """The body is read first (bounded in size and time); only a whole request takes a slot."""
        nonlocal pending
        try:
            form = await _read(request)
        except BadRequest as err:  # the body may be partly unread: the connection is not reused
            return _error(err.status, str(err), {"Connection": "close"} if err.status in (408, 413) else None)
        if pending >= limits.max_pending:
            return _error(503, f"busy: {pending} requests in progress; retry shortly", {"Retry-After": "1"})
        pending += 1
        try:
            return await _explain(request, form)
        except BadRequest as err:
            return _error(err.status, str(err))
        except FormatError as err:
            return _error(415, f"cannot use the image: {err}")
        except ImageError as err:
            return _error(422, f"cannot use the image: {err}")
        except BudgetFull as err:
            return _error(503, str(err), {"Retry-After": "1"})
        except Refused as err:
            retry = {"Retry-After": str(err.retry_after)} if err.retry_after else None
            return _error(err.status, str(err), retry)
        finally:
            pending -= 1

    async def _read(request: Request) -> Form:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limits.max_upload_bytes + FORM_OVERHEAD:
            raise BadRequest(413, f"the request is over the limit of {limits.max_upload_bytes} bytes")
        body = timed_body(request.stream(), limits.body_timeout, limits.min_body_rate)
        return await read_form(request.headers.get("content-type", ""), body, limits.max_upload_bytes)

    async def _explain(request: Request, form: Form) -> Response:
        opts = parse_options({**request.query_params, **form.fields}, loaded, limits.max_topk, offered)
        if "file" not in form.files:
            got = f" (got {', '.join(repr(k) for k in form.files)})" if form.files else ""
            raise BadRequest(400, f"no file in the form field 'file'{got}")
        data = form.files.pop("file")
        if not data:
            raise BadRequest(400, "the file is empty (0 bytes)")
        x, shown, size = await in_pool(_decode, data, limits.max_pixels, limits.max_side, loaded, budget)
        del data
        if opts.target is not None:
            try:
                opts.target.check(*size)
            except CamlensError as err:
                raise BadRequest(400, f"target: {err}") from None
        key = JobKey(opts.method, opts.layer, opts.explains, opts.topk, tuple(x.shape[1:]))
        try:
            row = await _answer(request, engine.submit(key, x, size))
        except CamlensError as err:
            where = f" at layer {opts.layer!r}" if opts.layer else ""
            raise BadRequest(400, f"{opts.method}{where}: {err}") from None
        body = await in_pool(
            explain_payload,
            shown,
            size,
            row,
            loaded.class_names,
            alpha=opts.alpha,
            predictions=task_of(loaded) == "classification",
        )
        return JSONResponse({"model": name, "method": opts.method, **body})

    return app


async def _answer(request: Request, job: Job) -> Row:
    """The job's row; if the client disconnects first, the job is cancelled (and this waits for it to stop)."""
    answer = asyncio.wrap_future(job.future)
    left = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({answer, left}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
    if not answer.done():
        job.cancel()
    try:
        return await answer
    finally:  # a raised exception's traceback holds this frame: without this, frame -> job -> future -> exception
        del job, answer


async def _disconnected(request: Request) -> None:
    """Returns when the client has closed the connection (the body is already read, so the next ASGI message
    is ``http.disconnect``)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
