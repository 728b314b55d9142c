"""Plumbing of the rq jobs: progress in ``job.meta``, the project's training lease, and failure records."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any

from shoeseg_services import trigger
from shoeseg_services.ls_api import is_transient

log = logging.getLogger(__name__)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Progress:
    """Writes progress into the current rq job's meta, at most every ``interval_s`` seconds."""

    def __init__(self, job, *, interval_s: float = 0.5):
        self.job = job
        self.interval_s = interval_s
        self._last = 0.0

    def update(self, *, force: bool = False, **values: Any) -> None:
        if self.job is None:
            return
        self.job.meta.update(values)
        now = time.monotonic()
        if force or now - self._last >= self.interval_s:
            self._last = now
            try:
                self.job.save_meta()
            except Exception:  # progress is best effort; Redis errors surface elsewhere
                log.debug("could not save job meta", exc_info=True)


class Lease:
    """Renews the project's training lease from a thread while the job runs (stops with the process)."""

    def __init__(self, conn, project_id: int, job_id: str, *, ttl_s: int):
        self.conn, self.project_id, self.job_id, self.ttl_s = conn, project_id, job_id, ttl_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(max(self.ttl_s / 3.0, 0.5)):
            try:
                if not trigger.heartbeat(self.conn, self.project_id, self.job_id, lease_ttl_s=self.ttl_s):
                    log.warning("job %s no longer owns project %s", self.job_id, self.project_id)
                    return
            except Exception:
                log.warning("could not renew the lease of %s", self.job_id, exc_info=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def will_retry(job, exc: BaseException) -> bool:
    """Whether rq will run the job again after ``exc``: only a transient failure, while retries are left."""
    return job is not None and is_transient(exc) and bool(job.retries_left)


def on_failure(job, connection, exc_type, exc, tb) -> None:
    """rq's failure callback of every ShoeSeg job (``Callback("worker.plumbing.on_failure")``).

    Runs before rq decides on a retry: a failure a retry would repeat (not transient) uses up the retries, so
    the job fails at once; ``job.meta`` records the stage it failed in, the error, and whether it is retried.
    """
    transient = is_transient(exc)
    if not transient and job.retries_left:
        job.retries_left = 0  # a retry would fail the same way: fail now
    retrying = bool(job.retries_left)
    stage = job.meta.get("stage") or "starting"
    job.meta.update(
        stage="retrying" if retrying else "failed",
        error=f"{stage}: {exc_type.__name__ if exc_type else 'Error'}: {exc}",
        transient=transient,
        will_retry=retrying,
        failed_at=now(),
    )
    try:
        job.save_meta()
    except Exception:  # noqa: BLE001 - the failure itself is what rq records
        log.debug("could not save job meta", exc_info=True)


def current_job():
    from rq import get_current_job

    return get_current_job()
