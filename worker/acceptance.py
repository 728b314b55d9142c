"""RQ jobs of live acceptance: an annotation compared with the pre-label it started from (:mod:`shoeseg.acceptance`).

``record_annotation``
    reads the annotation and its task's predictions from Label Studio, finds the pre-label the annotator
    started from (the annotation's ``parent_prediction`` when it names one of the registry's versions, else the
    newest prediction of a registry version made before the annotation), compares them in the annotator's
    numbers and records the result under that version, keyed by the annotation id
    (:meth:`shoeseg_services.registry.ModelRegistry.record_acceptance`): an annotation updated again replaces its record.
    A cancelled (skipped) annotation removes its record.

``forget_annotation``
    removes the records of deleted annotations.

Both are queued by the backend's ``/webhook`` through :func:`shoeseg_services.predict_queue.request_acceptance`.
"""

from __future__ import annotations

import logging
from typing import Any

from shoeseg_services.ls_api import call, connect
from shoeseg_services.settings import Settings
from worker.plumbing import Progress, current_job, now

log = logging.getLogger(__name__)


def pre_label(annotation: dict[str, Any], predictions: list[dict[str, Any]], versions: set[str]) -> dict | None:
    """The prediction the annotator started from: ``parent_prediction`` when it is one of ``versions``', else
    the newest of ``versions``' predictions made no later than the annotation; ``None`` when there is none.

    Example:
        >>> preds = [{"id": 1, "model_version": "v1", "created_at": "2025-01-01T00:00:00Z"},
        ...          {"id": 2, "model_version": "v2", "created_at": "2025-01-03T00:00:00Z"}]
        >>> pre_label({"created_at": "2025-01-02T00:00:00Z"}, preds, {"v1", "v2"})["id"]
        1
    """
    ours = [p for p in predictions if p.get("model_version") in versions]
    parent = annotation.get("parent_prediction")
    for p in ours:
        if parent is not None and p.get("id") == parent:
            return p
    made = str(annotation.get("created_at") or "")
    before = [p for p in ours if not made or str(p.get("created_at") or "") <= made]
    return max(before, key=lambda p: (str(p.get("created_at") or ""), p.get("id") or 0)) if before else None


def _registry(settings: Settings):
    from shoeseg_services.registry import ModelRegistry

    return ModelRegistry(settings.model_dir, cache_dir=settings.cache_dir)


def record_annotation(project_id: int | None, task_id: int, annotation_id: int) -> dict:
    """Compares an annotation with the pre-label it started from and records it under that pre-label's version.

    Args:
        project_id: the Label Studio project (informative; the annotation names its task).
        task_id: the annotation's task.
        annotation_id: the annotation.

    Returns:
        ``{"annotation", "task", "version", "counts", "acceptance"}`` (``acceptance``: the version's new
        summary), or ``{"annotation", "skipped": why}``.

    Raises:
        shoeseg_services.ls_api.LabelStudioUnavailable: Label Studio unreachable (rq retries the job).

    Example:
        >>> record_annotation(3, 41, 17)  # doctest: +SKIP
        {'annotation': 17, 'task': 41, 'version': '20250101-120000-3fa2c1', 'counts': {'kept': 2, ...}, ...}
    """
    from shoeseg.acceptance import compare
    from shoeseg_services.ls_api import get_annotation, task_predictions
    from shoeseg_services.predict_queue import acceptance_started

    settings = Settings.from_env()
    job = current_job()
    if job is not None:  # from now on a new update of the annotation needs a job of its own
        acceptance_started(job.connection, annotation_id, job.id)
    progress = Progress(job)
    progress.update(force=True, stage="reading", annotation=annotation_id, task=task_id, started_at=now())
    client = connect(settings.label_studio_url, settings.label_studio_api_key)
    registry = _registry(settings)
    annotation = call(f"read annotation {annotation_id}", get_annotation, client, annotation_id)
    if annotation is None or annotation.get("was_cancelled"):
        gone = registry.forget_acceptance(annotation_id)
        why = "deleted" if annotation is None else "cancelled"
        log.info("annotation %s is %s: its live acceptance record %s", annotation_id, why,
                 f"under {gone} removed" if gone else "did not exist")
        return {"annotation": annotation_id, "skipped": f"annotation {why}", "removed_from": gone}
    task_id = int(annotation.get("task") or task_id)
    predictions = call(f"read the predictions of task {task_id}", task_predictions, client, task_id)
    versions = {v.version for v in registry.versions()}
    prediction = pre_label(annotation, predictions, versions)
    if prediction is None:
        log.info("annotation %s (task %s): no pre-label of a registry version to compare with", annotation_id, task_id)
        return {"annotation": annotation_id, "task": task_id, "skipped": "no pre-label of a registry version"}
    progress.update(force=True, stage="comparing", version=prediction["model_version"])
    counts = compare(annotation.get("result") or [], prediction.get("result") or [])
    record = {**counts, "project": project_id or annotation.get("project"), "task": task_id,
              "prediction": prediction.get("id"), "annotation_updated_at": annotation.get("updated_at"), "at": now()}
    summary = registry.record_acceptance(prediction["model_version"], annotation_id, record)
    log.info("annotation %s (task %s) against %s: %s; the version's acceptance now rests on %d annotation(s)",
             annotation_id, task_id, prediction["model_version"], counts, summary["annotations"])
    result = {"annotation": annotation_id, "task": task_id, "version": prediction["model_version"],
              "counts": counts, "acceptance": summary}
    progress.update(force=True, stage="done", result=result)
    return result


def forget_annotation(annotation_ids: list[int]) -> dict:
    """Removes the live acceptance records of deleted annotations.

    Returns:
        ``{"removed": {annotation id: version}}`` for those that had a record.
    """
    registry = _registry(Settings.from_env())
    removed = {}
    for annotation_id in annotation_ids:
        version = registry.forget_acceptance(annotation_id)
        if version:
            removed[int(annotation_id)] = version
    log.info("deleted annotations %s: records removed %s", annotation_ids, removed)
    return {"removed": removed}
