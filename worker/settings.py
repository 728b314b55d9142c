"""Settings of the retraining loop, read from environment variables.

Only the standard library is imported here so that the web service can read the queue names and the
trigger policy without importing rq job code, torch or the model.

Environment variables (all optional):

| variable | default | meaning |
| --- | --- | --- |
| ``REDIS_URL`` | none | Redis of the queues (none: ``shoeseg up`` starts one) |
| ``SHOESEG_MODEL_DIR`` | ``./models`` | model registry root |
| ``SHOESEG_CACHE_DIR`` | ``./.cache/shoeseg`` | image cache of the worker |
| ``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY`` | none | the Label Studio server the jobs read and write |
| ``SHOESEG_DEVICE`` | ``auto`` | ``auto``, ``cpu`` or ``cuda`` |
| ``SHOESEG_MIN_NEW_ANNOTATIONS`` | ``10`` | new accepted annotations that start a training |
| ``SHOESEG_PROFILE`` | ``auto`` | training recipe (``shoeseg.train.PROFILES``: ``cpu``, ``study``, ``gpu``; ``auto`` from the device) |
| ``SHOESEG_TRAIN_ITERS`` | the profile's | iterations per training job |
| ``SHOESEG_IMS_PER_BATCH`` | the profile's | images per training step |
| ``SHOESEG_BASE_LR`` | the profile's | learning rate |
| ``SHOESEG_ROI_BATCH`` | the profile's | ROIs sampled per image by the box head |
| ``SHOESEG_MIN_SIZE`` / ``SHOESEG_MAX_SIZE`` | the profile's | resize range of the model |
| ``SHOESEG_INIT_WEIGHTS`` | ``auto`` | first model when the registry is empty: ``auto`` (COCO R50-FPN when it can be had, else the ImageNet-pretrained lite2-fpn), ``none``, ``coco``, ``imagenet`` or a checkpoint path; later versions fine-tune the current one, in its family |
| ``SHOESEG_PROMOTE_TOLERANCE`` | ``0.01`` | promotion when new segm AP >= current segm AP - tolerance |
| ``SHOESEG_VAL_MODULO`` | ``5`` | a task is in the fixed validation subset when its hash % modulo == 0 |
| ``SHOESEG_AL_STRATEGY`` | ``least_confidence`` | active-learning score pushed with each prediction |
| ``SHOESEG_PREDICT_BATCH`` | ``8`` | images per prediction batch |
| ``SHOESEG_SCORE_THRESH`` | ``0.5`` | detections below are not pushed as regions |
| ``SHOESEG_TRAIN_TIMEOUT`` / ``SHOESEG_PREDICT_TIMEOUT`` | ``7200`` / ``3600`` | rq job timeouts, seconds |
| ``SHOESEG_RETRY_MAX`` | ``3`` | retries of a job after a transient failure |
| ``SHOESEG_RETRY_INTERVALS`` | ``10,60,300`` | back-off between retries, seconds |
| ``SHOESEG_LEASE_TTL`` | ``60`` | seconds after which a training that stopped heart-beating counts as dead |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

TRAIN_QUEUE = "shoeseg-train"
PREDICT_QUEUE = "shoeseg-predict"
QUEUES = (TRAIN_QUEUE, PREDICT_QUEUE)
TRAIN_JOB = "worker.jobs.train_project"
PREDICT_JOB = "worker.jobs.predict_project"


def _int(env: dict, name: str, default: int | None, *, minimum: int = 0) -> int | None:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError as e:
        raise ValueError(f"{name}={raw!r} is not an integer") from e
    if value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")
    return value


def _float(env: dict, name: str, default: float | None) -> float | None:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError as e:
        raise ValueError(f"{name}={raw!r} is not a number") from e


def _ints(env: dict, name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        values = tuple(int(part) for part in raw.split(",") if part.strip())
    except ValueError as e:
        raise ValueError(f"{name}={raw!r} is not a comma-separated list of integers") from e
    if not values or any(v < 0 for v in values):
        raise ValueError(f"{name}={raw!r} needs one or more non-negative integers")
    return values


@dataclass(frozen=True)
class LoopSettings:
    """Everything the trigger, the jobs and the worker read from the environment.

    Example:
        >>> s = LoopSettings.from_env({"SHOESEG_TRAIN_ITERS": "5", "SHOESEG_MIN_NEW_ANNOTATIONS": "3"})
        >>> (s.train_iters, s.min_new_annotations)
        (5, 3)
    """

    redis_url: str | None = None
    model_dir: Path = Path("models")
    cache_dir: Path = Path(".cache/shoeseg")
    label_studio_url: str | None = None
    label_studio_api_key: str | None = None
    device: str = "auto"
    min_new_annotations: int = 10
    profile: str = "auto"
    train_iters: int | None = None
    ims_per_batch: int | None = None
    base_lr: float | None = None
    roi_batch_size_per_image: int | None = None
    min_size: int | None = None
    max_size: int | None = None
    init_weights: str = "auto"
    promote_tolerance: float = 0.01
    val_modulo: int = 5
    al_strategy: str = "least_confidence"
    predict_batch: int = 8
    score_thresh: float = 0.5
    train_timeout_s: int = 7200
    predict_timeout_s: int = 3600
    retry_max: int = 3
    retry_intervals_s: tuple[int, ...] = field(default=(10, 60, 300))
    lease_ttl_s: int = 60

    @classmethod
    def from_env(cls, env: dict | None = None) -> LoopSettings:
        """Reads the settings from ``env`` (default ``os.environ``); bad values raise ``ValueError`` naming the variable."""
        env = dict(os.environ if env is None else env)
        return cls(
            redis_url=env.get("REDIS_URL") or None,
            model_dir=Path(env.get("SHOESEG_MODEL_DIR") or "models"),
            cache_dir=Path(env.get("SHOESEG_CACHE_DIR") or ".cache/shoeseg"),
            label_studio_url=env.get("LABEL_STUDIO_URL") or None,
            label_studio_api_key=env.get("LABEL_STUDIO_API_KEY") or None,
            device=env.get("SHOESEG_DEVICE") or "auto",
            min_new_annotations=_int(env, "SHOESEG_MIN_NEW_ANNOTATIONS", 10, minimum=1),
            profile=env.get("SHOESEG_PROFILE") or "auto",
            train_iters=_int(env, "SHOESEG_TRAIN_ITERS", None, minimum=1),
            ims_per_batch=_int(env, "SHOESEG_IMS_PER_BATCH", None, minimum=1),
            base_lr=_float(env, "SHOESEG_BASE_LR", None),
            roi_batch_size_per_image=_int(env, "SHOESEG_ROI_BATCH", None, minimum=1),
            min_size=_int(env, "SHOESEG_MIN_SIZE", None, minimum=16),
            max_size=_int(env, "SHOESEG_MAX_SIZE", None, minimum=16),
            init_weights=env.get("SHOESEG_INIT_WEIGHTS") or "auto",
            promote_tolerance=_float(env, "SHOESEG_PROMOTE_TOLERANCE", 0.01),
            val_modulo=_int(env, "SHOESEG_VAL_MODULO", 5, minimum=2),
            al_strategy=env.get("SHOESEG_AL_STRATEGY") or "least_confidence",
            predict_batch=_int(env, "SHOESEG_PREDICT_BATCH", 8, minimum=1),
            score_thresh=_float(env, "SHOESEG_SCORE_THRESH", 0.5),
            train_timeout_s=_int(env, "SHOESEG_TRAIN_TIMEOUT", 7200, minimum=1),
            predict_timeout_s=_int(env, "SHOESEG_PREDICT_TIMEOUT", 3600, minimum=1),
            retry_max=_int(env, "SHOESEG_RETRY_MAX", 3, minimum=0),
            retry_intervals_s=_ints(env, "SHOESEG_RETRY_INTERVALS", (10, 60, 300)),
            lease_ttl_s=_int(env, "SHOESEG_LEASE_TTL", 60, minimum=2),
        )
