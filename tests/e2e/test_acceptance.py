"""Live acceptance, pre-labels that follow the served version, and the status page, with the real parts:
Label Studio 1.23.2, Redis, `shoeseg worker` and `shoeseg serve` (nothing mocked).

A project of four tiny generated images is pre-labelled by test-v1 (a random-weight model that finds three
full-box shoes per image); annotations made through the API reach the backend's /webhook, a worker compares
them with the pre-label and the registry records the result under test-v1. `shoeseg models promote` and
`rollback` then move every task's pre-label. Headless Chromium opens the status page of the running stack.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from shoeseg.acceptance import compare, summarize
from shoeseg_app.stack.service import free_port
from shoeseg_services import predict_queue, trigger
from shoeseg_services.settings import Settings
from tests.e2e.stack import BIN, REPO, Loop, wait_for
from tests.synth import make_images

pytestmark = pytest.mark.e2e

N_TASKS = 4
EVIL = "<script>alert(1)</script>"
# no training here: annotations must only be measured (and no idle-time training either)
QUIET = {"SHOESEG_MIN_NEW_ANNOTATIONS": "1000", "SHOESEG_IDLE_TRAINING": "false", "SHOESEG_RETRY_MAX": "0"}


@pytest.fixture(scope="module")
def stack(label_studio, ls_client, redis_server, tmp_path_factory):
    from shoeseg_services.ls_api import import_dataset
    from shoeseg_services.registry import ModelRegistry
    from tests.helpers import make_checkpoint

    root = tmp_path_factory.mktemp("acceptance")
    lp = Loop(ls=label_studio, client=ls_client, redis_server=redis_server, root=root, db=9)
    lp.env.update(QUIET)
    lp.settings = Settings.from_env(lp.env)
    try:
        images_dir = Path(label_studio.files_root) / f"acceptance-{time.time_ns()}"
        ds = make_images(images_dir, N_TASKS, seed=5)
        for im in ds.images:
            im.regions = []
        res = import_dataset(ls_client, ds, images_dir=images_dir, title="acceptance e2e",
                             files_root=label_studio.files_root)
        lp.project_id, lp.task_ids = res.project_id, sorted(res.task_ids.values())
        lp.registry = ModelRegistry(lp.model_dir)
        for version, logit, n, seed in (("test-v1", 4.0, 3, 1), ("test-v2", 1.0, 1, 2)):
            ckpt = make_checkpoint(root / f"{version}.pt", version=version, fg_logit=logit, detections=n, seed=seed)
            lp.registry.register(ckpt, metrics={"segm_AP": {"test-v1": 0.31, "test-v2": 0.27}[version],
                                                "train_tasks": {"test-v1": 6, "test-v2": 11}[version]},
                                 meta={"project": lp.project_id, "kind": "round", "decision": "test"})
        lp.registry.promote("test-v1")
        lp.start_backend()
        lp.worker = lp.start_worker()
        ls_client.ml.create(project=lp.project_id, url=lp.backend_url, title="shoeseg", is_interactive=False)
        predict_queue.request_push(lp.conn, lp.project_id, "test-v1", settings=lp.settings, reason="e2e: first push")
        wait_for("test-v1's pre-label on every task", lambda: only_version(lp) == "test-v1", timeout_s=300,
                 logs=lp.logs())
        yield lp
    finally:
        lp.close()


def task_predictions(lp, task_id: int) -> list[dict]:
    return [p.model_dump(mode="json") for p in lp.client.predictions.list(task=task_id)]


def only_version(lp) -> str | None:
    """The one model version every task's predictions are of, else None."""
    seen = [{p["model_version"] for p in task_predictions(lp, t)} for t in lp.task_ids]
    return next(iter(seen[0])) if all(len(s) == 1 for s in seen) and len(set.union(*seen)) == 1 else None


def edited(pre: list[dict], *, shift_pct: float) -> list[dict]:
    """An annotator's work on a pre-label: the first shoe kept, the second moved, the rest deleted, one drawn."""
    out = []
    for k, r in enumerate(pre[:2]):
        value = dict(r["value"])
        if k == 1:
            value["points"] = [[min(100, x + shift_pct), min(100, y + shift_pct)] for x, y in value["points"]]
        out.append({key: r[key] for key in ("from_name", "to_name", "type", "original_width", "original_height")}
                   | {"id": f"ann{k}", "value": value})
    drawn = {**out[0], "id": "drawn", "value": {**out[0]["value"],
                                                "points": [[2, 2], [12, 2], [12, 10], [2, 10]]}}
    return out + [drawn]


def acceptance_of(lp, version: str) -> dict | None:
    details = httpx.get(f"{lp.backend_url}/versions", timeout=10).json()["details"]
    return next(d["acceptance"] for d in details if d["version"] == version)


def wait_acceptance(lp, version: str, expected: dict, what: str) -> dict:
    keys = [*expected]
    return wait_for(what, lambda: (a := acceptance_of(lp, version)) and {k: a[k] for k in keys} == expected and a,
                    timeout_s=180, logs=lp.logs())


@pytest.mark.slow
def test_acceptance_in_versions_is_what_the_test_computes_once_per_annotation_and_survives_a_restart(stack):
    lp = stack
    task_a, task_b = lp.task_ids[0], lp.task_ids[1]
    (pre_a,) = task_predictions(lp, task_a)
    (pre_b,) = task_predictions(lp, task_b)
    assert pre_a["model_version"] == "test-v1" and len(pre_a["result"]) >= 2, pre_a

    # task A: an annotation started from test-v1's pre-label, edited
    result_a = edited(pre_a["result"], shift_pct=4)
    ann_a = lp.client.annotations.create(id=task_a, result=result_a, project=lp.project_id)
    expected = summarize([compare(result_a, pre_a["result"])])
    assert expected["kept"] >= 1 and expected["annotations"] == 1
    keys = ["annotations", "kept", "moved", "deleted", "drawn", "vertices_changed", "predicted", "annotated"]
    wait_acceptance(lp, "test-v1", {k: expected[k] for k in keys}, "annotation A's acceptance in /versions")

    # updated again: its record is replaced, not added
    result_a2 = edited(pre_a["result"], shift_pct=15)
    lp.client.annotations.update(id=ann_a.id, result=result_a2)
    expected = summarize([compare(result_a2, pre_a["result"])])
    assert expected["annotations"] == 1
    wait_acceptance(lp, "test-v1", {k: expected[k] for k in keys}, "the updated annotation A replacing its record")

    # task B: every pre-labelled shoe accepted as it was
    lp.client.annotations.create(id=task_b, result=pre_b["result"], project=lp.project_id)
    expected = summarize([compare(result_a2, pre_a["result"]), compare(pre_b["result"], pre_b["result"])])
    assert expected["annotations"] == 2
    got = wait_acceptance(lp, "test-v1", {k: expected[k] for k in keys}, "annotations A and B in /versions")
    print(f"\nlive acceptance of test-v1: {got}")

    # a restart of the backend and the worker: still there
    for p in list(lp.processes):
        p.stop()
        lp.processes.remove(p)
    lp.start_backend()
    lp.worker = lp.start_worker()
    after = acceptance_of(lp, "test-v1")
    assert {k: after[k] for k in keys} == {k: expected[k] for k in keys}
    r = subprocess.run([str(BIN / "shoeseg"), "models", "list"], env=lp.env, cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    line = next(line for line in r.stdout.splitlines() if "test-v1" in line)
    assert f"({expected['annotations']} annotations: {expected['kept']}/{expected['moved']}/" in line, r.stdout


def _cli(lp, *args: str) -> str:
    r = subprocess.run([str(BIN / "shoeseg"), "models", *args], env=lp.env, cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.mark.slow
def test_promote_then_rollback_leaves_every_task_with_the_rolled_back_versions_prediction_only(stack):
    lp = stack
    out = _cli(lp, "promote", "test-v2")
    assert f"project {lp.project_id}: queued predict-{lp.project_id}-test-v2" in out, out
    wait_for("test-v2's pre-label only, on every task", lambda: only_version(lp) == "test-v2", timeout_s=300,
             logs=lp.logs())
    out = _cli(lp, "rollback")
    assert "current model: test-v1" in out and f"queued predict-{lp.project_id}-test-v1" in out, out
    wait_for("test-v1's pre-label only, on every task", lambda: only_version(lp) == "test-v1", timeout_s=300,
             logs=lp.logs())
    assert lp.client.projects.get(id=lp.project_id).model_version == "test-v1"
    # annotations are never touched by a push
    assert len(list(lp.client.annotations.list(id=lp.task_ids[0]))) in (0, 1)


@pytest.mark.browser
@pytest.mark.slow
def test_the_status_page_of_a_running_stack_in_a_browser(stack, browser, tmp_path):  # noqa: F811
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    from via_tools.labelstudio import labeling_config

    lp = stack
    # a project whose title is markup, whose training fails (its only image is on a host nobody allowed)
    evil = lp.client.projects.create(title=EVIL, label_config=labeling_config(["shoe"]))
    lp.client.projects.import_tasks(id=evil.id, request=[{"data": {"image": "http://not-allowed.invalid/x.png"}}])
    (task,) = list(lp.client.tasks.list(project=evil.id))
    lp.client.annotations.create(id=task.id, project=evil.id, result=[{
        "from_name": "label", "to_name": "image", "type": "polygonlabels", "original_width": 80,
        "original_height": 64, "value": {"points": [[10, 10], [50, 10], [50, 50]], "polygonlabels": ["shoe"]}}])
    job_id = trigger.request_training(lp.conn, evil.id, reason="START_TRAINING", settings=lp.settings)["job_id"]
    wait_for("the evil project's training to fail",
             lambda: trigger.overview(lp.conn).get(str(evil.id), {}).get("state") == "failed", timeout_s=180,
             logs=lp.logs())

    # a backend of the same stack with basic auth
    port = free_port()
    lp.start_backend(port=port, name="backend-auth", BASIC_AUTH_USER="lead", BASIC_AUTH_PASS="pa55-word")
    url = f"http://127.0.0.1:{port}/"
    refused = httpx.get(url, timeout=10)
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    browser.get(url)  # Chromium asks for credentials (headless: a blank page), and shows nothing of the page
    assert "test-v1" not in browser.page_source and not browser.find_elements(By.ID, "versions")
    token = base64.b64encode(b"lead:pa55-word").decode()
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})
    browser.get(url)
    deadline = time.monotonic() + 30
    while not browser.find_elements(By.ID, "versions") and time.monotonic() < deadline:
        time.sleep(0.3)
    browser.set_window_size(1400, 1400)
    shot = tmp_path / "status-page.png"
    browser.save_screenshot(str(shot))
    if os.environ.get("SHOESEG_SCREENSHOT_DIR"):
        target = Path(os.environ["SHOESEG_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shot = Path(shutil.copy(shot, target / shot.name))
    print(f"\nscreenshot: {shot}")

    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert  # noqa: B018 - the title's script never ran
    assert browser.find_element(By.ID, "served").text == "test-v1"
    rows = {r.get_attribute("data-version"): r for r in browser.find_elements(By.CSS_SELECTOR, "#versions tr[data-version]")}
    assert set(rows) == {"test-v1", "test-v2"}, f"versions table: {list(rows)} ({shot})"
    assert "0.310" in rows["test-v1"].text and "0.270" in rows["test-v2"].text
    acceptance = acceptance_of(lp, "test-v1")
    if acceptance:  # the first test of the module made some
        cells = rows["test-v1"].find_elements(By.CSS_SELECTOR, "td.num")
        assert [c.text for c in cells][-6:] == [str(acceptance[k]) for k in
                                                 ("annotations", "kept", "moved", "deleted", "drawn", "vertices_changed")]
    projects = {r.get_attribute("data-project"): r for r in browser.find_elements(By.CSS_SELECTOR, "#projects tr[data-project]")}
    assert projects[str(evil.id)].get_attribute("data-state") == "failed", projects[str(evil.id)].text
    assert projects[str(evil.id)].find_element(By.CSS_SELECTOR, ".title").text == EVIL  # shown as text
    assert "not-allowed.invalid" in projects[str(evil.id)].text and job_id in projects[str(evil.id)].text
    assert projects[str(lp.project_id)].find_element(By.CSS_SELECTOR, ".title").text == "acceptance e2e"
    # the plot: drawn, with AP points of both versions in both panels and test-v1's acceptance
    svg = browser.find_element(By.ID, "learning-curve")
    assert svg.size["width"] > 500 and svg.size["height"] > 200
    ap_points = browser.find_elements(By.CSS_SELECTOR, "#learning-curve .point.ap")
    assert sorted(p.get_attribute("data-version") for p in ap_points) == ["test-v1", "test-v1", "test-v2", "test-v2"]
    acc = browser.find_elements(By.CSS_SELECTOR, "#learning-curve .point.acceptance")
    assert {p.get_attribute("data-version") for p in acc} == ({"test-v1"} if acceptance else set())
    assert all(p.is_displayed() for p in ap_points + acc)
    assert shot.stat().st_size > 10_000
