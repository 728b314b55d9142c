"""Training in idle time: while a project has no other job, keep improving its current version in chunks.

One chunk (``worker.jobs.improve_project``, queued by :func:`shoeseg_services.idle_training.request_idle` on the lowest
queue) trains on all the project's accepted labels but the validation subset, for ``SHOESEG_IDLE_CHUNK_ITERS``
iterations of :data:`shoeseg.schedule.IDLE_RECIPE` (a larger input size, a lower learning rate). The candidate
then meets the same gate as a round (:func:`worker.training.judge`, against the current version): it becomes a
version, promoted and pushed when the evidence allows. The next chunk is queued as this one ends, until the
project's budget (``SHOESEG_IDLE_MAX_ITERS`` iterations on one set of labels) is spent; a round on new labels
starts a new budget.

The chunks of one budget continue each other's weights: each starts from the previous chunk's candidate (the
project's *idle line*, kept in its idle state), promoted or not, with a fresh optimizer, a short warm-up and a
seed of its own. The gate decides what is served, not where training goes on: a refused chunk is not thrown
away and retried from the current version (which would spend the budget on 60-iteration trainings that never
add up); the line restarts from the current version when that changes under it (a round, a rollback) or when
the accepted labels change (any new, changed or removed annotation: its budget starts again too). A line that
keeps being refused is not pulled back before the budget ends: what it costs is idle compute, never what is
served.

Yielding: the chunk asks Redis after every iteration whether labelled work is waiting
(:func:`shoeseg_services.idle_training.labelled_work_waiting`: a push or a round on the queues, or this project's training
on another worker) and stops there, dropping the unfinished chunk, so the worker takes that job within one
iteration (about 5 s on 2 CPU cores at 512 px) plus the time to free the model. Nothing is registered by a
stopped or killed chunk: the current version stays what it was.

Sharing a machine: the chunk's process (rq's work horse, forked per job) lowers its priority to
``SHOESEG_IDLE_NICE`` and, with ``SHOESEG_IDLE_THREADS``, its torch threads, so the backend's ``/predict``
keeps the CPU first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from shoeseg_services import idle_training
from shoeseg_services.processes import session_nice, set_session_nice
from shoeseg_services.settings import Settings
from worker.plumbing import Progress
from worker.training import (
    clean_old_runs,
    judge,
    read_labels,
    register_and_promote,
    split_labels,
    train_config,
)

log = logging.getLogger(__name__)

#: Redis is asked at most this often whether labelled work waits (every iteration takes longer on a CPU).
YIELD_CHECK_S = 1.0


def labels_fingerprint(ds) -> str:
    """One string for the set of accepted labels: every task with its annotation id."""
    pairs = sorted((str(im.image_id), str(im.extra.get("ls_annotation_id"))) for im in ds.images)
    return hashlib.blake2b(json.dumps(pairs).encode(), digest_size=12).hexdigest()


@dataclass
class _Priority:
    """What a chunk changed to train at a lower priority, to set back at its end."""

    process_nice: int
    session_nice: int | None
    threads: int | None


def _lower_priority(settings: Settings) -> _Priority:
    """The chunk's process at ``nice`` ``SHOESEG_IDLE_NICE``, and its session too where Linux shares the CPU
    between sessions first (autogroup, :func:`shoeseg_services.processes.session_nice`): the process's own nice
    only counts within its session, and rq's work horse shares the worker's. With ``SHOESEG_IDLE_THREADS``, fewer
    torch threads. Returns what to set back when the chunk ends (:func:`_restore_priority`)."""
    was = _Priority(process_nice=os.getpriority(os.PRIO_PROCESS, 0), session_nice=None, threads=None)
    if settings.idle_nice > was.process_nice:  # a level, not an increment: chunks run one after another
        try:
            os.setpriority(os.PRIO_PROCESS, 0, settings.idle_nice)
        except OSError:  # not allowed here: run at the same priority
            log.warning("could not lower the idle-time training's priority", exc_info=True)
    before = session_nice()
    if before is not None and settings.idle_nice > before and set_session_nice(settings.idle_nice):
        was.session_nice = before
    if settings.idle_threads:
        import torch

        was.threads = torch.get_num_threads()
        torch.set_num_threads(settings.idle_threads)
    return was


def _restore_priority(was: _Priority) -> None:
    """Sets back what :func:`_lower_priority` changed, for the next job of a worker that runs jobs in its own
    process (rq's ``SimpleWorker``; a forking worker's work horse ends with its job). A process may not raise its
    priority again without the right to: it then stays at the idle nice."""
    if was.session_nice is not None:
        set_session_nice(was.session_nice)
    if was.threads is not None:
        import torch

        torch.set_num_threads(was.threads)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, was.process_nice)
    except OSError:
        log.info("the idle-time nice stays on this process (no right to raise its priority again)")


def undo_stale_idle_priority(settings: Settings) -> None:
    """Sets the session's nice back to 0 when it is still the idle chunks' (a chunk killed before it could):
    called by the jobs that are not idle time, which share the worker's session."""
    if settings.idle_nice > 0 and session_nice() == settings.idle_nice and set_session_nice(0):
        log.warning("this worker's session was still at the idle-time nice %d (a chunk was killed): back to 0",
                    settings.idle_nice)


def idle_line(registry, state: dict[str, str], *, labels: str, current):
    """The version the next chunk continues: the idle line's last candidate when it grew on these labels from
    this current version (``line_base``) and is still in the registry, else the current version."""
    line, base = state.get("line_version"), state.get("line_base")
    if not line or base != current.version or state.get("labels") != labels or line == current.version:
        return current
    if not registry.has_version(line):
        log.warning("idle line %s is not in the registry any more: continuing from the current version", line)
        return current
    return registry.get(line)


def run_improvement(project_id: int, *, settings: Settings, job, progress: Progress) -> dict:
    """One idle-time chunk of a project (see the module's text); returns a JSON-able summary.

    The summary's ``outcome`` is ``promoted`` or ``candidate`` (a version was registered), ``yielded``
    (labelled work came first), ``capped`` (the budget is spent), or ``skipped`` (nothing to improve).
    """
    from shoeseg.schedule import idle_config
    from shoeseg.train import TrainingStopped, train
    from shoeseg_services.registry import ModelRegistry

    conn = job.connection if job is not None else None
    summary = {"project": project_id, "kind": "idle"}

    def end(outcome: str, **values) -> dict:
        if conn is not None:
            idle_training.set_idle_state(conn, project_id, job_id=None, state=outcome, last_outcome=outcome,
                                         **{k: v for k, v in values.items() if k in ("iters_done", "labels")},
                                         **({"line_version": values["version"], "line_base": values["line_base"]}
                                            if "line_base" in values else {}))
        return {**summary, "outcome": outcome, **values}

    if conn is not None:
        waiting = idle_training.labelled_work_waiting(conn, project_id)
        if waiting:
            log.info("project %s: idle-time training yields at once: %s", project_id, waiting)
            out = end("yielded", why=waiting)
            out["next"] = idle_training.request_idle(conn, project_id, settings=settings)
            return out
    if settings.cache_dir is None:
        settings = settings.with_(cache_dir=Path(".cache/shoeseg"))
    registry = ModelRegistry(settings.model_dir, cache_dir=settings.cache_dir)
    current = registry.current()
    if current is None:
        return end("skipped", why="no current version to improve")
    ds, images_dir = read_labels(project_id, settings, progress)
    if not ds.images:
        return end("skipped", why="no accepted annotation in the project")
    labels = labels_fingerprint(ds)
    state = idle_training.idle_state(conn, project_id) if conn is not None else {}
    done = int(state.get("iters_done") or 0) if state.get("labels") in (None, "", labels) else 0
    if done >= settings.idle_max_iters:
        return end("capped", iters_done=done, labels=labels)
    iters = min(settings.idle_chunk_iters, settings.idle_max_iters - done)
    train_ds, val_ds = split_labels(ds, settings, current)
    start = idle_line(registry, state, labels=labels, current=current) if done else current
    config = idle_config(train_config(settings, weights=None, init_from=str(start.checkpoint),
                                       seed=done + 1), init_from=str(start.checkpoint), iters=iters)
    if start.version != current.version:
        log.info("project %s: idle-time chunk continues the idle line at %s (current: %s)", project_id,
                 start.version, current.version)
    progress.update(force=True, stage="training", kind="idle", train_tasks=len(train_ds), val_tasks=len(val_ds),
                    iteration=0, iters=config.iters, idle_iters_done=done, idle_max_iters=settings.idle_max_iters)
    if conn is not None:
        idle_training.set_idle_state(conn, project_id, state="running", labels=labels, iters_done=done)

    last_check = [0.0]

    def should_stop() -> bool:
        if conn is None or time.monotonic() - last_check[0] < YIELD_CHECK_S:
            return False
        last_check[0] = time.monotonic()
        why = idle_training.labelled_work_waiting(conn, project_id)
        if why:
            summary["why"] = why
        return why is not None

    runs_dir = settings.cache_dir / "runs" / str(project_id)
    runs_dir.mkdir(parents=True, exist_ok=True)
    clean_old_runs(runs_dir)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=runs_dir))
    priority = _lower_priority(settings)
    try:
        try:
            result = train(config, dataset=train_ds, images_dir=images_dir, out_dir=run_dir,
                           val_dataset=val_ds if len(val_ds) else None, should_stop=should_stop,
                           progress=lambda values: progress.update(stage="training", **values))
        except TrainingStopped as e:
            log.info("project %s: idle-time chunk yielded after %d iterations: %s", project_id, e.iterations,
                     summary.get("why"))
            out = end("yielded", iters_done=done, labels=labels, iterations=e.iterations)
            if conn is not None:  # behind the work it yielded to (a round of this project asks again itself)
                out["next"] = idle_training.request_idle(conn, project_id, settings=settings)
            return out
        progress.update(force=True, stage="evaluating")
        decision, current_metrics = judge(result, current, val_ds, images_dir, settings)
        progress.update(force=True, stage="registering", decision=decision.reason)
        registered = register_and_promote(
            registry, result, current=current, decision=decision, current_metrics=current_metrics,
            project_id=project_id, kind="idle", reason=f"idle time: iterations {done + 1}-{done + iters}",
            config=config, ds=ds, train_ds=train_ds, val_ds=val_ds, settings=settings, job=job,
            trained_from=start.version)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        _restore_priority(priority)
    done += iters
    outcome = "promoted" if registered["promoted"] else "candidate"
    line_base = registered["version"] if registered["promoted"] else current.version
    out = end(outcome, iters_done=done, labels=labels, line_base=line_base,
              **{k: v for k, v in registered.items() if k != "project"})
    if conn is not None:
        out["next"] = idle_training.request_idle(conn, project_id, settings=settings)
    return out
