"""The ML backend through its HTTP interface, with the request bodies Label Studio 1.23.2 really sends."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from backend.app import create_app
from backend.model import NO_MODEL_VERSION
from shoeseg_services.settings import Settings
from tests.helpers import (
    ALL_CONTROLS_CONFIG,
    FIXTURES,
    POLYGON_CONFIG,
    fixture_body,
    new_registry,
    setup_body,
)


@pytest.fixture(scope="module")
def client(registry, media_server):
    """One started app for the tests that do not change settings (the model loads once)."""
    # least_confidence (not the default flip_consistency): the task score is then a known answer, the best region's
    settings = Settings(model_dir=registry.root, device="cpu", fetch_timeout_s=2.0, reload_interval_s=0.0,
                        batch_size=2, label_studio_url=media_server.url, al_strategy="least_confidence",
                        allowed_hosts=(f"127.0.0.1:{media_server.port}",))
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        assert c.post("/setup", json=setup_body(media_server)).status_code == 200
        yield c


def metric(client, name: str, **labels) -> float:
    text = client.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def check_polygon_result(r: dict, *, width_px: int, height_px: int, label: str = "shoe", from_name: str = "label"):
    assert r["type"] == "polygonlabels" and r["from_name"] == from_name and r["to_name"] == "image"
    assert (r["original_width"], r["original_height"]) == (width_px, height_px)
    points = np.asarray(r["value"]["points"], float)
    assert points.ndim == 2 and points.shape[1] == 2 and len(points) >= 3
    assert (points >= -1e-6).all() and (points <= 100 + 1e-6).all()
    assert r["value"]["closed"] is True and r["value"]["polygonlabels"] == [label]
    assert 0.0 <= r["score"] <= 1.0


# --- health, setup, versions ------------------------------------------------------------------------------

def test_health(client):
    recorded = json.loads((FIXTURES / "health.json").read_text())
    body = client.request(recorded["method"], recorded["path"]).json()
    assert body == {"status": "UP", "model_class": "ShoeSegModel", "model_version": "test-v1",
                    "model_loaded": True, "device": "cpu", "reason": None, "training": None}  # no Redis here


@pytest.mark.parametrize("name", ["setup.json", "setup_2.json"])
def test_setup_with_recorded_bodies(client, media_server, name):
    body = fixture_body(name)
    body["hostname"] = media_server.url
    r = client.post("/setup", json=body)
    assert r.status_code == 200
    assert r.json() == {"model_version": "test-v1", "labels": {"label": ["shoe"]}}


@pytest.mark.parametrize(("schema", "message"), [
    ('<View><Image name="image" value="$image"/><RectangleLabels name="b" toName="image">'
     '<Label value="shoe"/></RectangleLabels></View>', "no <PolygonLabels>"),
    ('<View><Text name="t" value="$text"/></View>', "no <Image"),
    ('<View><Image name="image" value="$image"/><PolygonLabels name="l" toName="image">'
     '<Label value="Cat"/><Label value="Dog"/></PolygonLabels></View>', "match none of the labels"),
    ("not xml at all", "not valid XML"),
])
def test_setup_refuses_configs_it_cannot_serve(client, media_server, schema, message):
    r = client.post("/setup", json=setup_body(media_server, schema=schema))
    assert r.status_code == 400
    assert message in r.json()["error"]


def test_versions_lists_the_registry(client):
    r = client.request("GET", "/versions", json={"project": "1.1795626459"})  # Label Studio sends a body
    assert r.status_code == 200
    body = r.json()
    assert body["versions"] == ["test-v1", "test-v2"] and body["current"] == "test-v1"
    assert [d["status"] for d in body["details"]] == ["promoted", "candidate"]


# --- predict ----------------------------------------------------------------------------------------------

def test_predict_recorded_body(client):
    r = client.post("/predict", json=fixture_body("predict.json"))
    assert r.status_code == 200
    body = r.json()
    assert body["model_version"] == "test-v1"
    assert len(body["results"]) == 2
    sizes = [(96, 64), (80, 120)]  # task 2 (upload) and task 3 (local files), in request order
    for task_result, (w, h) in zip(body["results"], sizes, strict=True):
        assert task_result["model_version"] == "test-v1" and "error" not in task_result
        assert task_result["result"], "the biased test model finds shoes in every image"
        for region in task_result["result"]:
            check_polygon_result(region, width_px=w, height_px=h)
        # the task score is the active-learning score (least confidence here): the best candidate's score
        region_scores = [reg["score"] for reg in task_result["result"]]
        assert task_result["score"] == pytest.approx(max(region_scores), abs=1e-3)


def test_the_checkpoints_serving_threshold_is_served_unless_the_setting_overrides_it(app_client, tmp_path,
                                                                                   media_server):
    from shoeseg_services.registry import ModelRegistry
    from tests.helpers import make_checkpoint

    # the model finds one shoe per image at a score below 0.999; say training chose 0.999 for it
    ckpt = make_checkpoint(tmp_path / "t.pt", version="thresh-v1", fg_logit=1.0, detections=1, seed=2,
                           serve_score_thresh=0.999)
    reg = ModelRegistry(tmp_path / "models")
    reg.register(ckpt, metrics={}, parent=None, meta={})
    reg.promote("thresh-v1")
    served = {}
    for name, thresh in (("checkpoint's", None), ("setting's", 0.5)):
        client = app_client(reg.root, score_thresh=thresh)
        assert client.post("/setup", json=setup_body(media_server)).status_code == 200
        body = client.post("/predict", json=fixture_body("predict.json")).json()
        served[name] = [len(r["result"]) for r in body["results"]]
    assert served == {"checkpoint's": [0, 0], "setting's": [1, 1]}


def _server_timing(response) -> dict[str, float]:
    """``{stage: ms}`` from a response's ``Server-Timing`` header, checked to be W3C's ``name;dur=ms`` list."""
    out = {}
    for part in response.headers["server-timing"].split(", "):
        name, dur = part.split(";dur=")
        out[name] = float(dur)
    return out


def test_predict_says_where_its_time_went_in_server_timing(app_client, media_server):
    client = app_client()  # a service of its own: nothing in its result cache
    assert client.post("/setup", json=setup_body(media_server)).status_code == 200
    body = fixture_body("predict.json")
    t0 = time.perf_counter()
    r = client.post("/predict", json=body)
    wall_ms = (time.perf_counter() - t0) * 1000
    assert r.status_code == 200 and all(t["result"] for t in r.json()["results"])
    stages = _server_timing(r)
    assert list(stages) == ["fetch", "decode", "model", "regions", "total"]
    assert all(v >= 0 for v in stages.values())
    assert stages["model"] > 0 and stages["regions"] > 0
    # the stages run one after another inside the total, which runs inside the client's round trip
    assert sum(v for k, v in stages.items() if k != "total") <= stages["total"] + 0.5
    assert stages["total"] <= wall_ms
    again = _server_timing(client.post("/predict", json=body))  # every image from the cache: no forward
    assert "model" not in again and set(again) <= {"fetch", "decode", "regions", "total"}


def test_second_request_is_served_from_the_cache(client):
    body = fixture_body("predict.json")
    first = client.post("/predict", json=body).json()
    hits = metric(client, "shoeseg_backend_result_cache_total", outcome="hit")
    forwards = metric(client, "shoeseg_backend_inference_seconds_count")
    second = client.post("/predict", json=body).json()
    assert metric(client, "shoeseg_backend_result_cache_total", outcome="hit") == hits + 2
    assert metric(client, "shoeseg_backend_inference_seconds_count") == forwards
    assert second == first


def test_a_bad_image_empties_only_its_task(client, media_server, caplog):
    good = {"id": 20, "data": {"image": "/data/upload/1/3c053945-img1.jpg"}}
    tasks = [
        {"id": 21, "data": {"image": "/data/local-files/?d=imgs/corrupt.jpg"}},
        good,
        {"id": 22, "data": {"image": "/data/upload/1/missing.jpg"}},
        {"id": 23, "data": {"image": "http://203.0.113.9/a.jpg"}},
        {"id": 24, "data": {"text": "no image key"}},
        {"id": 25, "data": {"image": f"http://127.0.0.1:{media_server.port}/slow?s=4"}},
    ]
    with caplog.at_level(logging.ERROR, logger="backend"):
        r = client.post("/predict", json={"tasks": tasks, "label_config": POLYGON_CONFIG, "project": "1.1795626459"})
    assert r.status_code == 200
    results = r.json()["results"]
    assert len(results) == len(tasks)
    assert results[1]["result"] and "error" not in results[1]
    expected = {0: "not a readable image", 2: "HTTP 404", 3: "not in SHOESEG_ALLOWED_HOSTS",
                4: "no image URL", 5: "timed out"}
    for i, message in expected.items():
        task_id = tasks[i]["id"]
        assert results[i]["result"] == [] and results[i]["score"] == 0.0
        assert results[i]["error"].startswith(f"task {task_id}: ") and message in results[i]["error"]
        assert any(f"task {task_id}: " in rec.getMessage() for rec in caplog.records)


def test_all_controls_are_served(client):
    from label_studio_sdk.converter.brush import decode_rle

    body = fixture_body("predict.json")
    body["label_config"] = ALL_CONTROLS_CONFIG
    body["tasks"] = body["tasks"][:1]
    results = client.post("/predict", json=body).json()["results"][0]["result"]
    by_type = {}
    for r in results:
        by_type.setdefault(r["type"], []).append(r)
    assert set(by_type) == {"polygonlabels", "rectanglelabels", "brushlabels"}
    assert len(by_type["polygonlabels"]) >= len(by_type["rectanglelabels"]) == len(by_type["brushlabels"])
    for r in by_type["polygonlabels"]:
        check_polygon_result(r, width_px=96, height_px=64)
    for r in by_type["rectanglelabels"]:
        v = r["value"]
        assert r["from_name"] == "box" and v["rectanglelabels"] == ["Shoe"]
        assert 0 <= v["x"] and v["x"] + v["width"] <= 100 + 1e-6 and 0 <= v["y"] and v["y"] + v["height"] <= 100 + 1e-6
    for r in by_type["brushlabels"]:
        assert r["from_name"] == "brush" and r["value"]["brushlabels"] == ["footwear"]
        mask = decode_rle(r["value"]["rle"]).reshape(64, 96, 4)[:, :, 3]
        assert mask.any()


def test_interactive_rectangle_gives_the_shoe_inside_it(client):
    body = fixture_body("predict.json")
    body["tasks"] = body["tasks"][:1]
    box = {"x": 25.0, "y": 20.0, "width": 50.0, "height": 60.0}
    body["params"]["context"] = {"result": [{
        "original_width": 96, "original_height": 64, "image_rotation": 0, "from_name": "label", "to_name": "image",
        "type": "rectanglelabels", "origin": "manual",
        "value": {**box, "rotation": 0, "rectanglelabels": ["shoe"]},
    }]}
    r = client.post("/predict", json=body)
    (task_result,) = r.json()["results"]
    (region,) = task_result["result"]
    check_polygon_result(region, width_px=96, height_px=64)
    pts = np.asarray(region["value"]["points"])
    tol = 100 / 64 + 1  # one pixel, in percent
    assert pts[:, 0].min() >= box["x"] - tol and pts[:, 0].max() <= box["x"] + box["width"] + tol
    assert pts[:, 1].min() >= box["y"] - tol and pts[:, 1].max() <= box["y"] + box["height"] + tol
    assert task_result["score"] == region["score"]


def test_model_is_loaded_once(client):
    client.post("/predict", json=fixture_body("predict.json"))
    assert metric(client, "shoeseg_backend_model_loads_total", outcome="loaded") == 1


def test_metrics_text(client):
    client.get("/health")
    text = client.get("/metrics").text
    assert 'shoeseg_backend_requests_total{method="GET",route="/health",status="200"}' in text
    assert "shoeseg_backend_request_latency_seconds_bucket" in text
    assert 'shoeseg_backend_model_info{version="test-v1"} 1.0' in text


# --- errors -----------------------------------------------------------------------------------------------

def test_validation_errors_are_short(client):
    r = client.post("/predict", json={"tasks": "not a list"})
    assert r.status_code == 422
    assert r.json()["error"].startswith("invalid request: tasks:")


def test_internal_errors_have_no_traceback(client, monkeypatch):
    def boom():
        raise RuntimeError("secret internals /srv/path")

    monkeypatch.setattr(client.app.state.model, "versions", boom)
    r = client.get("/versions")
    assert r.status_code == 500
    assert re.fullmatch(r"internal error \(ref [0-9a-f]{12}\); see the backend log", r.json()["error"])
    assert "Traceback" not in r.text and "secret" not in r.text


def test_request_size_limit(app_client):
    c = app_client(max_request_bytes=2000)
    body = fixture_body("predict.json")
    assert c.post("/predict", json={**body, "tasks": body["tasks"] * 4}).status_code == 413
    r = c.post("/predict", content=b"x" * 5000, headers={"content-type": "application/json",
                                                          "transfer-encoding": "chunked"})
    assert r.status_code == 413 and "byte limit" in r.json()["error"]


def test_basic_auth(app_client, media_server):
    c = app_client(basic_auth_user="ls", basic_auth_pass="s3cret")
    assert c.get("/health").status_code == 200
    r = c.post("/setup", json=setup_body(media_server))
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    assert c.post("/setup", json=setup_body(media_server), auth=("ls", "wrong")).status_code == 401
    assert c.post("/setup", json=setup_body(media_server), auth=("ls", "s3cret")).status_code == 200
    assert c.get("/metrics", auth=("ls", "s3cret")).status_code == 200


# --- model lifecycle --------------------------------------------------------------------------------------

def test_no_trained_model_yet(app_client, tmp_path, media_server):
    c = app_client(tmp_path / "empty-registry")
    health = c.get("/health").json()
    assert health["model_loaded"] is False and health["model_version"] == NO_MODEL_VERSION
    assert "no trained model yet" in health["reason"]
    assert c.post("/setup", json=setup_body(media_server)).json()["model_version"] == NO_MODEL_VERSION
    body = c.post("/predict", json=fixture_body("predict.json")).json()
    assert body["model_version"] == NO_MODEL_VERSION
    assert body["results"] == [{"result": [], "score": 0.0, "model_version": NO_MODEL_VERSION}] * 2
    assert c.get("/versions").json() == {"versions": [], "current": None, "details": []}


def test_the_task_score_counts_candidates_under_the_drawing_threshold(app_client, media_server):
    # nothing is drawn over a threshold of 1.01, but the task score is the active-learning score of every
    # candidate (least confidence: the best one's score), the same whatever the drawing threshold
    drawn = app_client(al_strategy="least_confidence")
    drawn.post("/setup", json=setup_body(media_server))
    body = fixture_body("predict.json")
    body["tasks"] = body["tasks"][:1]
    (shown,) = drawn.post("/predict", json=body).json()["results"]
    c = app_client(score_thresh=1.01, al_strategy="least_confidence")
    c.post("/setup", json=setup_body(media_server))
    (result,) = c.post("/predict", json=body).json()["results"]
    assert result["result"] == [] and result["model_version"] == "test-v1"
    assert result["score"] == shown["score"] == max(r["score"] for r in shown["result"])


def test_newly_promoted_version_is_picked_up_without_restart(app_client, checkpoints, tmp_path, media_server):
    reg = new_registry(tmp_path / "registry", checkpoints, promote="test-v1")
    c = app_client(reg.root)
    c.post("/setup", json=setup_body(media_server))
    body = fixture_body("predict.json")
    body["tasks"] = body["tasks"][:1]
    before = c.post("/predict", json=body).json()
    assert before["model_version"] == "test-v1" and len(before["results"][0]["result"]) == 3
    reg.promote("test-v2")
    deadline = time.monotonic() + 120
    while c.get("/health").json()["model_version"] != "test-v2":
        assert time.monotonic() < deadline, "the promoted version was not picked up"
        time.sleep(0.2)
    after = c.post("/predict", json=body).json()
    assert after["model_version"] == "test-v2" and after["results"][0]["model_version"] == "test-v2"
    (region,) = after["results"][0]["result"]  # test-v2 finds one shoe, with a lower score
    assert region["score"] < min(r["score"] for r in before["results"][0]["result"])
    assert c.post("/setup", json=setup_body(media_server)).json()["model_version"] == "test-v2"
    assert metric(c, "shoeseg_backend_model_loads_total", outcome="loaded") == 2


def test_a_broken_promoted_version_keeps_the_old_one(app_client, checkpoints, tmp_path, media_server):
    reg = new_registry(tmp_path / "registry", checkpoints, promote="test-v1")
    c = app_client(reg.root)
    Path(reg.get("test-v2").checkpoint).write_bytes(b"not a checkpoint")
    reg.promote("test-v2")
    deadline = time.monotonic() + 60
    while metric(c, "shoeseg_backend_model_loads_total", outcome="failed") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    health = c.get("/health").json()
    assert health["model_version"] == "test-v1" and health["model_loaded"] is True
