"""ShoeSeg's settings: every environment variable the backend, the worker and the launcher read, in one place.

Read once, at start-up (:meth:`Settings.from_env`), and validated there: a bad value raises
:class:`SettingsError` naming the variable and the value, before any request or job runs. Only the standard
library and the active-learning strategies' table (numpy) are imported here, so the web service reads its
settings without loading torch.

| variable | default | meaning |
| --- | --- | --- |
| ``SHOESEG_MODEL_DIR`` (or ``MODEL_DIR``) | ``models`` | model registry root: a folder, or ``s3://bucket/prefix`` (``shoeseg_services.registry``) |
| ``SHOESEG_CACHE_DIR`` | ``.cache/shoeseg`` | the one image cache (Label Studio uploads), backend and worker |
| ``REDIS_URL`` | none | Redis of the training queue (none: the backend answers 503 to training events) |
| ``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY`` | none | the one Label Studio server trusted, and its key |
| ``LABEL_STUDIO_HOST`` | none | the URL that server announces in ``/setup`` when it differs from ``LABEL_STUDIO_URL`` |
| ``SHOESEG_DEVICE`` | ``auto`` | ``auto``, ``cpu`` or ``cuda`` |
| ``SHOESEG_RUNTIME`` | ``auto`` | what runs the model for ``/predict`` and the worker's push: ``torch``, ``onnx`` (ONNX Runtime on the version's exported ``model.onnx``) or ``auto`` (``shoeseg.runtime.resolve_runtime``) |
| ``SHOESEG_IMAGE_ROOT`` | none | local directory images may be read from |
| ``SHOESEG_ALLOWED_HOSTS`` | none | hosts plain image URLs, presigned-URL redirects and other ``/setup`` servers may name |
| ``SHOESEG_S3_BUCKETS`` | none | buckets whose ``s3://`` image URIs are read with this machine's own AWS credentials |
| ``BASIC_AUTH_USER`` / ``BASIC_AUTH_PASS`` | none | HTTP basic auth of the backend |
| ``SHOESEG_INSECURE`` | ``false`` | serve off loopback without basic auth |
| ``SHOESEG_MIN_NEW_ANNOTATIONS`` (or ``MIN_NEW_ANNOTATIONS``) | ``10`` | new annotations that start a training |
| ``SHOESEG_SCORE_THRESH`` | the checkpoint's | detections below are not written as regions; unset: the threshold training chose on its validation images (fewest edits, ``shoeseg.edits``), else 0.5 |
| ``SHOESEG_POLYGON_TOLERANCE`` / ``SHOESEG_POLYGON_TOLERANCE_REL`` / ``SHOESEG_POLYGON_MAX_VERTICES`` | ``1`` / ``0.005`` / ``40`` | the pre-labels' vertex budget, backend and worker alike: simplification tolerance in pixels, relative to each shoe's box diagonal (the larger wins), and the most vertices of a polygon |
| ``SHOESEG_MASK_REFINE`` / ``SHOESEG_MASK_RESCORE`` | ``0.04`` / ``false`` | every soft mask refined along the image's edges (a guided filter's radius relative to the box diagonal; 0: off), and every score multiplied by its mask's quality, before thresholding (``shoeseg.outlines``), backend and worker alike |
| ``SHOESEG_AL_STRATEGY`` | ``flip_consistency`` | the task score of every prediction (``shoeseg.active_learning``; the best measured, docs/active-learning.md; ``least_confidence`` runs each image once instead of twice) |
| ``SHOESEG_PROFILE`` | ``auto`` | training recipe (``shoeseg.train.PROFILES``) |
| ``SHOESEG_TRAIN_ITERS``, ``SHOESEG_IMS_PER_BATCH``, ``SHOESEG_BASE_LR``, ``SHOESEG_ROI_BATCH``, ``SHOESEG_MIN_SIZE``, ``SHOESEG_MAX_SIZE`` | the profile's | training overrides |
| ``SHOESEG_INIT_WEIGHTS`` | ``auto`` | first model: ``auto``, ``none``, ``coco``, ``imagenet`` or a checkpoint path |
| ``SHOESEG_PROMOTE_TOLERANCE`` | unset | when set, the gate also refuses a version whose mean per-image mask AP is below the current one's by more (negative: it must gain that much); unset, the interval alone decides |
| ``SHOESEG_GATE_CONFIDENCE`` | ``0.9`` | the gate's bootstrap interval (``shoeseg.gate``): refused when the whole interval is below 0 |
| ``SHOESEG_VAL_MODULO`` | ``5`` | a task is in the validation subset when its hash % modulo == 0 ... |
| ``SHOESEG_VAL_MAX`` | ``30`` | ... and among the ``SHOESEG_VAL_MAX`` such tasks of lowest hash (the rest train) |
| ``SHOESEG_VAL_ROTATION`` | ``newest`` | which tasks judge a later version: ``newest``, the newest labels neither version trained on (the oldest validation tasks move into training), or ``fixed``, the hash subset above for good |
| ``SHOESEG_TRAIN_BUDGET_S`` | ``780`` | training seconds of a full training (the first version, a full retrain): every 10 iterations its schedule is cut to what fits the rest of it at their pace (at least half of it; 0: no budget), so the first pre-labels come within about 15 minutes on a slower machine too; idle training continues after it |
| ``SHOESEG_ROUND_BUDGET_S`` | ``360`` | training seconds of a fine-tuning round: its iterations are cut to fit at its parent's seconds per iteration (at least 40; 0: no budget), idle training continues after it |
| ``SHOESEG_IDLE_TRAINING`` | ``true`` | keep improving the current version while the project has no other job (``worker.improving``) |
| ``SHOESEG_IDLE_CHUNK_ITERS`` | ``60`` | iterations of one idle-time chunk (each chunk that passes the gate is a version) |
| ``SHOESEG_IDLE_MAX_ITERS`` | ``600`` | idle-time iterations per project on one set of labels; new labels start a new budget |
| ``SHOESEG_IDLE_NICE`` / ``SHOESEG_IDLE_THREADS`` | ``10`` / ``0`` | idle chunks run at this niceness (their session's too where Linux groups the scheduler by session), with this many torch threads (0: torch's default) |
| ``SHOESEG_PREDICT_BATCH`` | ``8`` | images per prediction batch of the worker |
| ``SHOESEG_KEEP_OLD_PREDICTIONS`` | ``false`` | keep a task's predictions of superseded versions (default: removed once the new ones are stored) |
| ``SHOESEG_TRAIN_TIMEOUT`` / ``SHOESEG_PREDICT_TIMEOUT`` | ``7200`` / ``3600`` | rq job timeouts, seconds |
| ``SHOESEG_RETRY_MAX`` / ``SHOESEG_RETRY_INTERVALS`` | ``3`` / ``10,60,300`` | retries after a transient failure |
| ``SHOESEG_LEASE_TTL`` | ``60`` | seconds after which a training that stopped heart-beating counts as dead |
| ``SHOESEG_GPUS_PER_JOB`` | ``1`` | processes (GPUs) per training job: above 1 the worker runs the training under torchrun |

The backend's request limits (``SHOESEG_MAX_*``, ``SHOESEG_FETCH_*``, ``SHOESEG_BATCH_SIZE``,
``SHOESEG_DECODE_WORKERS``, ``SHOESEG_RESULT_CACHE_SIZE``, ``SHOESEG_RELOAD_INTERVAL_S``) are listed on
:class:`Settings`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shoeseg.active_learning import DEFAULT_STRATEGY as _AL_DEFAULT
from shoeseg.active_learning import STRATEGIES as _AL_TABLE
from shoeseg.geometry import POLYGON_MAX_VERTICES, POLYGON_TOLERANCE_PX, POLYGON_TOLERANCE_REL
from shoeseg.outlines import REFINE_RADIUS_REL

#: Strategies the task score may use: the one table, ``shoeseg.active_learning.STRATEGIES``.
AL_STRATEGIES = tuple(_AL_TABLE)
DEVICES = ("auto", "cpu", "cuda")
#: Serving runtimes (``shoeseg.runtime.RUNTIMES``, kept here without its torch import).
RUNTIMES = ("torch", "onnx", "auto")
#: Training recipes (``shoeseg.train.PROFILES``, and ``auto``).
PROFILES = ("auto", "cpu", "study", "gpu")
#: Which tasks judge a version after the first (``worker.promotion.rotate_validation``): ``newest`` or ``fixed``.
VAL_ROTATIONS = ("newest", "fixed")


class SettingsError(ValueError):
    """An environment variable holds a value ShoeSeg cannot use; the message names both."""


def _split_hosts(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    hosts = tuple(h.strip().lower() for h in value.split(",") if h.strip())
    for h in hosts:
        if "/" in h or "@" in h or h.count(":") > 1 and not h.startswith("["):
            raise SettingsError(
                f"environment variable SHOESEG_ALLOWED_HOSTS has {h!r}: expected host, host:port, *.domain or "
                "*.domain:port (no scheme, path or user)"
            )
    return hosts


def _split_buckets(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    buckets = tuple(b.strip() for b in value.split(",") if b.strip())
    for b in buckets:
        if "/" in b or ":" in b or " " in b or b in (".", ".."):
            raise SettingsError(
                f"environment variable SHOESEG_S3_BUCKETS has {b!r}: expected bucket names (no s3://, key or path)"
            )
    return buckets


_log = logging.getLogger(__name__)
_model_dir_warned: set[tuple[str, str]] = set()


def model_dir_text(env: Mapping[str, str] | None = None) -> str | None:
    """The registry root the environment names: ``SHOESEG_MODEL_DIR``, else ``MODEL_DIR`` (the name
    label-studio-ml-backend's examples use); ``None`` when neither is set.

    When both are set, ``SHOESEG_MODEL_DIR`` wins and one warning per process says so.

    Example:
        >>> model_dir_text({"MODEL_DIR": "/data/models"})
        '/data/models'
    """
    env = os.environ if env is None else env
    ours, alias = env.get("SHOESEG_MODEL_DIR") or None, env.get("MODEL_DIR") or None
    if ours and alias and (ours, alias) not in _model_dir_warned:
        _model_dir_warned.add((ours, alias))
        _log.warning("both SHOESEG_MODEL_DIR=%s and MODEL_DIR=%s are set: using SHOESEG_MODEL_DIR", ours, alias)
    return ours or alias


def registry_root(value: str | os.PathLike[str] | None, name: str = "SHOESEG_MODEL_DIR") -> Path | str:
    """A registry root as the registry takes it: ``s3://bucket/prefix`` kept as text (``Path`` would fold its
    ``//``), anything else a ``Path``.

    Example:
        >>> registry_root("s3://shoes/models"), registry_root("/srv/models")
        ('s3://shoes/models', PosixPath('/srv/models'))
    """
    text = os.fspath(value) if value is not None else ""
    if not text:
        return Path("models")
    if text.lower().startswith("s3:"):
        if not text.startswith("s3://") or not text[len("s3://"):].partition("/")[0]:
            raise SettingsError(f"environment variable {name}={text!r} is not s3://bucket/prefix")
        return text.rstrip("/")
    return Path(text)


def _url(env: Mapping[str, str], name: str) -> str | None:
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"environment variable {name}={raw!r} is not an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise SettingsError(f"environment variable {name} must not hold a user or password in the URL")
    return raw.rstrip("/")


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"environment variable {name}={raw!r} is not a boolean (true/false)")


def _number(env: Mapping[str, str], name: str, default: Any, kind: type, lo: float | None,
            hi: float | None) -> Any:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError as e:
        what = "an integer" if kind is int else "a number"
        raise SettingsError(f"environment variable {name}={raw!r} is not {what}") from e
    if value != value or (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise SettingsError(f"environment variable {name}={raw!r} must be {bounds}")
    return value


def _int(env: Mapping[str, str], name: str, default: Any, *, minimum: int | None = None) -> Any:
    return _number(env, name, default, int, minimum, None)


def _float(env: Mapping[str, str], name: str, default: Any, *, lo: float | None = None,
           hi: float | None = None) -> Any:
    return _number(env, name, default, float, lo, hi)


def _ints(env: Mapping[str, str], name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        values = tuple(int(part) for part in raw.split(",") if part.strip())
    except ValueError as e:
        raise SettingsError(f"environment variable {name}={raw!r} is not a comma-separated list of integers") from e
    if not values or any(v < 0 for v in values):
        raise SettingsError(f"environment variable {name}={raw!r} needs one or more non-negative integers")
    return values


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    if raw not in choices:
        raise SettingsError(f"environment variable {name}={raw!r} is not one of {', '.join(choices)}")
    return raw


@dataclass(frozen=True)
class Settings:
    """Everything ShoeSeg can be configured with (see the module's table for the variables).

    Args:
        model_dir: root of the model registry: a ``Path``, or the text ``s3://bucket/prefix``
            (:func:`registry_root`).
        cache_dir: the image cache of the backend and the worker (downloaded Label Studio uploads);
            ``None``: no disk cache.
        redis_url: Redis of the queues.
        label_studio_url / label_studio_api_key: the one Label Studio server trusted and its key. The key is
            only ever sent to that URL; with no URL set it is sent nowhere.
        label_studio_host: the public URL that server announces in ``/setup`` when it differs.
        image_root: local directory images may be read from.
        allowed_hosts: hosts that plain http(s) image URLs may point at, and other Label Studio servers
            ``/setup`` may name: ``host`` (ports 80 and 443 only), ``host:port``, ``*.domain`` or ``*.domain:port``.
            Label Studio's redirects to presigned S3 URLs are followed only to these hosts.
        s3_buckets: buckets whose ``s3://`` image URIs this process reads with its own AWS credentials
            (``SHOESEG_S3_BUCKETS``; empty: none, such URIs are then resolved through Label Studio).
        device: ``auto``, ``cpu`` or ``cuda``.
        runtime: ``torch``, ``onnx`` or ``auto``: what serves predictions (:func:`shoeseg.runtime.load_predictor`).
        basic_auth_user / basic_auth_pass: require HTTP basic auth when both are set.
        insecure: allow serving on a non-loopback address without basic auth.
        min_new_annotations: new annotations that start a retraining (at least 1).
        score_thresh: detections below this score are not written as regions (0 to 1); ``None``: each
            checkpoint's own serving threshold (chosen on its validation images), else 0.5.
        al_strategy: the active-learning strategy of every prediction's task score.
        max_image_bytes / max_image_pixels / fetch_timeout_s: limits on each image download.
        max_request_bytes: larger request bodies are refused with 413 (``SHOESEG_MAX_REQUEST_BYTES``).
        max_tasks_per_request: ``/predict`` requests with more tasks answer 413 (``SHOESEG_MAX_TASKS_PER_REQUEST``).
        max_request_pixels: the images of one ``/predict`` request may hold at most this many pixels in all
            (``SHOESEG_MAX_REQUEST_PIXELS``, counted at their full size).
        decode_workers: images decoded at once in the whole process (``SHOESEG_DECODE_WORKERS``).
        result_cache_size: predictions kept in memory (``SHOESEG_RESULT_CACHE_SIZE``).
        reload_interval_s: how often the registry's ``current`` pointer is checked (``SHOESEG_RELOAD_INTERVAL_S``).
        batch_size: images fetched, decoded and inferred together in a request (``SHOESEG_BATCH_SIZE``).
        fetch_workers: parallel image downloads per batch (``SHOESEG_FETCH_WORKERS``).
        profile, train_iters, ims_per_batch, base_lr, roi_batch_size_per_image, min_size, max_size: the
            worker's training recipe and its overrides (:meth:`train_overrides`).
        init_weights: the first model's start when the registry is empty.
        keep_old_predictions: keep a task's predictions of superseded versions after the new ones are stored.
        gate_confidence / val_max: the promotion gate (:mod:`shoeseg.gate`) and the validation subset's cap.
        val_rotation: ``newest`` (the newest labels neither version trained on judge; older validation tasks move
            into training, :func:`worker.promotion.rotate_validation`) or ``fixed`` (the task-id hash subset
            judges for good) (``SHOESEG_VAL_ROTATION``).
        train_budget_s: the training seconds of a full training (``TrainConfig.time_budget_s``): 13 minutes, so
            that with the model's start, its evaluation and the push the first version is served within 15
            minutes of the import on 2 cores; a slower machine trains fewer iterations, idle-time training
            continues them.
        round_budget_s: the training seconds of a fine-tuning round (:func:`shoeseg.budget.budget_iters`): 6
            minutes, so that with the gate's evaluation and the push new labels are served within about 8
            minutes on 2 cores; the rest of the rule's iterations come from idle-time training right after.
        idle_training / idle_chunk_iters / idle_max_iters / idle_nice / idle_threads: training in idle time
            (``worker.improving``).
        promote_tolerance / val_modulo / predict_batch / train_timeout_s / predict_timeout_s / retry_max /
            retry_intervals_s / lease_ttl_s: the retraining loop (module table).
        gpus_per_job: processes of one training job, one per GPU on CUDA (several gloo processes on CPU);
            above 1 the worker runs ``torchrun --nproc-per-node gpus_per_job -m shoeseg_app train``.

    Example:
        >>> s = Settings.from_env({"SHOESEG_MODEL_DIR": "/srv/models", "SHOESEG_ALLOWED_HOSTS": "a.org, b.org"})
        >>> s.allowed_hosts, s.model_dir
        (('a.org', 'b.org'), PosixPath('/srv/models'))
        >>> Settings.from_env({"SHOESEG_MIN_NEW_ANNOTATIONS": "zero"})
        Traceback (most recent call last):
        ...
        shoeseg_services.settings.SettingsError: environment variable SHOESEG_MIN_NEW_ANNOTATIONS='zero' is not an integer
    """

    model_dir: Path | str = Path("models")
    cache_dir: Path | None = None
    redis_url: str | None = None
    label_studio_url: str | None = None
    label_studio_api_key: str | None = None
    label_studio_host: str | None = None
    image_root: Path | None = None
    allowed_hosts: tuple[str, ...] = ()
    s3_buckets: tuple[str, ...] = ()
    device: str = "auto"
    runtime: str = "auto"
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    insecure: bool = False
    min_new_annotations: int = 10
    score_thresh: float | None = None
    polygon_tolerance_px: float = POLYGON_TOLERANCE_PX
    polygon_tolerance_rel: float = POLYGON_TOLERANCE_REL
    polygon_max_vertices: int | None = POLYGON_MAX_VERTICES
    mask_refine: float = REFINE_RADIUS_REL
    mask_rescore: bool = False
    al_strategy: str = _AL_DEFAULT
    # the backend's bounds on one request
    max_image_bytes: int = 30 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    fetch_timeout_s: float = 20.0
    max_request_bytes: int = 20 * 1024 * 1024
    max_tasks_per_request: int = 100
    max_request_pixels: int = 2_000_000_000
    decode_workers: int = 2
    result_cache_size: int = 2048
    reload_interval_s: float = 1.0
    batch_size: int = 4
    fetch_workers: int = 8
    # the retraining loop
    profile: str = "auto"
    train_iters: int | None = None
    ims_per_batch: int | None = None
    base_lr: float | None = None
    roi_batch_size_per_image: int | None = None
    min_size: int | None = None
    max_size: int | None = None
    init_weights: str = "auto"
    promote_tolerance: float | None = None
    val_modulo: int = 5
    predict_batch: int = 8
    keep_old_predictions: bool = False
    train_timeout_s: int = 7200
    predict_timeout_s: int = 3600
    retry_max: int = 3
    retry_intervals_s: tuple[int, ...] = field(default=(10, 60, 300))
    lease_ttl_s: int = 60
    gpus_per_job: int = 1
    gate_confidence: float = 0.9
    val_max: int = 30
    val_rotation: str = "newest"
    train_budget_s: float = 780.0
    round_budget_s: float = 360.0
    idle_training: bool = True
    idle_chunk_iters: int = 60
    idle_max_iters: int = 600
    idle_nice: int = 10
    idle_threads: int = 0

    @property
    def auth_enabled(self) -> bool:
        return bool(self.basic_auth_user) and self.basic_auth_pass is not None

    def with_(self, **changes) -> Settings:
        """A copy with some fields changed (``Settings`` is frozen)."""
        return replace(self, **changes)

    def output_options(self) -> dict[str, Any]:
        """The pre-labels' outlines as :class:`shoeseg.predict.Predictor` takes them (backend and worker): the
        masks' refinement and rescoring, the polygons' vertex budget."""
        return {"tolerance_px": self.polygon_tolerance_px, "tolerance_rel": self.polygon_tolerance_rel,
                "max_vertices": self.polygon_max_vertices, "mask_refine": self.mask_refine,
                "mask_rescore": self.mask_rescore}

    def train_overrides(self) -> dict[str, Any]:
        """The ``shoeseg.train.TrainConfig`` fields these settings set explicitly (the profile fills the rest)."""
        given = {
            "iters": self.train_iters, "ims_per_batch": self.ims_per_batch, "base_lr": self.base_lr,
            "roi_batch_size_per_image": self.roi_batch_size_per_image, "min_size": self.min_size,
            "max_size": self.max_size,
        }
        return {k: v for k, v in given.items() if v is not None}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Reads and validates the settings from ``env`` (default: ``os.environ``).

        Raises:
            SettingsError: a variable holds a bad value; the message names the variable and the value.
        """
        env = os.environ if env is None else env
        d = cls()  # each default is the field's own, written once above
        image_root = env.get("SHOESEG_IMAGE_ROOT") or None
        cache_dir = env.get("SHOESEG_CACHE_DIR")
        min_new = "SHOESEG_MIN_NEW_ANNOTATIONS" if env.get("SHOESEG_MIN_NEW_ANNOTATIONS") else "MIN_NEW_ANNOTATIONS"
        settings = cls(
            model_dir=registry_root(model_dir_text(env) or "models",
                                    "SHOESEG_MODEL_DIR" if env.get("SHOESEG_MODEL_DIR") else "MODEL_DIR"),
            cache_dir=Path(cache_dir or ".cache/shoeseg"),
            redis_url=env.get("REDIS_URL") or None,
            label_studio_url=_url(env, "LABEL_STUDIO_URL"),
            label_studio_host=_url(env, "LABEL_STUDIO_HOST"),
            label_studio_api_key=env.get("LABEL_STUDIO_API_KEY") or None,
            image_root=Path(image_root) if image_root else None,
            allowed_hosts=_split_hosts(env.get("SHOESEG_ALLOWED_HOSTS")),
            s3_buckets=_split_buckets(env.get("SHOESEG_S3_BUCKETS")),
            device=_choice(env, "SHOESEG_DEVICE", d.device, DEVICES),
            runtime=_choice(env, "SHOESEG_RUNTIME", d.runtime, RUNTIMES),
            basic_auth_user=env.get("BASIC_AUTH_USER") or None,
            basic_auth_pass=env.get("BASIC_AUTH_PASS") or None,
            insecure=_bool(env, "SHOESEG_INSECURE", d.insecure),
            min_new_annotations=_int(env, min_new, d.min_new_annotations, minimum=1),
            score_thresh=_float(env, "SHOESEG_SCORE_THRESH", d.score_thresh, lo=0.0, hi=1.0),
            polygon_tolerance_px=_float(env, "SHOESEG_POLYGON_TOLERANCE", d.polygon_tolerance_px, lo=0.0),
            polygon_tolerance_rel=_float(env, "SHOESEG_POLYGON_TOLERANCE_REL", d.polygon_tolerance_rel, lo=0.0, hi=0.5),
            polygon_max_vertices=_int(env, "SHOESEG_POLYGON_MAX_VERTICES", d.polygon_max_vertices, minimum=3),
            mask_refine=_float(env, "SHOESEG_MASK_REFINE", d.mask_refine, lo=0.0, hi=0.5),
            mask_rescore=_bool(env, "SHOESEG_MASK_RESCORE", d.mask_rescore),
            al_strategy=_choice(env, "SHOESEG_AL_STRATEGY", d.al_strategy, AL_STRATEGIES),
            max_image_bytes=_int(env, "SHOESEG_MAX_IMAGE_BYTES", d.max_image_bytes, minimum=1),
            max_image_pixels=_int(env, "SHOESEG_MAX_IMAGE_PIXELS", d.max_image_pixels, minimum=1),
            fetch_timeout_s=_float(env, "SHOESEG_FETCH_TIMEOUT_S", d.fetch_timeout_s, lo=0.1),
            max_request_bytes=_int(env, "SHOESEG_MAX_REQUEST_BYTES", d.max_request_bytes, minimum=1),
            max_tasks_per_request=_int(env, "SHOESEG_MAX_TASKS_PER_REQUEST", d.max_tasks_per_request, minimum=1),
            max_request_pixels=_int(env, "SHOESEG_MAX_REQUEST_PIXELS", d.max_request_pixels, minimum=1),
            decode_workers=_int(env, "SHOESEG_DECODE_WORKERS", d.decode_workers, minimum=1),
            result_cache_size=_int(env, "SHOESEG_RESULT_CACHE_SIZE", d.result_cache_size, minimum=0),
            reload_interval_s=_float(env, "SHOESEG_RELOAD_INTERVAL_S", d.reload_interval_s, lo=0.0),
            batch_size=_int(env, "SHOESEG_BATCH_SIZE", d.batch_size, minimum=1),
            fetch_workers=_int(env, "SHOESEG_FETCH_WORKERS", d.fetch_workers, minimum=1),
            profile=_choice(env, "SHOESEG_PROFILE", d.profile, PROFILES),
            train_iters=_int(env, "SHOESEG_TRAIN_ITERS", d.train_iters, minimum=1),
            ims_per_batch=_int(env, "SHOESEG_IMS_PER_BATCH", d.ims_per_batch, minimum=1),
            base_lr=_float(env, "SHOESEG_BASE_LR", d.base_lr, lo=0.0),
            roi_batch_size_per_image=_int(env, "SHOESEG_ROI_BATCH", d.roi_batch_size_per_image, minimum=1),
            min_size=_int(env, "SHOESEG_MIN_SIZE", d.min_size, minimum=16),
            max_size=_int(env, "SHOESEG_MAX_SIZE", d.max_size, minimum=16),
            init_weights=(env.get("SHOESEG_INIT_WEIGHTS") or d.init_weights).strip(),
            promote_tolerance=_float(env, "SHOESEG_PROMOTE_TOLERANCE", d.promote_tolerance),  # < 0: a new model must do better
            val_modulo=_int(env, "SHOESEG_VAL_MODULO", d.val_modulo, minimum=2),
            predict_batch=_int(env, "SHOESEG_PREDICT_BATCH", d.predict_batch, minimum=1),
            keep_old_predictions=_bool(env, "SHOESEG_KEEP_OLD_PREDICTIONS", d.keep_old_predictions),
            train_timeout_s=_int(env, "SHOESEG_TRAIN_TIMEOUT", d.train_timeout_s, minimum=1),
            predict_timeout_s=_int(env, "SHOESEG_PREDICT_TIMEOUT", d.predict_timeout_s, minimum=1),
            retry_max=_int(env, "SHOESEG_RETRY_MAX", d.retry_max, minimum=0),
            retry_intervals_s=_ints(env, "SHOESEG_RETRY_INTERVALS", d.retry_intervals_s),
            lease_ttl_s=_int(env, "SHOESEG_LEASE_TTL", d.lease_ttl_s, minimum=2),
            gpus_per_job=_int(env, "SHOESEG_GPUS_PER_JOB", d.gpus_per_job, minimum=1),
            gate_confidence=_float(env, "SHOESEG_GATE_CONFIDENCE", d.gate_confidence, lo=0.5, hi=0.999),
            val_max=_int(env, "SHOESEG_VAL_MAX", d.val_max, minimum=1),
            val_rotation=_choice(env, "SHOESEG_VAL_ROTATION", d.val_rotation, VAL_ROTATIONS),
            train_budget_s=_float(env, "SHOESEG_TRAIN_BUDGET_S", d.train_budget_s, lo=0.0, hi=1e7),
            round_budget_s=_float(env, "SHOESEG_ROUND_BUDGET_S", d.round_budget_s, lo=0.0, hi=1e7),
            idle_training=_bool(env, "SHOESEG_IDLE_TRAINING", d.idle_training),
            idle_chunk_iters=_int(env, "SHOESEG_IDLE_CHUNK_ITERS", d.idle_chunk_iters, minimum=1),
            idle_max_iters=_int(env, "SHOESEG_IDLE_MAX_ITERS", d.idle_max_iters, minimum=0),
            idle_nice=_int(env, "SHOESEG_IDLE_NICE", d.idle_nice, minimum=0),
            idle_threads=_int(env, "SHOESEG_IDLE_THREADS", d.idle_threads, minimum=0),
        )
        if settings.mask_rescore and settings.score_thresh is None:
            _log.warning("SHOESEG_MASK_RESCORE is on and SHOESEG_SCORE_THRESH is unset: each checkpoint's serving "
                         "threshold was chosen on scores that were not rescored; set SHOESEG_SCORE_THRESH")
        return settings
