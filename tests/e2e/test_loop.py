"""The retraining loop end to end, with real processes: Label Studio 1.23.2, Redis, `shoeseg worker`, `shoeseg serve`.

Nothing is mocked here. Label Studio calls the backend's /webhook (connected as an ML backend), the backend
asks ``shoeseg_services.trigger`` to queue training, a worker process trains a tiny model on CPU, promotes it and
pushes predictions back; the tests read the outcome from Label Studio, Redis and the model registry.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry

from shoeseg_app.stack.redis import RedisServer
from shoeseg_app.stack.service import free_port
from shoeseg_services import trigger
from shoeseg_services.queues import TRAIN_QUEUE
from shoeseg_services.settings import Settings
from tests.e2e.stack import BIN, FIXTURES, N_TASKS, REPO, TINY, Loop, Process, descendants, health, wait_for  # noqa: F401
from tests.synth import make_images

pytestmark = pytest.mark.e2e

@pytest.fixture(scope="module")
def loop(label_studio, ls_client, redis_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    lp = Loop(ls=label_studio, client=ls_client, redis_server=redis_server, root=root)
    try:
        lp.start_backend()
        lp.worker = lp.start_worker()
        # the project: generated images, two of them imported with their polygons as annotations
        from shoeseg_services.ls_api import import_dataset

        images_dir = Path(label_studio.files_root) / f"loop-{time.time_ns()}"
        ds = make_images(images_dir, N_TASKS, seed=1)
        lp.truth = {im.file_name: list(im.regions) for im in ds.images}
        for im in ds.images[2:]:
            im.regions = []
        res = import_dataset(ls_client, ds, images_dir=images_dir, title="loop e2e", files_root=label_studio.files_root)
        lp.project_id, lp.task_ids, lp.images_dir = res.project_id, res.task_ids, images_dir
        ml = ls_client.ml.create(project=lp.project_id, url=lp.backend_url, title="shoeseg", is_interactive=False)
        lp.ml_id = ml.id
        yield lp
    finally:
        lp.close()


def annotate(lp: Loop, file_name: str) -> int:
    """Adds an annotation through the API: the generated polygons of the image."""
    from via_tools.labelstudio import region_to_ls_results

    result = []
    for r in lp.truth[file_name]:
        result += region_to_ls_results(r, 80, 64, from_name="label", to_name="image")
    ann = lp.client.annotations.create(id=lp.task_ids[file_name], result=result, project=lp.project_id)
    return ann.id


def new_label(lp: Loop, file_name: str) -> int:
    """Re-annotates a task (a changed label, so the next training has something new) without reaching
    ``SHOESEG_MIN_NEW_ANNOTATIONS``: the webhook's count is cleared first and its +1 awaited."""
    lp.conn.set(trigger.count_key(lp.project_id), 0)
    ann = annotate(lp, file_name)
    wait_for("the webhook to count the annotation", lambda: trigger.training_state(lp.conn, lp.project_id)["count"] >= 1,
             timeout_s=30, every_s=0.2)
    return ann


def project_version(lp: Loop) -> str | None:
    return lp.client.projects.get(id=lp.project_id).model_version


def current_version(lp: Loop) -> str | None:
    from shoeseg_services.registry import ModelRegistry

    return ModelRegistry(lp.model_dir).current_version_id()


def predictions_of(lp: Loop, version: str) -> dict[int, float]:
    from shoeseg_services.ls_api import list_tasks

    out = {}
    for t in list_tasks(lp.client, lp.project_id):
        for p in t.get("predictions") or []:
            if p.get("model_version") == version:
                out[int(t["id"])] = p.get("score")
    return out


def wait_pushed(lp: Loop, *, after: str | None, timeout_s: float = 300) -> str:
    """Waits until a version other than ``after`` is current, in Label Studio, with a prediction for every task."""
    def done():
        v = current_version(lp)
        if v is None or v == after or project_version(lp) != v:
            return None
        return v if len(predictions_of(lp, v)) == N_TASKS else None

    return wait_for("a new version promoted and pushed to Label Studio", done, timeout_s=timeout_s, every_s=1,
                    logs=lp.logs())


def wait_idle(lp: Loop, timeout_s: float = 300) -> None:
    # (rq's started registry keeps a SIGKILLed job until its maintenance runs: the trigger state is the truth)
    def idle():
        st = trigger.training_state(lp.conn, lp.project_id)
        return st.get("state") in (None, "idle") and not Queue(TRAIN_QUEUE, connection=lp.conn).count
    wait_for("the training queue to drain", idle, timeout_s=timeout_s, every_s=1, logs=lp.logs())


@pytest.mark.slow
def test_new_annotations_lead_to_a_promoted_model_and_ordered_predictions(loop):
    from shoeseg.active_learning import score_images
    from shoeseg.predict import Predictor
    from shoeseg_services.registry import ModelRegistry
    from via_tools.images import read_image

    names = sorted(loop.task_ids)
    annotate(loop, names[2])
    annotate(loop, names[3])
    assert current_version(loop) is None
    t0 = time.perf_counter()
    last_annotation = annotate(loop, names[4])  # the third new annotation reaches SHOESEG_MIN_NEW_ANNOTATIONS
    version = wait_pushed(loop, after=None)
    seconds = time.perf_counter() - t0
    print(f"\nannotation -> predictions pushed: {seconds:.1f} s")

    v = ModelRegistry(loop.model_dir).get(version)
    annotated = sorted(loop.task_ids[n] for n in names[:5])
    assert v.meta["task_ids"] == annotated and v.meta["project"] == loop.project_id
    assert last_annotation in v.meta["annotation_ids"].values()
    assert "segm_AP" in v.metrics
    # The backend's /setup asked for a first model when the project was connected; that job may have run on
    # the annotations present by then and this version fine-tuned it as its follow-up.
    if v.parent is None:
        assert v.meta["decision"] == "no current version"
    else:
        first = ModelRegistry(loop.model_dir).get(v.parent)
        assert first.parent is None and first.meta["reason"] == trigger.FIRST_MODEL_REASON, first.meta

    # Label Studio orders by the active-learning score of this version: lowest (most informative) first
    query = json.dumps({"ordering": ["tasks:predictions_score"]})
    ordered = [t.id for t in loop.client.tasks.list(project=loop.project_id, query=query)]
    scores = predictions_of(loop, version)
    assert sorted(ordered) == sorted(scores)
    assert [scores[t] for t in ordered] == sorted(scores.values())
    # ... and those scores are the strategy's, recomputed here from the registered model
    predictor = Predictor.from_checkpoint(v.checkpoint, device="cpu")
    by_task = {tid: name for name, tid in loop.task_ids.items()}
    expected = score_images("least_confidence", predictor, [read_image(loop.images_dir / by_task[t]) for t in ordered])
    # Stored scores are rounded to 4 decimals, and the worker batched other images beside each one (another padded
    # size, so detection scores move in the 4th decimal); a different strategy would differ by far more.
    assert [scores[t] for t in ordered] == pytest.approx(expected, abs=5e-4)


@pytest.mark.slow
def test_start_training_from_label_studio(loop):
    # The annotation test returns once a version is pushed; a follow-up of that training (annotations that came
    # while it ran) may still be queued or running, and would answer the click below with its own reason.
    wait_idle(loop)
    before = current_version(loop)
    assert before is not None, "runs after the annotation test"
    new_label(loop, sorted(loop.task_ids)[0])  # a click with nothing new trains nothing
    loop.client.ml.train(id=loop.ml_id)  # Label Studio posts START_TRAINING to the backend's /webhook
    version = wait_pushed(loop, after=before)
    from shoeseg_services.registry import ModelRegistry

    v = ModelRegistry(loop.model_dir).get(version)
    assert v.parent == before and v.meta["reason"] == "START_TRAINING"
    assert project_version(loop) == version
    wait_idle(loop)


@pytest.mark.slow
def test_a_burst_of_200_webhooks_gives_one_queued_and_one_follow_up_job(loop):
    from shoeseg_services.registry import ModelRegistry

    wait_idle(loop)
    new_label(loop, sorted(loop.task_ids)[1])  # something new for the first run
    registry = ModelRegistry(loop.model_dir)
    n_before = len(registry.versions())
    seq_before = int(trigger.training_state(loop.conn, loop.project_id).get("seq") or 0)
    body = json.loads((FIXTURES / "webhook_annotation_created.json").read_text())["body"]
    body["project"]["id"] = loop.project_id
    start = {"action": "START_TRAINING", "project": {"id": loop.project_id}}
    seen = {"queued": 0, "started": 0}
    stop = threading.Event()

    def watch():
        q, started = Queue(TRAIN_QUEUE, connection=loop.conn), StartedJobRegistry(TRAIN_QUEUE, connection=loop.conn)
        while not stop.is_set():
            seen["queued"] = max(seen["queued"], q.count)
            seen["started"] = max(seen["started"], started.count)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    codes: list[int] = []
    with httpx.Client(base_url=loop.backend_url, timeout=30) as http, ThreadPoolExecutor(16) as pool:
        def post(i):
            return http.post("/webhook", json=start if i % 25 == 0 else body).status_code

        codes += pool.map(post, range(100))
        wait_for("the first job to run", lambda: trigger.training_state(loop.conn, loop.project_id).get("state")
                 == "running", timeout_s=120, every_s=0.1, logs=loop.logs())
        names = sorted(loop.task_ids)
        late = [annotate(loop, names[5]), annotate(loop, names[6])]  # while it runs
        codes += pool.map(post, range(100))
    assert codes == [200] * 200
    wait_idle(loop)
    stop.set()
    watcher.join()
    assert seen["queued"] <= 1 and seen["started"] <= 1, seen
    # the run and exactly one follow-up job; the follow-up trains only if the run read Label Studio before the
    # late annotations were made (otherwise it has nothing new and is not trained)
    assert int(trigger.training_state(loop.conn, loop.project_id)["seq"]) == seq_before + 2
    versions = registry.versions()
    assert len(versions) in (n_before + 1, n_before + 2)
    newest = versions[-1]
    assert len(versions) == n_before + 1 or "follow-up" in newest.meta["reason"]
    assert set(late) <= set(newest.meta["annotation_ids"].values())
    assert newest.meta["task_ids"] == sorted(loop.task_ids[n] for n in names[:7])


@pytest.mark.slow
def test_a_worker_killed_mid_training_leaves_the_current_version_and_the_next_worker_completes(loop):
    from shoeseg.predict import Predictor
    from shoeseg_services.registry import ModelRegistry

    wait_idle(loop)
    registry = ModelRegistry(loop.model_dir)
    new_label(loop, sorted(loop.task_ids)[2])  # something new to train on
    before, n_before = registry.current_version_id(), len(registry.versions())
    loop.worker.stop()
    slow = loop.start_worker("slow-worker", SHOESEG_TRAIN_ITERS="500")
    r = httpx.post(loop.backend_url + "/webhook", json={"action": "START_TRAINING", "project": {"id": loop.project_id}})
    assert r.status_code == 200 and r.json()["action"] == "queued", r.text
    job_id = r.json()["job_id"]
    wait_for("training to start", lambda: Job.fetch(job_id, connection=loop.conn).meta.get("stage") == "training",
             timeout_s=120, logs=loop.logs())
    time.sleep(2)
    assert descendants(slow.proc.pid), "the work horse runs"
    slow.kill(signal.SIGKILL)  # the worker and its work horse, mid-training

    assert registry.current_version_id() == before and len(registry.versions()) == n_before
    assert not [p for p in (loop.model_dir / "versions").iterdir() if not p.name.startswith(".")
                and not (p / "meta.json").is_file()]
    Predictor.from_checkpoint(registry.current().checkpoint, device="cpu")  # still loadable
    wait_for("the dead job's lease to run out",
             lambda: trigger.training_state(loop.conn, loop.project_id)["liveness"] == "none", timeout_s=30)
    loop.worker = loop.start_worker("worker-2")  # re-enqueues the lost training when it starts
    version = wait_pushed(loop, after=before)
    v = registry.get(version)
    assert v.parent == before and "recovery" in v.meta["reason"] and job_id in v.meta["reason"]
    wait_idle(loop)


@pytest.mark.slow
def test_redis_down_backend_serves_predictions_answers_503_and_recovers(loop, tmp_path):
    assert current_version(loop) is not None
    server = RedisServer(data_dir=tmp_path / "redis").start()
    port = free_port()
    backend = loop.start_backend(port=port, name="backend-redis", REDIS_URL=server.url)
    url = f"http://127.0.0.1:{port}"
    name = sorted(loop.task_ids)[0]
    task = {"id": loop.task_ids[name], "data": {"image": f"/data/local-files/?d={loop.images_dir.name}/{name}"}}
    label_config = loop.client.projects.get(id=loop.project_id).label_config
    predict_body = {"tasks": [task], "project": f"{loop.project_id}.1", "label_config": label_config, "params": {}}
    start = {"action": "START_TRAINING", "project": {"id": 999}}
    restarted = None
    try:
        server.stop()
        r = httpx.post(url + "/webhook", json=start, timeout=30)
        assert r.status_code == 503, r.text
        assert "Redis" in r.text and "does not answer" in r.text
        p = httpx.post(url + "/predict", json=predict_body, timeout=60)
        assert p.status_code == 200, p.text
        assert p.json()["results"][0]["model_version"] == current_version(loop)
        restarted = RedisServer(data_dir=tmp_path / "redis", port=server.port).start()  # same port; backend as is
        r = httpx.post(url + "/webhook", json=start, timeout=30)
        assert r.status_code == 200 and r.json()["action"] == "queued", r.text
    finally:
        backend.stop()
        server.stop()
        if restarted is not None:
            restarted.stop()


@pytest.mark.slow
def test_label_studio_down_gives_retries_then_a_failed_job_with_the_reason(loop):
    db_url = loop.redis_url.rsplit("/", 1)[0] + "/12"
    conn = redis.Redis.from_url(db_url)
    conn.flushdb()
    dead = f"http://127.0.0.1:{free_port()}"
    worker = loop.start_worker("worker-no-ls", REDIS_URL=db_url, LABEL_STUDIO_URL=dead)
    try:
        queued = trigger.request_training(conn, 5, reason="test", settings=Settings.from_env(TINY))
        job_id = queued["job_id"]

        def failed():
            return Job.fetch(job_id, connection=conn).get_status() == JobStatus.FAILED

        wait_for("the job to fail after its retries", failed, timeout_s=180, every_s=1, logs=(worker.log,))
        job = Job.fetch(job_id, connection=conn)
        assert job.meta["attempts"] == 3 and job.meta["transient"] is True
        assert f"cannot reach Label Studio at {dead}" in job.meta["error"]
        assert job_id in FailedJobRegistry(TRAIN_QUEUE, connection=conn).get_job_ids()
        assert "LabelStudioUnavailable" in job.latest_result().exc_string
    finally:
        worker.stop()
        conn.flushdb()
