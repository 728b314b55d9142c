"""The newcomer's loop with real processes: a labelled import trains the first model with no click.

Label Studio 1.23.2, Redis, `shoeseg serve` and `shoeseg worker` run as processes; the import goes through
`shoeseg via import`. The test sees the first training start and finish on its own, the first version's
prediction on every task, one training for the import and the backend's /setup together, the training's
state in /health, and, after the next version, the superseded predictions gone while every annotation stays.
"""

from __future__ import annotations

import copy
import subprocess
import time

import httpx
import pytest
from rq import Queue

from shoeseg_services import trigger
from shoeseg_services.queues import TRAIN_QUEUE
from tests.e2e.stack import BIN, REPO, Loop, wait_for
from tests.synth import make_images
from via_tools.io import save

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

N_TASKS, N_LABELLED = 5, 3


@pytest.fixture(scope="module")
def newcomer(label_studio, ls_client, redis_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("newcomer")
    lp = Loop(ls=label_studio, client=ls_client, redis_server=redis_server, root=root, db=12)
    try:
        lp.start_backend()
        lp.worker = lp.start_worker()
        yield lp
    finally:
        lp.close()


def _predictions(lp: Loop) -> dict[int, list[dict]]:
    from shoeseg_services.ls_api import list_tasks

    return {int(t["id"]): list(t.get("predictions") or []) for t in list_tasks(lp.client, lp.project_id)}


def _current(lp: Loop) -> str | None:
    from shoeseg_services.registry import ModelRegistry

    return ModelRegistry(lp.model_dir).current_version_id()


def _pushed(lp: Loop, version: str) -> bool:
    preds = _predictions(lp)
    return len(preds) == N_TASKS and all(any(p.get("model_version") == version for p in ps) for ps in preds.values())


def test_a_labelled_import_trains_the_first_model_and_a_new_version_replaces_its_predictions(newcomer, label_studio):
    lp = newcomer
    images_dir = label_studio.files_root / f"newcomer-{time.time_ns()}"
    ds = make_images(images_dir, N_TASKS, seed=3)
    truth = [copy.deepcopy(im) for im in ds.images]
    for im in ds.images[N_LABELLED:]:
        im.regions = []
    via = lp.root / "via.json"
    save(ds, via, fmt="via2")
    t0 = time.perf_counter()
    out = subprocess.run(
        [str(BIN / "shoeseg"), "via", "import", str(via), "--images", str(images_dir), "--url", label_studio.url,
         "--api-key", label_studio.token, "--title", "newcomer e2e", "--files-root", str(label_studio.files_root)],
        cwd=REPO, env=lp.env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "first model: queued train-" in out.stdout, out.stdout
    project = [p for p in lp.client.projects.list(title="newcomer e2e") if p.title == "newcomer e2e"][0]
    lp.project_id = project.id
    # connecting the backend (its /setup asks too) adds no second training
    lp.client.ml.create(project=lp.project_id, url=lp.backend_url, title="shoeseg", is_interactive=False)

    first = wait_for("the first version's prediction on every task", lambda: (v := _current(lp)) and _pushed(lp, v)
                     and v, timeout_s=300, every_s=1, logs=lp.logs())
    print(f"\nimport -> first version's predictions on every task: {time.perf_counter() - t0:.1f} s")
    state = trigger.training_state(lp.conn, lp.project_id)
    assert state["seq"] == "1" and state["reason"] == trigger.FIRST_MODEL_REASON, state  # one training in all
    assert lp.client.projects.get(id=lp.project_id).model_version == first
    health = httpx.get(f"{lp.backend_url}/health", timeout=5).json()
    wait_for("/health to serve the first version", lambda: httpx.get(f"{lp.backend_url}/health", timeout=5).json()
             ["model_version"] == first, timeout_s=30)
    assert health["training"][str(lp.project_id)]["state"] in ("idle", "running")
    assert health["training"][str(lp.project_id)]["last_outcome"] in ("promoted", None)
    annotations = {t: len(lp.client.tasks.get(id=t).annotations or []) for t in _predictions(lp)}
    assert sorted(annotations.values()) == [0] * (N_TASKS - N_LABELLED) + [1] * N_LABELLED

    # the next version: its predictions are stored, the first version's are removed, annotations untouched
    wait_for("the queue to drain", lambda: not Queue(TRAIN_QUEUE, connection=lp.conn).count
             and trigger.training_state(lp.conn, lp.project_id).get("state") == "idle", timeout_s=120, logs=lp.logs())
    # a new label (a round with nothing new since the version it would fine-tune is not trained)
    from via_tools.labelstudio import region_to_ls_results

    labelled, unlabelled = truth[0], ds.images[N_LABELLED]
    from shoeseg_services.ls_api import list_tasks

    task_id = next(int(t["id"]) for t in list_tasks(lp.client, lp.project_id)
                   if t["data"].get("file_name") == unlabelled.file_name)
    result = [r for region in labelled.regions for r in region_to_ls_results(
        region, labelled.width_px, labelled.height_px, from_name="label", to_name="image")]
    lp.client.annotations.create(id=task_id, result=result, project=lp.project_id)
    annotations[task_id] = 1
    trigger.request_training(lp.conn, lp.project_id, reason="START_TRAINING")
    second = wait_for("a second version pushed", lambda: (v := _current(lp)) != first and v and _pushed(lp, v) and v,
                      timeout_s=300, every_s=1, logs=lp.logs())

    def only_second():
        preds = _predictions(lp)
        return all([p["model_version"] for p in ps] == [second] for ps in preds.values())

    wait_for("the superseded predictions to be removed", only_second, timeout_s=60, logs=lp.logs())
    assert {t: len(lp.client.tasks.get(id=t).annotations or []) for t in annotations} == annotations
    health = httpx.get(f"{lp.backend_url}/health", timeout=5).json()
    assert health["training"][str(lp.project_id)]["state"] in ("idle", "running")


def test_a_failed_training_shows_its_reason_in_health(newcomer):
    lp = newcomer
    wait_for("the queue to drain", lambda: trigger.training_state(lp.conn, 999).get("state") in (None, "idle"),
             timeout_s=60)
    trigger.request_training(lp.conn, 999, reason="a project that does not exist")

    def failed():
        entry = httpx.get(f"{lp.backend_url}/health", timeout=5).json()["training"].get("999") or {}
        return entry if entry.get("state") == "failed" else None

    entry = wait_for("project 999's training to fail", failed, timeout_s=120, every_s=1, logs=lp.logs())
    assert "999" in (entry.get("error") or "") and entry["job_id"].startswith("train-999-"), entry
