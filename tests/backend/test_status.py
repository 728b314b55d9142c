"""The status page at ``/``: projects and their training, versions with AP, gate and live acceptance, the
learning curve; user text escaped; behind basic auth like every route but /health."""

from __future__ import annotations

import re

import pytest
from rq import Queue

from shoeseg_services import trigger
from shoeseg_services.queues import PREDICT_QUEUE
from shoeseg_services.registry import ModelRegistry
from shoeseg_services.settings import Settings
from tests.helpers import fixture_body

EVIL = "<script>alert(1)</script>"


@pytest.fixture
def status_registry(tmp_path, checkpoints):
    reg = ModelRegistry(tmp_path / "models")
    reg.register(checkpoints.v1, metrics={"segm_AP": 0.31, "train_tasks": 8, "val_tasks": 2}, parent=None,
                 meta={"project": 5, "decision": "no current version", "kind": "round"})
    reg.register(checkpoints.v2, metrics={"segm_AP": 0.42, "train_tasks": 18, "val_tasks": 3}, parent="test-v1",
                 meta={"project": 5, "decision": "promoted", "kind": "idle",
                       "gate": {"metric": "segm_AP", "compared_on": "3 images", "diff": 0.11, "ci_low": 0.02,
                                "ci_high": 0.2, "decision": "promote <b>now</b>"},
                       "annotator": {"score_thresh": 0.5, "n_images": 3, "n_truth": 4,
                                     "matched_share": {"iou>=0.5": 1.0, "iou>=0.75": 0.75, "iou>=0.85": 0.5},
                                     "missed_per_image": 0.0, "false_positives_per_image": 1 / 3}})
    reg.promote("test-v2")
    from tests.helpers import make_checkpoint

    v3 = make_checkpoint(tmp_path / "v3.pt", version="test-v3", fg_logit=1.0, detections=1, seed=3)
    reg.register(v3, metrics={"segm_AP": 0.40, "train_tasks": 18}, parent="test-v2",
                 meta={"project": 5, "kind": "idle",
                       "gate": {"promote": False, "reason": "the mean dropped by > 0.01", "metric": "segm_AP",
                                "compared_on": 3, "diff": -0.02, "ci_low": -0.05, "ci_high": 0.01}})
    reg.record_acceptance("test-v1", 11, {"kept": 3, "moved": 1, "deleted": 1, "drawn": 2, "vertices_changed": 4,
                                          "predicted": 5, "annotated": 6})
    return reg


@pytest.fixture
def titles(monkeypatch):
    import backend.status as status

    status._titles.clear()
    monkeypatch.setattr(status, "fetch_title", lambda model, pid: {5: EVIL, 6: "Sneakers & boots"}.get(pid))
    yield
    status._titles.clear()


def _redis_url(conn) -> str:
    kw = conn.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/{kw['db']}"


def test_the_page_shows_projects_versions_acceptance_and_the_curve(app_client, status_registry, titles, redis_conn):
    from rq.job import Job

    settings = Settings(retry_max=0)
    # project 5: its last training failed; project 6: training now
    failed = trigger.request_training(redis_conn, 5, reason="START_TRAINING", settings=settings)["job_id"]
    trigger.begin_training(redis_conn, 5, failed, lease_ttl_s=60)
    job = Job.fetch(failed, connection=redis_conn)
    job.meta["error"] = "ValueError: task 3 has a <polygon> with 2 points"
    job.save_meta()
    job.set_status("failed")
    trigger.finish_training(redis_conn, 5, failed, will_retry=False, outcome="error", settings=settings)
    running = trigger.request_training(redis_conn, 6, reason="10 new annotations", settings=settings)["job_id"]
    trigger.begin_training(redis_conn, 6, running, lease_ttl_s=60)
    job = Job.fetch(running, connection=redis_conn)
    job.meta.update(stage="training", iteration=5, iters=20)
    job.save_meta()

    c = app_client(status_registry.root, redis_url=_redis_url(redis_conn))
    r = c.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    # user text is text
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Sneakers &amp; boots" in page
    assert "<polygon>" not in page and "&lt;polygon&gt; with 2 points" in page
    assert "<b>now</b>" not in page and "promote &lt;b&gt;now&lt;/b&gt;" in page
    # the served version, the projects and their training
    assert re.search(r'id="served">test-v2<', page)
    assert re.search(r'data-project="5" data-state="failed"', page)
    assert re.search(r'data-project="6" data-state="running".*?training: iteration 5 / 20 \(25 %\)', page)
    # versions: AP, labels, gate with its interval, kind, acceptance
    row1 = re.search(r'<tr data-version="test-v1".*?</tr>', page).group(0)
    row2 = re.search(r'<tr data-version="test-v2".*?</tr>', page).group(0)
    assert "0.310" in row1 and ">8<" in row1 and "round" in row1 and "no current version" in row1
    assert [int(n) for n in re.findall(r'<td class="num">(\d+)</td>', row1)[-6:]] == [1, 3, 1, 1, 2, 4]
    assert "0.60" in row1  # kept share 3 / 5
    assert "0.420" in row2 and ">18<" in row2 and "idle" in row2 and "[+0.020, +0.200]" in row2 and "★" in row2
    assert "50 % within IoU 0.85, 0.00 to draw, 0.33 to delete / image (3 images, 4 shoes)" in row2
    assert re.search(r'<td class="prelabels"><span class="muted">–</span></td>', row1)  # none recorded
    row3 = re.search(r'<tr data-version="test-v3".*?</tr>', page).group(0)  # shoeseg.gate's own record
    assert "kept as a candidate" in row3 and "-0.020 [-0.050, +0.010] on 3 images" in row3
    assert "the mean dropped by &gt; 0.01" in row3
    # the curve: AP of every version in both panels, the validation shoes within IoU 0.85 of the one that
    # recorded them, acceptance of the one with annotations
    svg = re.search(r'<svg id="learning-curve".*?</svg>', page, re.S).group(0)
    assert len(re.findall(r'class="point ap" data-version="test-v[123]"', svg)) == 6
    assert re.findall(r'class="point kept" data-version="([^"]+)" data-value="([^"]+)"', svg) == \
        [("test-v2", "0.5000")] * 2
    assert re.findall(r'class="point acceptance" data-version="([^"]+)" data-value="([^"]+)"', svg) == \
        [("test-v1", "0.6000")] * 2
    assert "<script" not in page.replace("&lt;script", "")  # no script of our own either


def test_versions_json_carries_the_live_acceptance(app_client, status_registry):
    details = {d["version"]: d for d in app_client(status_registry.root).get("/versions").json()["details"]}
    assert details["test-v1"]["acceptance"]["annotations"] == 1
    assert details["test-v1"]["acceptance"]["kept_share"] == 0.6
    assert details["test-v2"]["acceptance"] is None


def test_versions_json_carries_the_gates_evidence_and_the_annotators_numbers(app_client, status_registry):
    details = {d["version"]: d for d in app_client(status_registry.root).get("/versions").json()["details"]}
    assert details["test-v3"]["gate"] == {"promote": False, "reason": "the mean dropped by > 0.01", "metric": "segm_AP",
                                          "compared_on": 3, "diff": -0.02, "ci_low": -0.05, "ci_high": 0.01}
    assert details["test-v2"]["annotator"]["matched_share"]["iou>=0.85"] == 0.5
    assert details["test-v2"]["annotator"]["n_images"] == 3
    assert details["test-v1"]["gate"] is None and details["test-v1"]["annotator"] is None


def test_records_that_are_not_what_the_worker_writes_are_shown_as_none_and_escaped(app_client, tmp_path, checkpoints,
                                                                                  titles):
    reg = ModelRegistry(tmp_path / "models")
    reg.register(checkpoints.v1, metrics={"segm_AP": 0.3}, parent=None, meta={"gate": "x", "annotator": [1]})
    reg.register(checkpoints.v2, metrics={"segm_AP": 0.3}, parent=None,
                 meta={"annotator": {"n_images": 2, "n_truth": EVIL, "matched_share": {"iou>=0.85": {"a": 1}}}})
    c = app_client(reg.root)
    details = {d["version"]: d for d in c.get("/versions").json()["details"]}
    assert details["test-v1"]["gate"] is None and details["test-v1"]["annotator"] is None
    page = c.get("/").text
    row1 = re.search(r'<tr data-version="test-v1".*?</tr>', page).group(0)
    row2 = re.search(r'<tr data-version="test-v2".*?</tr>', page).group(0)
    assert '<td class="prelabels"><span class="muted">–</span></td>' in row1
    assert "- % within IoU 0.85, - to draw, - to delete / image (2 images, &lt;script&gt;" in row2
    assert EVIL not in page


def test_the_curve_draws_two_versions_registered_in_one_second_with_the_same_ap():
    from backend.status import learning_curve_svg

    same = {"ap": 0.3, "acceptance": {"kept_share": 0.5}, "train_tasks": 8, "created_at": "2026-12-07T20:00:00+00:00"}
    svg = learning_curve_svg([{"version": "a", **same}, {"version": "b", **same}], served="b")
    assert svg.count('class="point ap"') == 4 and svg.count('class="point acceptance"') == 4  # two per panel
    assert re.findall(r'class="point ap" data-version="(\w)"', svg) == ["a", "b", "a", "b"]


def test_numbers_that_are_not_finite_read_as_none_in_versions_and_on_the_page(app_client, tmp_path, checkpoints,
                                                                                titles):
    nan, inf = float("nan"), float("inf")
    reg = ModelRegistry(tmp_path / "models")
    reg.register(checkpoints.v1, metrics={"segm_AP": nan, "bbox_AP": inf, "train_tasks": nan}, parent=None,
                 meta={"gate": {"diff": nan, "ci_low": -inf, "ci_high": nan, "compared_on": 0}})
    reg.register(checkpoints.v2, metrics={"segm_AP": 0.3, "train_tasks": 4}, parent="test-v1", meta={})
    reg.promote("test-v1")
    c = app_client(reg.root)
    r = c.get("/versions")
    assert r.status_code == 200
    first = r.json()["details"][0]
    assert first["metrics"] == {"segm_AP": None, "bbox_AP": None, "train_tasks": None}
    assert first["gate"]["diff"] is None and first["gate"]["ci_low"] is None
    page = c.get("/")
    assert page.status_code == 200 and "nan" not in page.text.lower() and "inf<" not in page.text
    assert re.findall(r'class="point ap" data-version="([\w-]+)"', page.text) == ["test-v2", "test-v2"]


def test_the_page_refuses_without_basic_auth_when_it_is_set(app_client, status_registry, titles):
    c = app_client(status_registry.root, basic_auth_user="lead", basic_auth_pass="s3cret")
    r = c.get("/")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    assert "test-v2" not in r.text
    assert c.get("/", auth=("lead", "wrong")).status_code == 401
    assert c.get("/", auth=("lead", "s3cret")).status_code == 200
    assert c.get("/health").status_code == 200


def test_the_page_answers_without_redis_and_without_versions(app_client, tmp_path, titles):
    page = app_client(tmp_path / "empty").get("/").text
    assert "REDIS_URL is not set" in page and "no version yet" in page and 'id="served">none<' in page


def test_the_webhook_queues_live_acceptance_beside_the_training_count(app_client, registry, redis_conn):
    kw = redis_conn.connection_pool.connection_kwargs
    c = app_client(registry.root, redis_url=f"redis://{kw['host']}:{kw['port']}/{kw['db']}")
    r = c.post("/webhook", json=fixture_body("webhook_annotation_created.json"))
    assert r.status_code == 200, r.text
    assert r.json()["action"] == "counted" and len(r.json()["acceptance_jobs"]) == 1
    r = c.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 1}], "project": {"id": 1}})
    assert r.status_code == 200 and r.json()["action"] == "acceptance" and len(r.json()["acceptance_jobs"]) == 1
    assert Queue(PREDICT_QUEUE, connection=redis_conn).count == 2


def test_a_burst_of_webhooks_for_one_annotation_queues_one_acceptance_job_while_it_waits(app_client, registry,
                                                                                         redis_conn):
    from shoeseg_services.predict_queue import acceptance_started

    kw = redis_conn.connection_pool.connection_kwargs
    c = app_client(registry.root, redis_url=f"redis://{kw['host']}:{kw['port']}/{kw['db']}")
    body = fixture_body("webhook_annotation_created.json")
    queue = Queue(PREDICT_QUEUE, connection=redis_conn)
    before = queue.count
    ids = {tuple(c.post("/webhook", json=body).json()["acceptance_jobs"]) for _ in range(5)}
    assert len(ids) == 1 and queue.count == before + 1  # five webhooks, one waiting job
    (job_id,) = ids.pop()
    acceptance_started(redis_conn, body["annotation"]["id"], job_id)  # the job starts: it may have read too early
    again = c.post("/webhook", json=body).json()["acceptance_jobs"]
    assert again != [job_id] and queue.count == before + 2
