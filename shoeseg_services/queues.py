"""The job queues' common ground: their names and order, rq's options, and what every module that queues reads.

The web service queues jobs by their import path and never imports job code; the modules that queue them
(:mod:`shoeseg_services.trigger` for training rounds, :mod:`shoeseg_services.idle_training` for training in
idle time, :mod:`shoeseg_services.predict_queue` for pushes and live acceptance) import only ``redis`` and
``rq``, so the web service queues without loading torch.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from rq import Retry

from shoeseg_services.settings import Settings

TRAIN_QUEUE = "shoeseg-train"
PREDICT_QUEUE = "shoeseg-predict"
IDLE_QUEUE = "shoeseg-idle"
#: In a worker's order of priority: pushes first (annotators see the served version's pre-labels soonest), then
#: rounds on new labels, then idle-time training, which also stops within an iteration when either of the
#: others has a job waiting (``worker.improving``).
QUEUES = (PREDICT_QUEUE, TRAIN_QUEUE, IDLE_QUEUE)
#: rq's failure callback of every job: records the failure in ``job.meta`` and skips retries a retry would repeat.
ON_FAILURE = "worker.plumbing.on_failure"

#: Prefix of every Redis key of the loop's state.
KEY_PREFIX = "shoeseg:loop"
#: The projects that ever had a job queued (a set).
PROJECTS_KEY = f"{KEY_PREFIX}:projects"
#: rq statuses of a job that will still run (or is running).
WAITING = frozenset({"queued", "scheduled", "deferred"})
LIVE = WAITING | {"started"}


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def decoded(value: Any) -> str | None:
    """A Redis value as text (``None`` stays ``None``)."""
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def valid_project(value: Any, field: str = "project") -> int:
    """A Label Studio project id: a positive integer, or a string of digits; anything else names ``field``."""
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]{1,18}\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field} must be a positive integer project id, got {value!r}")
    return value


def retry_policy(settings: Settings) -> Retry | None:
    """rq's retries of a job (``SHOESEG_RETRY_MAX`` and ``SHOESEG_RETRY_INTERVALS``); None when they are off."""
    return Retry(max=settings.retry_max, interval=list(settings.retry_intervals_s)) if settings.retry_max else None
