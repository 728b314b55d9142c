"""The backend's model: ``predict(tasks, context)``, ``fit(event, data)`` and ``model_version``.

:class:`ShoeSegModel` keeps the shape of label-studio-ml's ``LabelStudioMLBase`` and stays thin: images
come from :mod:`backend.images`, the per-tag output from :mod:`backend.control_models`, inference from
:class:`shoeseg.predict.Predictor`, training from the RQ worker (enqueued through ``worker.trigger``).

The promoted model is loaded once per process and held by :class:`ModelCache`, which checks the registry's
``current`` pointer (one small file read) at most every ``reload_interval_s`` and loads a newly promoted
version in the request that notices it, while other requests keep using the old one.

Task score: the mean score of the task's detected shoes (the regions returned), ``0.0`` when none is found.
With active learning reading tasks in ascending score order, images where the model finds nothing or only
doubtful shoes come first.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backend.control_models import (
    ControlModel,
    ImageObject,
    LabelConfig,
    LabelConfigCache,
    LabelConfigError,
    RegionSource,
)
from backend.images import FetchedImage, ImageFetcher, ImageFetchError, LabelStudioAccess
from backend.metrics import Metrics
from backend.settings import Settings

log = logging.getLogger(__name__)

#: ``model_version`` answered while the registry holds no promoted model.
NO_MODEL_VERSION = "shoeseg-untrained"


class QueueUnavailable(RuntimeError):
    """Training events cannot be queued (no ``REDIS_URL``, or Redis does not answer)."""


@dataclass
class LoadedModel:
    version: str
    predictor: Any
    class_names: list[str]
    loaded_at: float = field(default_factory=time.time)


class ModelCache:
    """The promoted registry version, loaded once and swapped when another version is promoted.

    Args:
        settings: registry root, device, score threshold, polling interval.
        metrics: where model loads are counted.
        loader: ``(checkpoint_path, version) -> predictor`` (default :meth:`Predictor.from_checkpoint`).

    Example:
        >>> cache = ModelCache(Settings(model_dir=Path("models")), metrics=Metrics())  # doctest: +SKIP
        >>> cache.current().version  # doctest: +SKIP
        '20250101-120000-3fa2c1'
    """

    def __init__(self, settings: Settings, *, metrics: Metrics, loader=None):
        from shoeseg.registry import ModelRegistry

        self.settings = settings
        self.registry = ModelRegistry(settings.model_dir)
        self.metrics = metrics
        self._loader = loader or self._load_predictor
        self._loaded: LoadedModel | None = None
        self._reason = f"no model checked yet in {settings.model_dir}"
        self._last_check = -math.inf
        self._lock = threading.Lock()
        self._failed: dict[str, str] = {}
        self._loading: str | None = None

    def _load_predictor(self, checkpoint, version: str):
        from shoeseg.predict import Predictor

        return Predictor.from_checkpoint(
            checkpoint, device=self.settings.device, score_thresh=self.settings.score_thresh,
            batch_size=self.settings.batch_size,
        )

    @property
    def reason(self) -> str | None:
        """Why no model is served (``None`` when one is)."""
        return None if self._loaded is not None else self._reason

    def current(self) -> LoadedModel | None:
        """The model to serve now; checks the registry pointer when ``reload_interval_s`` has passed."""
        if time.monotonic() - self._last_check >= self.settings.reload_interval_s:
            self.refresh(block=self._loaded is None)
        return self._loaded

    def refresh(self, *, block: bool = True) -> None:
        """Checks the registry pointer; loads a newly promoted version.

        With no model held, the load happens here (callers wait for it); otherwise in a background thread
        while the old version keeps serving, and it is swapped in when ready.
        """
        if not self._lock.acquire(blocking=block):
            return
        try:
            self._last_check = time.monotonic()
            try:
                wanted = self.registry.current_version_id()
            except OSError as e:
                self._reason = f"cannot read the model registry at {self.settings.model_dir}: {e}"
                log.error(self._reason)
                return
            if wanted is None:
                if self._loaded is not None:
                    log.warning("the registry at %s has no promoted version any more; serving none",
                                self.settings.model_dir)
                self._loaded = None
                self._reason = (
                    f"no trained model yet: the registry at {self.settings.model_dir} has no promoted version "
                    "(train one with `shoeseg train` and promote it, or let the worker train on accepted labels)"
                )
                return
            if self._loaded is not None and self._loaded.version == wanted:
                return
            if wanted in self._failed or wanted == self._loading:
                return
            if self._loaded is None:
                self._load(wanted)
            else:
                self._loading = wanted
                threading.Thread(target=self._load_in_background, args=(wanted,), daemon=True,
                                 name=f"shoeseg-load-{wanted}").start()
        finally:
            self._lock.release()

    def _load_in_background(self, version: str) -> None:
        try:
            self._load(version)
        finally:
            self._loading = None

    def _load(self, version: str) -> None:
        from shoeseg.registry import RegistryError

        started = time.perf_counter()
        try:
            mv = self.registry.get(version)
            predictor = self._loader(mv.checkpoint, mv.version)
            # One small forward pass so that the first request does not pay for lazy initialisation.
            predictor.predict([np.zeros((64, 64, 3), np.uint8)])
        except (RegistryError, OSError, ValueError, RuntimeError, KeyError) as e:
            self._failed[version] = str(e)
            self.metrics.model_loads.labels(outcome="failed").inc()
            kept = f"; still serving {self._loaded.version}" if self._loaded else ""
            self._reason = f"model version {version} could not be loaded: {e}"
            log.error("model version %s could not be loaded: %s%s", version, e, kept)
            return
        previous = self._loaded.version if self._loaded else None
        self._loaded = LoadedModel(version=mv.version, predictor=predictor, class_names=list(predictor.class_names))
        self.metrics.model_loads.labels(outcome="loaded").inc()
        self.metrics.set_model_version(mv.version)
        log.info("serving model version %s (was %s), loaded in %.2f s on %s", mv.version, previous,
                 time.perf_counter() - started, getattr(predictor, "device", "?"))


class ResultCache:
    """Predictions per (image bytes digest, model version, labeling config, interactive box), LRU."""

    def __init__(self, size: int):
        self._size = max(0, size)
        self._items: OrderedDict[tuple, tuple[list[dict], list[float]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple):
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def put(self, key: tuple, value: tuple[list[dict], list[float]]) -> None:
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
    regions: list[dict] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    error: str | None = None


def boxes_from_context(context: dict | None) -> list[dict]:
    """Rectangles an annotator drew, from a ``/predict`` ``context`` (interactive pre-annotation).

    Returns:
        ``[{"to_name", "xywh_pct", "label"}]`` for every ``rectangle``/``rectanglelabels`` item in
        ``context["result"]`` with numeric ``x``, ``y``, ``width``, ``height`` (percent of the image).
    """
    if not isinstance(context, dict):
        return []
    items = context.get("result")
    if not isinstance(items, list):
        return []
    boxes = []
    for item in items:
        if not isinstance(item, dict) or item.get("type") not in ("rectangle", "rectanglelabels"):
            continue
        value = item.get("value")
        if not isinstance(value, dict):
            continue
        try:
            xywh = tuple(float(value[k]) for k in ("x", "y", "width", "height"))
        except (KeyError, TypeError, ValueError):
            continue
        if not all(math.isfinite(v) for v in xywh) or xywh[2] <= 0 or xywh[3] <= 0:
            continue
        labels = value.get("rectanglelabels")
        label = labels[0] if isinstance(labels, list) and labels and isinstance(labels[0], str) else None
        boxes.append({"to_name": item.get("to_name"), "xywh_pct": xywh, "label": label})
    return boxes


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
        self.configs = LabelConfigCache()
        self.results = ResultCache(settings.result_cache_size)
        self._access: dict[str, LabelStudioAccess] = {}
        self._last_access: LabelStudioAccess | None = None
        self._last_schema: str | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._redis = None
        self._redis_lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=max(1, self.settings.fetch_workers),
                                                thread_name_prefix="shoeseg-fetch")
            return self._pool

    def close(self) -> None:
        """Releases threads and connections (the model stays loaded; they are re-made when used again)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
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
        loaded = self.models.current()
        return {
            "status": "UP",
            "model_version": loaded.version if loaded else NO_MODEL_VERSION,
            "model_loaded": loaded is not None,
            "device": self.device(),
            "reason": self.models.reason,
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
                 "metrics": {k: m for k, m in v.metrics.items() if isinstance(m, int | float | str | None)}}
                for v in versions
            ],
        }

    # -- setup -----------------------------------------------------------------------------------
    def _access_for(self, hostname: str | None, token: str | None) -> LabelStudioAccess:
        base = self.settings.label_studio_url or hostname
        aliases = tuple(h for h in (hostname,) if h and h != base)
        return LabelStudioAccess(hostname=base, token=token or self.settings.label_studio_api_key, aliases=aliases)

    def setup(self, *, schema: str | None, hostname: str | None = None, access_token: str | None = None,
              project: str | int | None = None) -> dict[str, Any]:
        """Checks the labeling config and remembers how to reach Label Studio's images for the project.

        Raises:
            LabelConfigError: no ``<Image>`` / ``<PolygonLabels>``, or the model's classes fit none of its labels.
        """
        if schema is None:
            raise LabelConfigError("setup needs the labeling config in 'schema'")
        config = self.configs.get(schema)
        access = self._access_for(hostname, access_token)
        if project is not None:
            self._access[str(project)] = access
        self._last_access = access
        self._last_schema = schema
        loaded = self.models.current()
        if loaded is not None:
            config.check_classes(loaded.class_names)
        return {
            "model_version": loaded.version if loaded else NO_MODEL_VERSION,
            "labels": {c.from_name: list(c.labels) for c in config.controls},
        }

    # -- predict ---------------------------------------------------------------------------------
    def predict(self, tasks: Sequence[dict], context: dict | None = None, *, label_config: str | None = None,
                project: str | int | None = None) -> list[dict[str, Any]]:
        """One prediction per task, in order: ``{"result": [...], "score": s, "model_version": v}``.

        A task whose image is refused, unreachable or corrupt gets an empty result (and ``error``); the
        error is logged with the task id and the URL. With ``context`` holding a rectangle the annotator
        drew, the answer is the shoe inside that box.

        Raises:
            LabelConfigError: the labeling config cannot be served.
        """
        schema = label_config or self._last_schema
        if schema is None:
            raise LabelConfigError("predict needs 'label_config' (or a /setup call before)")
        config = self.configs.get(schema)
        loaded = self.models.current()
        if loaded is None:
            self.metrics.tasks.labels(outcome="no_model").inc(len(tasks))
            return [{"result": [], "score": 0.0, "model_version": NO_MODEL_VERSION} for _ in tasks]
        access = self._access.get(str(project)) if project is not None else None
        access = access or self._last_access or self._access_for(None, None)
        jobs = self._jobs(tasks, config, boxes_from_context(context))
        list(self._executor().map(lambda j: self._fetch(j, access, loaded.version, config), jobs))
        self._infer(loaded, config, [j for j in jobs if j.error is None and j.array is not None])
        out = []
        for i, _task in enumerate(tasks):
            mine = [j for j in jobs if j.task_index == i]
            errors = [j.error for j in mine if j.error]
            regions = [r for j in mine if not j.error for r in j.regions]
            scores = [s for j in mine if not j.error for s in j.scores]
            score = float(np.mean(scores)) if scores else 0.0
            entry: dict[str, Any] = {"result": regions, "score": round(score, 4), "model_version": loaded.version}
            if errors:
                entry["error"] = "; ".join(errors)
            self.metrics.tasks.labels(outcome="error" if errors else "ok").inc()
            out.append(entry)
        return out

    def _jobs(self, tasks: Sequence[dict], config: LabelConfig, boxes: list[dict]) -> list[_ImageJob]:
        used = {c.to_name for c in config.controls}
        jobs = []
        for i, task in enumerate(tasks):
            data = task.get("data") if isinstance(task, dict) else None
            data = data if isinstance(data, dict) else {}
            for name in sorted(used):
                image = config.images[name]
                job = _ImageJob(task_index=i, task_id=task.get("id") if isinstance(task, dict) else None,
                                image=image, url=data.get(image.value_key))
                for box in boxes:
                    if box["to_name"] in (None, name):
                        job.box_xyxy_pct, job.box_label = box["xywh_pct"], box["label"]
                jobs.append(job)
        return jobs

    def _fetch(self, job: _ImageJob, access: LabelStudioAccess, version: str, config: LabelConfig) -> None:
        try:
            try:
                job.fetched = self.fetcher.fetch(job.url, task_id=job.task_id, access=access)
            except ImageFetchError as e:
                fallback = self._access_for(access.hostname, self.settings.label_studio_api_key)
                if not (e.unauthorized and self.settings.label_studio_api_key and fallback.token != access.token):
                    raise
                job.fetched = self.fetcher.fetch(job.url, task_id=job.task_id, access=fallback)
            job.key = (job.fetched.digest, version, config.digest, job.image.name, job.box_xyxy_pct, job.box_label)
            hit = self.results.get(job.key)
            if hit is not None:
                self.metrics.cache.labels(outcome="hit").inc()
                job.regions, job.scores = hit
                return
            self.metrics.cache.labels(outcome="miss").inc()
            job.array = self.fetcher.decode(job.fetched, task_id=job.task_id)
            job.fetched = None
        except ImageFetchError as e:
            self._fail(job, str(e), kind="image")
        except Exception as e:  # noqa: BLE001 - one task's failure must not fail the batch
            log.exception("task %s: unexpected error while reading image %r", job.task_id, job.url)
            self._fail(job, f"task {job.task_id}: image {job.url!r} could not be read ({type(e).__name__})",
                       kind="internal")

    def _fail(self, job: _ImageJob, message: str, *, kind: str) -> None:
        job.error = message
        job.array = None
        self.metrics.errors.labels(kind=kind).inc()
        log.error("%s", message)

    def _infer(self, loaded: LoadedModel, config: LabelConfig, jobs: list[_ImageJob]) -> None:
        predictor = loaded.predictor
        plain = [j for j in jobs if j.box_xyxy_pct is None]
        boxed = [j for j in jobs if j.box_xyxy_pct is not None]
        step = max(1, self.settings.batch_size)
        for start in range(0, len(plain), step):
            batch = plain[start:start + step]
            t0 = time.perf_counter()
            try:
                detections = predictor.predict([j.array for j in batch], score_thresh=self.settings.score_thresh)
            except Exception:  # noqa: BLE001 - isolate the image that breaks the batch
                log.warning("a batch of %d images failed; predicting them one at a time", len(batch), exc_info=True)
                detections = [self._predict_one(predictor, j) for j in batch]
            self.metrics.inference.observe(time.perf_counter() - t0)
            for job, dets in zip(batch, detections, strict=True):
                if dets is not None:
                    self._finish(job, loaded, config, dets)
        for job in boxed:
            h, w = job.array.shape[:2]
            x, y, bw, bh = job.box_xyxy_pct
            box = (x / 100 * w, y / 100 * h, (x + bw) / 100 * w, (y + bh) / 100 * h)
            t0 = time.perf_counter()
            try:
                det = predictor.predict_in_box(job.array, box)
            except ValueError as e:
                self._fail(job, f"task {job.task_id}: the drawn rectangle cannot be used ({e})", kind="context")
                continue
            except Exception:  # noqa: BLE001
                log.exception("task %s: the model failed on the drawn box %s", job.task_id, box)
                self._fail(job, f"task {job.task_id}: the model failed on the drawn rectangle", kind="internal")
                continue
            self.metrics.inference.observe(time.perf_counter() - t0)
            self._finish(job, loaded, config, [det] if det is not None else [], forced_label=job.box_label)

    def _predict_one(self, predictor, job: _ImageJob):
        try:
            return predictor.predict([job.array], score_thresh=self.settings.score_thresh)[0]
        except Exception as e:  # noqa: BLE001
            log.exception("task %s: the model failed on image %r", job.task_id, job.url)
            self._fail(job, f"task {job.task_id}: the model failed on image {job.url!r} ({type(e).__name__})",
                       kind="internal")
            return None

    def _finish(self, job: _ImageJob, loaded: LoadedModel, config: LabelConfig, detections, *,
                forced_label: str | None = None) -> None:
        h, w = job.array.shape[:2]
        regions, scores = [], []
        for control in config.controls_for(job.image.name):
            sources = []
            for d in detections:
                label = self._label(control, d.label, loaded.class_names, forced_label)
                if label is None:
                    continue
                sources.append(RegionSource(label=label, score=float(d.score), box_xyxy=tuple(d.box_xyxy),
                                            mask=d.mask if control.needs_mask else None, polygons=tuple(d.polygons)))
            made = control.results(sources, width_px=w, height_px=h)
            self.metrics.regions.labels(type=control.result_type).inc(len(made))
            regions.extend(made)
        for d in detections:
            if any(self._label(c, d.label, loaded.class_names, forced_label) for c in config.controls_for(job.image.name)):
                scores.append(float(d.score))
        job.regions, job.scores = regions, scores
        job.array = None
        self.results.put(job.key, (regions, scores))

    @staticmethod
    def _label(control: ControlModel, class_name: str, class_names: list[str], forced: str | None) -> str | None:
        if forced is not None and forced in control.labels:
            return forced
        return control.label_for(class_name, class_names)

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
        """Hands a training event to the queue (``worker.trigger``); never trains in the request.

        Returns:
            The trigger's summary (``{"action": "queued" | "follow_up" | "counted" | ...}``), or
            ``{"action": "ignored"}`` for events that do not concern training.

        Raises:
            QueueUnavailable: no Redis configured or reachable.
            ValueError: a training event without a project id.
        """
        from worker.trigger import COUNTED_ACTIONS, START_ACTION, on_webhook

        if event not in COUNTED_ACTIONS and event != START_ACTION:
            return {"action": "ignored", "event": event}
        import redis

        conn = self._redis_conn()
        try:
            summary = on_webhook(conn, data, min_new_annotations=self.settings.min_new_annotations)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise QueueUnavailable(f"Redis at {self.settings.redis_url} does not answer ({e})") from e
        log.info("webhook %s: %s", event, summary)
        return summary
