"""Starting an RQ worker on the ShoeSeg queues (training first, then prediction)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from shoeseg_services.queues import QUEUES
from shoeseg_services.settings import Settings

log = logging.getLogger(__name__)


def run_worker(
    queues: Sequence[str] = QUEUES,
    redis_url: str | None = None,
    *,
    burst: bool = False,
    with_scheduler: bool = True,
    name: str | None = None,
    recover: bool = True,
) -> bool:
    """Runs an rq worker until stopped (or, with ``burst``, until the queues are empty).

    The same work can be done by a plain ``rq worker --with-scheduler shoeseg-train shoeseg-predict`` run from
    the repository root; this entry point adds two things: it re-enqueues the training of projects whose job
    died with a killed worker (see :func:`shoeseg_services.trigger.recover_stale`), and it runs rq's scheduler so that
    jobs retried with back-off come back.

    Args:
        queues: queue names, in priority order.
        redis_url: the Redis of the queues; default ``REDIS_URL``.
        burst: quit when the queues are empty.
        with_scheduler: run rq's scheduler (needed for retries with back-off).
        name: the worker's name (rq makes one up by default).
        recover: re-enqueue lost training jobs before starting.

    Returns:
        Whether any job was run.

    Raises:
        ValueError: no Redis URL, or an unknown queue name.
        redis.ConnectionError: Redis is unreachable at start.

    Example:
        >>> run_worker(["shoeseg-train"], "redis://127.0.0.1:6379/0", burst=True)  # doctest: +SKIP
        True
    """
    import redis
    from rq import Worker


    settings = Settings.from_env()
    url = redis_url or settings.redis_url
    if not url:
        raise ValueError("no Redis to work from: pass --redis-url or set REDIS_URL")
    unknown = [q for q in queues if q not in QUEUES]
    if unknown:
        raise ValueError(f"unknown queue(s) {unknown}; ShoeSeg's queues are {list(QUEUES)}")
    conn = redis.Redis.from_url(url)
    conn.ping()
    if recover:
        _recover(conn, settings)
        if not burst:  # a worker that died mid-training elsewhere: its project trains again once the lease lapses
            _start_recovery(url, settings, every_s=max(10.0, 2.0 * settings.lease_ttl_s))
    worker = Worker(list(queues), connection=conn, name=name)
    log.info("worker %s on %s, queues %s (burst=%s)", worker.name, url, ", ".join(queues), burst)
    return worker.work(burst=burst, with_scheduler=with_scheduler)


def _recover(conn, settings: Settings) -> None:
    from shoeseg_services import trigger

    for r in trigger.recover_stale(conn, settings=settings):
        log.warning("re-enqueued training of project %s as %s (%s)", r["project"], r["job_id"], r["reason"])


def _start_recovery(url: str, settings: Settings, *, every_s: float) -> None:
    """Checks every ``every_s`` for trainings whose worker died (one transaction per project; any worker may)."""
    import threading

    import redis

    def loop() -> None:
        conn = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
        stop = threading.Event()
        while not stop.wait(every_s):
            try:
                _recover(conn, settings)
            except Exception:  # noqa: BLE001 - Redis away for a moment: the next round tries again
                log.warning("checking for lost trainings failed", exc_info=True)

    threading.Thread(target=loop, name="shoeseg-recovery", daemon=True).start()
