"""The ML backend web app: ``create_app(settings)`` builds a FastAPI app speaking Label Studio 1.23's protocol.

Routes: ``GET /health``, ``POST /setup``, ``POST /predict``, ``POST /webhook``, ``GET /versions``,
``GET /metrics`` (Prometheus text), ``GET /`` (the status page, :mod:`backend.status`). Every error, the
framework's own included (unknown routes, bodies that do not parse), answers ``{"error": "..."}`` without a
traceback; request bodies over ``max_request_bytes`` and ``/predict`` requests over the task or pixel budget
answer 413; a ``/setup`` naming an untrusted Label Studio answers 403; with ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS`` set, every route but ``/health``
(``/metrics`` included) needs HTTP basic auth (Label Studio sends it when the ML backend is added with it).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import secrets
import threading
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.metrics import Metrics
from backend.model import ClientGone, QueueUnavailable, RequestTooLarge, ShoeSegModel
from backend.protocol import (
    ErrorResponse,
    HealthResponse,
    PredictRequest,
    PredictResponse,
    SetupRequest,
    SetupResponse,
    VersionsResponse,
    WebhookEvent,
    WebhookResponse,
)
from shoeseg_services.fetch import SetupRefused
from shoeseg_services.ls_config import LabelConfigError
from shoeseg_services.settings import Settings

log = logging.getLogger(__name__)

_ERRORS = {
    400: {"model": ErrorResponse, "description": "The request cannot be served (the message says why)."},
    401: {"model": ErrorResponse, "description": "Basic auth is required."},
    403: {"model": ErrorResponse, "description": "The Label Studio server named is not trusted."},
    413: {"model": ErrorResponse, "description": "The request body is too large."},
    422: {"model": ErrorResponse, "description": "The request body does not have the expected shape."},
}


def server_timing(seconds: dict[str, float]) -> str:
    """A ``Server-Timing`` header value (W3C) from stage seconds: ``fetch;dur=1.2, model;dur=171.0, ...`` in ms.

    Example:
        >>> server_timing({"model": 0.1712, "total": 0.175})
        'model;dur=171.2, total;dur=175.0'
    """
    return ", ".join(f"{name};dur={value * 1000:.1f}" for name, value in seconds.items())


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _Guard:
    """Pure ASGI middleware: basic auth, request size limit, metrics and a last-resort error answer."""

    def __init__(self, app, *, settings: Settings, metrics: Metrics):
        self.app = app
        self.settings = settings
        self.metrics = metrics
        if settings.auth_enabled:
            raw = f"{settings.basic_auth_user}:{settings.basic_auth_pass}".encode()
            self._expected = b"Basic " + base64.b64encode(raw)
        else:
            self._expected = None

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        got = headers.get(b"authorization", b"")
        if not got.lower().startswith(b"basic "):
            return False
        try:
            base64.b64decode(got[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return secrets.compare_digest(b"Basic " + got[6:].strip(), self._expected)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope["method"]
        status_box = {"status": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status_box["status"] = message["status"]
            await send(message)

        try:
            response = await self._precheck(scope, receive)
            if isinstance(response, Response):
                await response(scope, receive, send_wrapper)
            else:
                await self.app(scope, response, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(method=method, route=path, status=str(status_box["status"])).inc()
            self.metrics.latency.labels(method=method, route=path).observe(time.perf_counter() - started)

    async def _precheck(self, scope, receive):
        headers = dict(scope.get("headers") or [])
        if self._expected is not None and scope["path"] != "/health" and not self._authorized(headers):
            return _error(401, "basic auth required", {"WWW-Authenticate": 'Basic realm="shoeseg"'})
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return receive
        limit = self.settings.max_request_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            self.metrics.errors.labels(kind="too_large").inc()
            return _error(413, f"request body of {int(declared)} bytes is over the {limit} byte limit")
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return _error(400, "client disconnected")
            body = message.get("body", b"")
            total += len(body)
            if total > limit:
                self.metrics.errors.labels(kind="too_large").inc()
                return _error(413, f"request body is over the {limit} byte limit")
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay_receive():
            if replay:
                return replay.pop()
            return await receive()

        return replay_receive


def create_app(settings: Settings | None = None, *, model: ShoeSegModel | None = None) -> FastAPI:
    """Builds the ML backend app; the model loads once, at startup (or on the first request).

    Args:
        settings: the backend's settings (default: from the environment).
        model: an already built :class:`ShoeSegModel` (tests, benchmarks); built from ``settings`` otherwise.

    Example:
        >>> app = create_app(Settings(model_dir=Path("models")))  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=9090)  # doctest: +SKIP
    """
    settings = settings or Settings.from_env()
    shoeseg = model or ShoeSegModel(settings)
    metrics = shoeseg.metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(shoeseg.models.refresh)
        log.info("ML backend ready: model %s (%s)", shoeseg.model_version, shoeseg.models.reason or "loaded")
        try:
            yield
        finally:
            shoeseg.close()

    app = FastAPI(
        title="ShoeSeg ML backend",
        version="1",
        description="Label Studio ML backend: shoe instance segmentation pre-annotations (Mask R-CNN R50-FPN).",
        lifespan=lifespan,
    )
    app.state.model = shoeseg
    app.state.settings = settings
    app.add_middleware(_Guard, settings=settings, metrics=metrics)

    # Our own refusals: (exception, status, metrics kind, log level); the message is the exception's.
    refusals = (
        (LabelConfigError, 400, "config", logging.WARNING),
        (SetupRefused, 403, "setup_refused", logging.WARNING),
        (RequestTooLarge, 413, "too_large", logging.WARNING),
        (QueueUnavailable, 503, "queue", logging.ERROR),
    )
    for exc_type, status, kind, level in refusals:
        def handler(request: Request, exc: Exception, status=status, kind=kind, level=level):
            metrics.errors.labels(kind=kind).inc()
            log.log(level, "%s %s: %s", request.method, request.url.path, exc)
            return _error(status, str(exc))

        app.add_exception_handler(exc_type, handler)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        # The framework's own answers (unknown route, wrong method, a body it cannot parse) in our shape.
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404:
            detail = f"no route {request.url.path}"
        return _error(exc.status_code, detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        metrics.errors.labels(kind="validation").inc()
        problems = []
        for err in exc.errors()[:10]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg')}")
        return _error(422, "invalid request: " + "; ".join(problems))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        ref = uuid.uuid4().hex[:12]
        metrics.errors.labels(kind="internal").inc()
        log.error("%s %s failed (ref %s)", request.method, request.url.path, ref, exc_info=exc)
        return _error(500, f"internal error (ref {ref}); see the backend log")

    @app.get("/health", response_model=HealthResponse, tags=["Label Studio"])
    def health() -> dict[str, Any]:
        """Liveness and the model being served (``reason`` says why there is none)."""
        return shoeseg.health()

    @app.post("/setup", response_model=SetupResponse, responses={**_ERRORS}, tags=["Label Studio"])
    def setup(body: SetupRequest) -> dict[str, Any]:
        """Checks the labeling config (an Image and a PolygonLabels control) and answers the model version."""
        return shoeseg.setup(schema=body.label_schema, hostname=body.hostname, access_token=body.access_token,
                             project=body.project)

    @app.post("/predict", response_model=PredictResponse, response_model_exclude_none=True,
              responses={**_ERRORS}, tags=["Label Studio"])
    async def predict(body: PredictRequest, request: Request, response: Response) -> Any:
        """Pre-annotates the tasks: one result per task, in order (empty with ``error`` for a bad image).

        The work stops between batches when the client disconnects. The ``Server-Timing`` header gives the
        milliseconds of each stage (``fetch``, ``decode``, ``model``, ``regions``) and the ``total`` in the service.
        """
        context = body.params.context if body.params else None
        tasks = [t.model_dump() for t in body.tasks]
        gone = threading.Event()

        async def watch() -> None:
            while not gone.is_set():
                if await request.is_disconnected():
                    gone.set()
                    return
                await asyncio.sleep(0.1)

        watcher = asyncio.create_task(watch())
        timings: dict[str, float] = {}
        try:
            results = await run_in_threadpool(
                shoeseg.predict, tasks, context, label_config=body.label_config, project=body.project,
                should_stop=gone.is_set, timings=timings,
            )
        except ClientGone as e:
            metrics.errors.labels(kind="client_gone").inc()
            log.warning("/predict of %d tasks: %s", len(tasks), e)
            return _error(499, str(e))
        finally:
            gone.set()
            watcher.cancel()
        version = results[0]["model_version"] if results else shoeseg.model_version
        response.headers["Server-Timing"] = server_timing(timings)
        return {"results": results, "model_version": version}

    @app.post("/webhook", response_model=WebhookResponse,
              responses={**_ERRORS, 503: {"model": ErrorResponse, "description": "The queue is unavailable."}},
              tags=["Label Studio"])
    def webhook(body: WebhookEvent) -> dict[str, Any]:
        """Training events go to the queue (a worker trains); other events are answered and ignored."""
        payload = body.model_dump()
        try:
            summary = shoeseg.fit(body.action, payload)
        except ValueError as e:
            metrics.errors.labels(kind="webhook").inc()
            return _error(422, f"webhook {body.action}: {e}")
        summary.setdefault("event", body.action)
        return summary

    @app.get("/versions", response_model=VersionsResponse, responses={401: _ERRORS[401]}, tags=["Label Studio"])
    def versions() -> dict[str, Any]:
        """The model registry's versions (oldest first) and the promoted one."""
        return shoeseg.versions()

    @app.get("/", tags=["operations"], response_class=HTMLResponse,
             responses={200: {"content": {"text/html": {}}, "description": "the status page"}, 401: _ERRORS[401]})
    def status() -> HTMLResponse:
        """The status page: projects, training, versions with AP and live acceptance, the learning curve."""
        from backend.status import status_page

        return HTMLResponse(status_page(shoeseg))

    @app.get("/metrics", tags=["operations"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
                        401: _ERRORS[401]})
    def prometheus() -> Response:
        """Requests, latencies, errors, cache use and the model version, in Prometheus text format."""
        metrics.set_model_version(shoeseg.model_version)
        return Response(metrics.render(), media_type=metrics.content_type)

    return app
