"""Live acceptance's queueing and the choice of the pre-label an annotation started from (the comparison
against a real Label Studio is in tests/e2e/test_acceptance.py)."""

from __future__ import annotations

from rq import Queue
from rq.job import Job

from shoeseg_services.predict_queue import ACCEPTANCE_JOB, FORGET_ACCEPTANCE_JOB, request_acceptance
from shoeseg_services.queues import PREDICT_QUEUE
from shoeseg_services.settings import Settings
from tests.helpers import fixture_body
from worker.acceptance import pre_label

PREDS = [
    {"id": 1, "model_version": "v1", "created_at": "2025-01-01T00:00:00Z"},
    {"id": 2, "model_version": "v2", "created_at": "2025-01-02T00:00:00Z"},
    {"id": 3, "model_version": "someone-else", "created_at": "2025-01-02T12:00:00Z"},
    {"id": 4, "model_version": "v3", "created_at": "2025-01-05T00:00:00Z"},
]
OURS = {"v1", "v2", "v3"}


def test_the_parent_prediction_wins_then_the_newest_of_ours_made_before_the_annotation():
    assert pre_label({"parent_prediction": 1, "created_at": "2025-01-03T00:00:00Z"}, PREDS, OURS)["id"] == 1
    assert pre_label({"parent_prediction": None, "created_at": "2025-01-03T00:00:00Z"}, PREDS, OURS)["id"] == 2
    assert pre_label({"created_at": "2024-12-31T00:00:00Z"}, PREDS, OURS) is None
    assert pre_label({"parent_prediction": 3, "created_at": "2025-01-03T00:00:00Z"}, PREDS, OURS)["id"] == 2
    assert pre_label({"created_at": "2025-01-06T00:00:00Z"}, PREDS, {"v1"})["id"] == 1


def test_annotation_events_queue_one_small_job_by_import_path(redis_conn):
    body = fixture_body("webhook_annotation_created.json")
    (job_id,) = request_acceptance(redis_conn, body, settings=Settings())
    job = Job.fetch(job_id, connection=redis_conn)
    assert job.func_name == ACCEPTANCE_JOB and job.origin == PREDICT_QUEUE
    assert job.args == (body["project"]["id"], body["task"]["id"], body["annotation"]["id"])
    updated = {**body, "action": "ANNOTATION_UPDATED"}
    # an update while that job still waits is served by it (the job reads the annotation when it runs)
    assert request_acceptance(redis_conn, updated, settings=Settings()) == [job_id]
    deleted = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 4}, {"id": 5}], "project": {"id": 1}}
    (forget,) = request_acceptance(redis_conn, deleted, settings=Settings())
    job = Job.fetch(forget, connection=redis_conn)
    assert job.func_name == FORGET_ACCEPTANCE_JOB and job.args == ([4, 5],)
    for other in ({"action": "START_TRAINING", "project": {"id": 1}}, {"action": "ANNOTATION_CREATED"}):
        assert request_acceptance(redis_conn, other, settings=Settings()) == []
    assert Queue(PREDICT_QUEUE, connection=redis_conn).count == 2

