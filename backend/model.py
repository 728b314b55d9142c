"""The backend's model: ``predict(tasks, context)``, ``fit(event, data)`` and ``model_version``.

:class:`ShoeSegModel` keeps the shape of label-studio-ml's ``LabelStudioMLBase`` and stays thin: images
come from :mod:`shoeseg_services.fetch`, the per-tag output from :mod:`shoeseg_services.ls_config`, inference from
:class:`shoeseg.predict.Predictor`, training from the RQ worker (enqueued through ``shoeseg_services.trigger``).

The promoted model is held by :class:`backend.model_cache.ModelCache` (hot reload). Results and task
scores are written by :class:`shoeseg_services.predictions.PredictionWriter`, the same writer the worker uses: the
task score is the active-learning score of ``SHOESEG_AL_STRATEGY`` (lower = label first), each region
carries its own detection score.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from backend.context import boxes_from_context
from backend.metrics import Metrics
from backend.model_cache import LoadedModel, ModelCache
from shoeseg_services.fetch import (
    FetchedImage,
    ImageFetcher,
    ImageFetchError,
    LabelStudioAccess,
    configured_access,
    setup_access,
)
from shoeseg_services.ls_config import ImageObject, LabelConfig, LabelConfigError, cached_label_config
from shoeseg_services.predictions import ImagePrediction, PredictionWriter, as_ls, combine, task_images
from shoeseg_services.settings import Settings

log = logging.getLogger(__name__)

#: ``model_version`` answered while the registry holds no promoted model.
NO_MODEL_VERSION = "shoeseg-untrained"


class QueueUnavailable(RuntimeError):
    """Training events cannot be queued (no ``REDIS_URL``, or Redis does not answer)."""


class RequestTooLarge(ValueError):
    """A ``/predict`` request over the task or pixel budget (answered 413)."""


class ClientGone(RuntimeError):
    """The client of a ``/predict`` request disconnected; the remaining work was dropped."""


#: Projects whose ``/setup`` access is remembered (least recently set up forgotten first).
MAX_PROJECTS = 1000


class LRU:
    """A bounded mapping, least recently used out first; thread-safe. ``size=0`` keeps nothing."""

    def __init__(self, size: int):
        self._size = max(0, size)
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def put(self, key, value) -> None:
        if self._size == 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class _ImageJob:
    task_index: int
    task_id: Any
    image: ImageObject
    url: Any
    box_xyxy_pct: tuple[float, float, float, float] | None = None
    box_label: str | None = None
    fetched: FetchedImage | None = None
    key: tuple | None = None
    array: np.ndarray | None = None
    full_wh: tuple[int, int] | None = None
    prediction: ImagePrediction | None = None
    error: str | None = None


#: The stages of a ``/predict`` request that it times (``ShoeSegModel.predict(timings=)``, the ``Server-Timing``
#: header): the images fetched (or read from the cache), decoded, the model's forward, its outputs turned into
#: Label Studio regions and task scores.
STAGES = ("fetch", "decode", "model", "regions")


@dataclass
class _RequestState:
    """What one ``/predict`` request has used and seen: pixels, results by image, failures by reason."""

    pixel_budget: int
    pixels: int = 0
    done: dict[tuple, ImagePrediction] = field(default_factory=dict)
    failures: dict[str, list] = field(default_factory=dict)
    #: wall seconds spent in each stage (:data:`STAGES`), summed over the request's batches
    seconds: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def timed(self, stage: str):
        """Adds the wall time of the ``with`` body to ``seconds[stage]``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0

    def fail(self, reason: str, task_id, message: str) -> None:
        with self._lock:
            self.failures.setdefault(reason, []).append((task_id, message))

    def log_failures(self) -> None:
        """One ERROR line per distinct failure, with how many tasks had it."""
        for reason, items in self.failures.items():
            if len(items) == 1:
                log.error("%s", items[0][1])
            else:
                shown = ", ".join(str(t) for t, _ in items[:5]) + (", ..." if len(items) > 5 else "")
                log.error("%d tasks: %s (tasks %s; first: %s)", len(items), reason, shown, items[0][1])


class ShoeSegModel:
    """Pre-annotates Label Studio tasks with the promoted ShoeSeg model.

    Args:
        settings: the backend's settings.
        metrics: Prometheus metrics (a fresh set by default).
        fetcher: the image fetcher (built from the settings by default).

    Example:
        >>> model = ShoeSegModel(Settings.from_env())  # doctest: +SKIP
        >>> model.setup(schema=config_xml, hostname="http://localhost:8080", access_token="...")  # doctest: +SKIP
        >>> model.predict([{"id": 1, "data": {"image": "/data/upload/1/a.jpg"}}], label_config=config_xml)  # doctest: +SKIP
        [{'result': [...], 'score': 0.93, 'model_version': '20250101-120000-3fa2c1'}]
    """

    def __init__(self, settings: Settings, *, metrics: Metrics | None = None, fetcher: ImageFetcher | None = None,
                 loader=None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.fetcher = fetcher or ImageFetcher(settings)
        self.models = ModelCache(settings, metrics=self.metrics, loader=loader)
        self.results = LRU(settings.result_cache_size)  # ImagePrediction per image, model, config and box
        self._projects = LRU(MAX_PROJECTS)  # project -> (LabelStudioAccess, labeling config)
        self._writers = LRU(64)  # (model version, config digest) -> PredictionWriter
        self._pool: ThreadPoolExecutor | None = None
        # Full-size decodes run here, in every request: few threads bound their memory (and the heap arenas
        # that keep it) whatever the number of concurrent requests.
        self._decode_pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._redis = None
        self._redis_lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=max(1, self.settings.fetch_workers),
                                                thread_name_prefix="shoeseg-fetch")
            return self._pool

    def _decoder(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._decode_pool is None:
                self._decode_pool = ThreadPoolExecutor(max_workers=max(1, self.settings.decode_workers),
                                                       thread_name_prefix="shoeseg-decode")
            return self._decode_pool

    def close(self) -> None:
        """Releases threads and connections (the model stays loaded; they are re-made when used again)."""
        with self._pool_lock:
            pools = (self._pool, self._decode_pool)
            self._pool = self._decode_pool = None
        for pool in pools:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self.fetcher.close()
        with self._redis_lock:
            conn, self._redis = self._redis, None
        if conn is not None:
            conn.close()

    # -- state -----------------------------------------------------------------------------------
    @property
    def model_version(self) -> str:
        """The version being served, or :data:`NO_MODEL_VERSION`."""
        loaded = self.models.current()
        return loaded.version if loaded else NO_MODEL_VERSION

    def device(self) -> str:
        loaded = self.models.current()
        if loaded is not None:
            return str(getattr(loaded.predictor, "device", "unknown"))
        try:
            from shoeseg.device import resolve_device

            return str(resolve_device(self.settings.device))
        except (RuntimeError, ValueError) as e:
            return f"unavailable ({e})"

    def health(self) -> dict[str, Any]:
        loaded = self.models.current(wait=False)  # a first model loads in the background meanwhile
        return {
            "status": "UP",
            "model_version": loaded.version if loaded else NO_MODEL_VERSION,
            "model_loaded": loaded is not None,
            "device": self.device(),
            "reason": self.models.reason,
            "training": self.training(),
        }

    def versions(self) -> dict[str, Any]:
        """The registry's versions, oldest first, and the promoted one."""
        registry = self.models.registry
        versions = registry.versions()
        return {
            "versions": [v.version for v in versions],
            "current": registry.current_version_id(),
            "details": [
                {"version": v.version, "status": v.status, "created_at": v.created_at, "parent": v.parent,
                 "metrics": {k: m for k, m in v.metrics.items() if isinstance(m, int | float | str | None)},
                 "acceptance": registry.acceptance(v.version),
                 "gate": v.recorded("gate"), "annotator": v.recorded("annotator")}
                for v in versions
            ],
        }

    # -- setup -----------------------------------------------------------------------------------
    def default_access(self) -> LabelStudioAccess:
        """The configured server and key (see :func:`shoeseg_services.fetch.configured_access`)."""
        return configured_access(self.settings)

    def access_for(self, hostname: str | None, token: str | None) -> LabelStudioAccess:
        """Where a ``/setup``'s Label Studio is, and which credentials may go to it (:func:`shoeseg_services.fetch.setup_access`)."""
        return setup_access(self.settings, hostname, token)

    def setup(self, *, schema: str | None, hostname: str | None = None, access_token: str | None = None,
              project: str | int | None = None) -> dict[str, Any]:
        """Checks the labeling config and remembers how to reach the project's Label Studio.

        The access is kept per project: one project's ``/setup`` never changes another's, and a request that
        names no project (or one without a ``/setup``) uses only the configured server and key.

        Raises:
            LabelConfigError: no ``<Image>`` / ``<PolygonLabels>``, or the model's classes fit none of its labels.
            SetupRefused: the hostname is not a trusted Label Studio server.
        """
        if schema is None:
            raise LabelConfigError("setup needs the labeling config in 'schema'")
        config = cached_label_config(schema)
        access = self.access_for(hostname, access_token)
        if project is not None:
            self._projects.put(str(project), (access, schema))
        loaded = self.models.current()
        if loaded is not None:
            config.check_classes(loaded.class_names)
        else:
            self._first_model(project)
        return {
            "model_version": loaded.version if loaded else NO_MODEL_VERSION,
            "labels": {c.from_name: list(c.labels) for c in config.controls},
        }

    def _project_state(self, project: str | int | None) -> tuple[LabelStudioAccess, str | None]:
        if project is not None:
            known = self._projects.get(str(project))
            if known is not None:
                return known
        return self.default_access(), None

    # -- predict ---------------------------------------------------------------------------------
    def predict(self, tasks: Sequence[dict], context: dict | None = None, *, label_config: str | None = None,
                project: str | int | None = None, should_stop: Callable[[], bool] | None = None,
                timings: dict[str, float] | None = None) -> list[dict[str, Any]]:
        """One prediction per task, in order: ``{"result": [...], "score": s, "model_version": v}``.

        Work is bounded per request: at most ``max_tasks_per_request`` tasks and ``max_request_pixels``
        pixels of images; images are fetched, decoded (shrunk to the model's input size while decoding) and
        inferred ``batch_size`` at a time, so memory holds one batch; identical images are inferred once; and
        ``should_stop`` (the client went away) is checked between batches.

        A task whose image is refused, unreachable or corrupt gets an empty result (and ``error``); identical
        failures of many tasks are logged once, with their count. With ``context`` holding a rectangle the
        annotator drew, the answer is the shoe inside that box.

        ``timings``, when given, is filled with the wall seconds of each stage (:data:`STAGES`) and ``total``:
        what the app sends as the ``Server-Timing`` header.

        Raises:
            LabelConfigError: the labeling config cannot be served.
            RequestTooLarge: over the task or pixel budget.
            ClientGone: ``should_stop()`` became true; nothing is answered.
        """
        limit = self.settings.max_tasks_per_request
        if len(tasks) > limit:
            raise RequestTooLarge(
                f"{len(tasks)} tasks in one request, over the limit of {limit} (SHOESEG_MAX_TASKS_PER_REQUEST): "
                "select fewer tasks, or let the worker push predictions for the whole project"
            )
        access, project_schema = self._project_state(project)
        schema = label_config or project_schema
        if schema is None:
            raise LabelConfigError("predict needs 'label_config' (or a /setup of the project before)")
        config = cached_label_config(schema)
        loaded = self.models.current()
        if loaded is None:
            self.metrics.tasks.labels(outcome="no_model").inc(len(tasks))
            return [{"result": [], "score": 0.0, "model_version": NO_MODEL_VERSION} for _ in tasks]
        jobs = self._jobs(tasks, config, boxes_from_context(context))
        request = _RequestState(pixel_budget=self.settings.max_request_pixels)
        step = max(1, self.settings.batch_size)
        t0 = time.perf_counter()
        try:
            for start in range(0, len(jobs), step):
                if should_stop is not None and should_stop():
                    raise ClientGone(f"the client went away after {start} of {len(jobs)} images; the rest was dropped")
                self._run_batch(jobs[start:start + step], loaded, config, access, request)
        finally:
            request.log_failures()
            if timings is not None:
                timings.update(request.seconds, total=time.perf_counter() - t0)
        out = []
        for i, _task in enumerate(tasks):
            mine = [j for j in jobs if j.task_index == i]
            errors = [j.error for j in mine if j.error]
            done = [j.prediction for j in mine if not j.error and j.prediction is not None]
            entry = as_ls(combine(done) if done else ImagePrediction(), task_id=None, model_version=loaded.version)
            if errors:
                entry["error"] = "; ".join(errors)
            self.metrics.tasks.labels(outcome="error" if errors else "ok").inc()
            out.append(entry)
        return out

    def _jobs(self, tasks: Sequence[dict], config: LabelConfig, boxes: list[dict]) -> list[_ImageJob]:
        jobs = []
        for i, task in enumerate(tasks):
            for image, url in task_images(config, task):
                job = _ImageJob(task_index=i, task_id=task.get("id") if isinstance(task, dict) else None,
                                image=image, url=url)
                for box in boxes:
                    if box["to_name"] in (None, image.name):
                        job.box_xyxy_pct, job.box_label = box["xywh_pct"], box["label"]
                jobs.append(job)
        return jobs

    def _run_batch(self, batch: list[_ImageJob], loaded: LoadedModel, config: LabelConfig,
                   access: LabelStudioAccess, request: _RequestState) -> None:
        """Fetch, decode, infer and render one batch; a job whose image another job already holds waits for it."""
        pool = self._executor()
        with request.timed("fetch"):
            list(pool.map(lambda j: self._fetch(j, access, loaded.version, config, request), batch))
        firsts: dict[tuple, _ImageJob] = {}
        copies: list[tuple[_ImageJob, _ImageJob]] = []
        for job in batch:
            if job.error is not None or job.fetched is None:
                continue
            if job.key in request.done:
                job.prediction = request.done[job.key]
                job.fetched = None
            elif job.key in firsts:
                copies.append((job, firsts[job.key]))
                job.fetched = None
            else:
                firsts[job.key] = job
        todo = list(firsts.values())
        for job in todo:  # the pixel budget counts every distinct image at its full size, from its header
            try:
                w, h = self.fetcher.image_size(job.fetched, task_id=job.task_id)
            except ImageFetchError as e:
                self._fail(job, e, kind="image", request=request)
                continue
            request.pixels += w * h
            if request.pixels > request.pixel_budget:
                raise RequestTooLarge(
                    f"the images of this request hold more than {request.pixel_budget} pixels in all (over the "
                    f"budget at task {job.task_id}, {w}x{h} px; SHOESEG_MAX_REQUEST_PIXELS): send fewer tasks"
                )
        fit = getattr(loaded.predictor, "input_fit", None)
        todo = [j for j in todo if j.error is None]
        with request.timed("decode"):
            list(self._decoder().map(lambda j: self._decode(j, fit, request), todo))
        self._infer(loaded, config, [j for j in todo if j.error is None and j.array is not None], request)
        for job in todo:
            if job.error is None:
                request.done[job.key] = job.prediction
        for job, first in copies:
            job.prediction, job.error = first.prediction, first.error

    def _fetch(self, job: _ImageJob, access: LabelStudioAccess, version: str, config: LabelConfig,
               request: _RequestState) -> None:
        try:
            try:
                job.fetched = self.fetcher.fetch(job.url, task_id=job.task_id, access=access)
            except ImageFetchError as e:
                # A second credential of the same server only (see access_for): never another host's.
                if not (e.unauthorized and access.fallback_token):
                    raise
                retry = replace(access, token=access.fallback_token, fallback_token=None)
                job.fetched = self.fetcher.fetch(job.url, task_id=job.task_id, access=retry)
            seeded = job.task_id if self.settings.al_strategy == "random" else None  # its score is the task's
            job.key = (job.fetched.digest, version, config.digest, job.image.name, job.box_xyxy_pct, job.box_label,
                       seeded)
            hit = self.results.get(job.key)
            if hit is not None:
                self.metrics.cache.labels(outcome="hit").inc()
                job.prediction = hit
                job.fetched = None
                return
            self.metrics.cache.labels(outcome="miss").inc()
        except ImageFetchError as e:
            self._fail(job, e, kind="image", request=request)
        except Exception as e:  # noqa: BLE001 - one task's failure must not fail the batch
            log.exception("task %s: unexpected error while reading image %r", job.task_id, job.url)
            self._fail(job, f"task {job.task_id}: image {job.url!r} could not be read ({type(e).__name__})",
                       kind="internal", request=request)

    def _decode(self, job: _ImageJob, fit: tuple[int, int] | None, request: _RequestState) -> None:
        try:
            job.array, job.full_wh = self.fetcher.decode(job.fetched, task_id=job.task_id, fit_within=fit)
        except ImageFetchError as e:
            self._fail(job, e, kind="image", request=request)
        except Exception as e:  # noqa: BLE001
            log.exception("task %s: unexpected error while decoding image %r", job.task_id, job.url)
            self._fail(job, f"task {job.task_id}: image {job.url!r} could not be decoded ({type(e).__name__})",
                       kind="internal", request=request)
        finally:
            job.fetched = None

    def _fail(self, job: _ImageJob, error: ImageFetchError | str, *, kind: str, request: _RequestState) -> None:
        job.error = str(error)
        job.array = None
        self.metrics.errors.labels(kind=kind).inc()
        reason = error.reason if isinstance(error, ImageFetchError) else job.error.split(": ", 1)[-1]
        request.fail(reason, job.task_id, job.error)

    def _writer(self, loaded: LoadedModel, config: LabelConfig) -> PredictionWriter:
        key = (loaded.version, config.digest)
        writer = self._writers.get(key)
        if writer is None:
            writer = PredictionWriter(config, loaded.class_names, strategy=self.settings.al_strategy,
                                      score_thresh=loaded.predictor.score_thresh)
            self._writers.put(key, writer)
        return writer

    def _infer(self, loaded: LoadedModel, config: LabelConfig, jobs: list[_ImageJob], request: _RequestState) -> None:
        predictor = loaded.predictor
        writer = self._writer(loaded, config)
        plain = [j for j in jobs if j.box_xyxy_pct is None]
        boxed = [j for j in jobs if j.box_xyxy_pct is not None]
        if plain:
            t0 = time.perf_counter()
            arrays = [j.array for j in plain]
            try:
                with request.timed("model"):
                    outputs = writer.forward(predictor, arrays)
                with request.timed("regions"):
                    seen = writer.candidates_from(predictor, outputs, arrays)
            except Exception:  # noqa: BLE001 - isolate the image that breaks the batch
                log.warning("a batch of %d images failed; predicting them one at a time", len(plain), exc_info=True)
                with request.timed("model"):
                    seen = [self._predict_one(predictor, writer, j, request) for j in plain]
            self.metrics.inference.observe(time.perf_counter() - t0)
            with request.timed("regions"):
                for job, views in zip(plain, seen, strict=True):
                    if views is not None:
                        self._finish(job, writer, *views)
        for job in boxed:
            h, w = job.array.shape[:2]
            x, y, bw, bh = job.box_xyxy_pct
            box = (x / 100 * w, y / 100 * h, (x + bw) / 100 * w, (y + bh) / 100 * h)
            t0 = time.perf_counter()
            try:
                with request.timed("model"):
                    det = predictor.predict_in_box(job.array, box)
            except ValueError as e:
                self._fail(job, f"task {job.task_id}: the drawn rectangle cannot be used ({e})", kind="context",
                           request=request)
                continue
            except Exception:  # noqa: BLE001
                log.exception("task %s: the model failed on the drawn box %s", job.task_id, box)
                self._fail(job, f"task {job.task_id}: the model failed on the drawn rectangle", kind="internal",
                           request=request)
                continue
            self.metrics.inference.observe(time.perf_counter() - t0)
            dets = [det] if det is not None else []
            with request.timed("regions"):
                self._finish(job, writer, dets, dets if writer.needs_flip else None, forced_label=job.box_label)

    def _predict_one(self, predictor, writer: PredictionWriter, job: _ImageJob, request: _RequestState):
        try:
            return writer.candidates(predictor, [job.array])[0]
        except Exception as e:  # noqa: BLE001
            log.exception("task %s: the model failed on image %r", job.task_id, job.url)
            self._fail(job, f"task {job.task_id}: the model failed on image {job.url!r} ({type(e).__name__})",
                       kind="internal", request=request)
            return None

    def _finish(self, job: _ImageJob, writer: PredictionWriter, detections, flipped, *,
                forced_label: str | None = None) -> None:
        job.prediction = writer.write_view(detections, flipped, image_name=job.image.name,
                                           seen_hw=job.array.shape[:2], full_wh=job.full_wh, task_id=job.task_id,
                                           forced_label=forced_label)
        for region in job.prediction.result:
            self.metrics.regions.labels(type=region["type"]).inc()
        job.array = None
        self.results.put(job.key, job.prediction)

    def _first_model(self, project: str | int | None) -> None:
        """A project connected while no model exists asks for its first training (``shoeseg_services.trigger``)."""
        pid = str(project or "").split(".", 1)[0]
        if not self.settings.redis_url or not pid.isdigit():
            return
        from shoeseg_services.trigger import request_first_model

        try:
            summary = request_first_model(self._redis_conn(), int(pid), settings=self.settings)
        except Exception as e:  # noqa: BLE001 - /setup must answer; the next /setup asks again
            log.warning("project %s: the first training could not be requested (%s)", pid, e)
            return
        if summary["action"] not in ("recently_checked", "has_model"):
            log.info("project %s has no model yet: %s", pid, summary)

    def training(self) -> dict[str, Any] | None:
        """Every project's training (``shoeseg_services.trigger.overview``), ``None`` without Redis."""
        if not self.settings.redis_url:
            return None
        from shoeseg_services.trigger import overview

        try:
            return overview(self._redis_conn())
        except Exception as e:  # noqa: BLE001 - /health must answer
            return {"error": f"Redis at {self.settings.redis_url} does not answer ({type(e).__name__})"}

    # -- fit -------------------------------------------------------------------------------------
    def _redis_conn(self):
        if not self.settings.redis_url:
            raise QueueUnavailable("REDIS_URL is not set: training events cannot be queued")
        with self._redis_lock:
            if self._redis is None:
                import redis

                self._redis = redis.Redis.from_url(self.settings.redis_url, socket_connect_timeout=3, socket_timeout=10)
            return self._redis

    def fit(self, event: str, data: dict) -> dict[str, Any]:
        """Hands a training event to the queue (``shoeseg_services.trigger``); never trains in the request.

        Returns:
            The trigger's summary (``{"action": "queued" | "follow_up" | "counted" | ...}``), or
            ``{"action": "ignored"}`` for events that do not concern training.

        Raises:
            QueueUnavailable: no Redis configured or reachable.
            ValueError: a training event without a project id, or with one that is not a positive integer.
        """
        from shoeseg_services.predict_queue import FORGET_ACTIONS
        from shoeseg_services.trigger import COUNTED_ACTIONS, START_ACTION, on_webhook, project_of

        if event in FORGET_ACTIONS:
            return {"action": "acceptance", "event": event, "acceptance_jobs": self._acceptance(data)}
        if event not in COUNTED_ACTIONS and event != START_ACTION:
            return {"action": "ignored", "event": event}
        if project_of(data) is None:  # validated before the queue is touched
            raise ValueError(f"webhook {event} names no project (expected project.id)")
        import redis

        conn = self._redis_conn()
        try:
            summary = on_webhook(conn, data, min_new_annotations=self.settings.min_new_annotations)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise QueueUnavailable(f"Redis at {self.settings.redis_url} does not answer ({e})") from e
        summary["acceptance_jobs"] = self._acceptance(data)
        log.info("webhook %s: %s", event, summary)
        return summary

    def _acceptance(self, data: dict) -> list[str]:
        """Queues the live acceptance of the webhook's annotation (``shoeseg_services.predict_queue.request_acceptance``); a
        failure is logged, never fatal to the webhook (the training part of it has been answered)."""
        from shoeseg_services.predict_queue import request_acceptance

        try:
            return request_acceptance(self._redis_conn(), data, settings=self.settings)
        except Exception as e:  # noqa: BLE001 - the annotation stays unmeasured; training is unaffected
            log.warning("webhook %s: live acceptance not queued (%s)", data.get("action"), e)
            return []
