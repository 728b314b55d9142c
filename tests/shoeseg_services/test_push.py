"""Pre-labels follow the served version: ``shoeseg_services.predict_queue.request_push`` and `shoeseg models promote|rollback`,
against a real Redis."""

from __future__ import annotations

import pytest
from rq import Queue
from rq.job import Job, JobStatus
from typer.testing import CliRunner

from shoeseg_app.cli import app
from shoeseg_services import predict_queue
from shoeseg_services.predict_queue import PREDICT_JOB
from shoeseg_services.queues import ON_FAILURE, PREDICT_QUEUE
from shoeseg_services.settings import Settings

runner = CliRunner()
SETTINGS = Settings(predict_timeout_s=123, retry_max=2, retry_intervals_s=(1, 5))


def _queued(conn) -> list[str]:
    return Queue(PREDICT_QUEUE, connection=conn).get_job_ids()


def test_the_push_is_the_workers_predict_job_with_its_options(redis_conn):
    job_id = predict_queue.request_push(redis_conn, 7, "v-2", settings=SETTINGS, reason="rollback", meta={"by": "me"})
    assert job_id == "predict-7-v-2" == predict_queue.push_job_id("7", "v-2")
    assert _queued(redis_conn) == [job_id]
    job = Job.fetch(job_id, connection=redis_conn)
    assert job.func_name == PREDICT_JOB
    assert job.args == (7,) and job.kwargs == {"version": "v-2"}
    assert (job.timeout, job.result_ttl, job.failure_ttl) == (123, 7 * 86400, 30 * 86400)
    assert (job.retries_left, job.retry_intervals) == (2, [1, 5])
    assert job._failure_callback_name == ON_FAILURE
    assert job.meta["project"] == 7 and job.meta["version"] == "v-2" and job.meta["reason"] == "rollback"
    assert job.meta["by"] == "me" and job.meta["requested_at"]
    assert "rollback" in job.description


def test_a_waiting_push_is_not_queued_twice_and_an_ended_one_runs_again(redis_conn):
    first = predict_queue.request_push(redis_conn, 3, "v-1", settings=SETTINGS)
    assert predict_queue.request_push(redis_conn, 3, "v-1", settings=SETTINGS) == first
    assert _queued(redis_conn) == [first]
    # the push ran and ended; a later rollback to v-1 pushes again
    job = Job.fetch(first, connection=redis_conn)
    Queue(PREDICT_QUEUE, connection=redis_conn).remove(job)
    job.set_status(JobStatus.FINISHED)
    assert predict_queue.request_push(redis_conn, 3, "v-1", settings=SETTINGS) == first
    assert _queued(redis_conn) == [first]
    assert Job.fetch(first, connection=redis_conn).get_status() == JobStatus.QUEUED
    # another project, another job
    assert predict_queue.request_push(redis_conn, 4, "v-1", settings=SETTINGS) == "predict-4-v-1"


@pytest.fixture
def registry(tmp_path):
    from shoeseg_services.registry import ModelRegistry
    from tests.helpers import make_checkpoint

    reg = ModelRegistry(tmp_path / "models")
    for version, projects in (("cli-v1", {"project": 5}), ("cli-v2", {"project": 5, "projects": [6]})):
        ckpt = make_checkpoint(tmp_path / f"{version}.pt", version=version, fg_logit=1.0, detections=1, seed=1)
        reg.register(ckpt, metrics={"segm_AP": 0.1}, meta=projects)
    reg.promote("cli-v1")
    return reg


def _redis_url(conn) -> str:
    kw = conn.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/{kw['db']}"


def test_promote_and_rollback_queue_the_served_versions_push_for_each_of_its_projects(registry, redis_conn,
                                                                                         monkeypatch):
    monkeypatch.setenv("REDIS_URL", _redis_url(redis_conn))
    r = runner.invoke(app, ["models", "promote", "cli-v2", "--registry", str(registry.root)])
    assert r.exit_code == 0, r.output
    assert "current model: cli-v2" in r.output and "queued predict-5-cli-v2" in r.output
    assert sorted(_queued(redis_conn)) == ["predict-5-cli-v2", "predict-6-cli-v2"]
    r = runner.invoke(app, ["models", "rollback", "--registry", str(registry.root)])
    assert r.exit_code == 0, r.output
    assert "current model: cli-v1" in r.output
    assert sorted(_queued(redis_conn)) == ["predict-5-cli-v1", "predict-5-cli-v2", "predict-6-cli-v2"]
    assert "rollback" in Job.fetch("predict-5-cli-v1", connection=redis_conn).meta["reason"]


def test_without_redis_url_the_cli_says_no_push_was_queued(registry, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    r = runner.invoke(app, ["models", "promote", "cli-v2", "--registry", str(registry.root)])
    assert r.exit_code == 0, r.output
    assert "REDIS_URL is not set: no push queued" in r.output and "5, 6" in r.output


def test_redis_down_says_the_promotion_happened_and_no_push_was_queued(registry, monkeypatch):
    from shoeseg_app.stack.service import free_port

    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    r = runner.invoke(app, ["models", "promote", "cli-v2", "--registry", str(registry.root)])
    assert r.exit_code == 2
    assert "cli-v2 is current, but Redis" in r.output and "no push queued" in r.output
    assert registry.current_version_id() == "cli-v2"


def test_models_list_shows_the_live_acceptance(registry):
    registry.record_acceptance("cli-v1", 3, {"kept": 4, "moved": 1, "deleted": 0, "drawn": 2, "vertices_changed": 6,
                                             "predicted": 5})
    r = runner.invoke(app, ["models", "list", "--registry", str(registry.root)])
    assert r.exit_code == 0, r.output
    line = next(line for line in r.output.splitlines() if "cli-v1" in line)
    assert "0.80 of 5 shoes kept (1 annotations: 4/1/0/2, 6 vertices)" in line
    r = runner.invoke(app, ["models", "list", "--json", "--registry", str(registry.root)])
    import json

    listed = {v["version"]: v for v in json.loads(r.output)}
    assert listed["cli-v1"]["acceptance"]["kept"] == 4 and listed["cli-v2"]["acceptance"] is None


def test_a_checkpoint_registered_by_hand_shows_the_annotators_numbers_its_training_measured(registry, tmp_path):
    from tests.helpers import make_checkpoint

    numbers = {"score_thresh": 0.5, "n_images": 4, "n_truth": 5, "matched_share": {"iou>=0.85": 0.6},
               "missed_per_image": 0.25, "false_positives_per_image": 0.0}
    ckpt = make_checkpoint(tmp_path / "cli-v4.pt", version="cli-v4", fg_logit=1.0, detections=1, seed=2,
                           metrics={"segm_AP": 0.3, "annotator": numbers})
    r = runner.invoke(app, ["models", "register", str(ckpt), "--registry", str(registry.root)])
    assert r.exit_code == 0, r.output
    assert registry.get("cli-v4").recorded("annotator") == numbers
    r = runner.invoke(app, ["models", "list", "--registry", str(registry.root)])
    line = next(line for line in r.output.splitlines() if "cli-v4" in line)
    assert "60 % within IoU 0.85, 0.25 to draw, 0.00 to delete / image (4 images, 5 shoes)" in line
    other = next(line for line in r.output.splitlines() if "cli-v1" in line.split()[:2])
    assert "within IoU" not in other  # its checkpoint recorded none


def test_models_list_shows_the_gates_evidence_and_what_a_chunk_trained_from(registry, tmp_path):
    from tests.helpers import make_checkpoint

    gate = {"promote": False, "reason": "worse", "diff": -0.0685, "ci_low": -0.1217, "ci_high": -0.023,
            "compared_on": 9}
    ckpt = make_checkpoint(tmp_path / "cli-v3.pt", version="cli-v3", fg_logit=1.0, detections=1, seed=1)
    registry.register(ckpt, metrics={"segm_AP": 0.2}, parent="cli-v1",
                      meta={"gate": gate, "current_version": "cli-v1", "trained_from": "cli-v2"})
    r = runner.invoke(app, ["models", "list", "--registry", str(registry.root)])
    assert r.exit_code == 0, r.output
    line = next(line for line in r.output.splitlines() if "cli-v3" in line)
    assert "-0.069 [-0.122, -0.023] on 9 images (from cli-v2)" in line
    assert "pre-labels on its validation images" in r.output.splitlines()[0]
    first = next(line for line in r.output.splitlines() if "cli-v1" in line.split()[:2])
    assert "from" not in first and "gate: difference" in r.output.splitlines()[0]
