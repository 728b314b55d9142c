"""Bounded work per request, proved on a real `shoeseg serve` process: memory, disconnects, duplicates."""

from __future__ import annotations

import base64
import io
import logging
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.e2e.backend_process import start_backend, stop_backend
from tests.helpers import POLYGON_CONFIG, jpeg_bytes, make_checkpoint

#: The bound on the backend's peak-RSS growth for 12 worst-case images in one request, measured at 584 MB
#: here (before bounding: 10.1 GB). Two full-size decodes at a time (SHOESEG_DECODE_WORKERS=2) of a 49 MP PNG
#: are 2 x 196 MB in Pillow's 4-byte RGB layout, plus what the heap keeps of them; JPEGs decode at 1/8 scale
#: and everything after the decode is at the model's input size.
PEAK_GROWTH_BOUND_MB = 700


def vm_hwm_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) / 1024


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


@pytest.fixture(scope="module")
def big_images(tmp_path_factory) -> Path:
    """Six 7000x7000 single-colour PNGs (about 62 KB each) and six 40-megapixel JPEGs, all different."""
    root = tmp_path_factory.mktemp("big-images")
    for i in range(6):
        Image.new("RGB", (7000, 7000), (20 * i, 90, 200 - 20 * i)).save(root / f"flat-{i}.png", optimize=True)
        Image.new("RGB", (7300, 5480), (200 - 20 * i, 40, 20 * i)).save(root / f"photo-{i}.jpg", quality=80)
    return root


@pytest.fixture(scope="module")
def bounded_backend(tmp_path_factory, big_images):
    from shoeseg_services.registry import ModelRegistry

    root = tmp_path_factory.mktemp("bounded")
    reg = ModelRegistry(root / "models")
    reg.register(make_checkpoint(root / "b.pt", version="b-v1", fg_logit=4.0, detections=3, seed=4,
                                 anchor_boxes=True),
                 metrics={}, parent=None, meta={})
    reg.promote("b-v1")
    backend = start_backend(root, registry_root=reg.root, env={
        "SHOESEG_IMAGE_ROOT": str(big_images), "SHOESEG_BATCH_SIZE": "4", "SHOESEG_RESULT_CACHE_SIZE": "0"})
    yield backend
    stop_backend(backend)


def body(urls: list[str]) -> dict:
    return {"tasks": [{"id": i + 1, "data": {"image": u}} for i, u in enumerate(urls)], "label_config": POLYGON_CONFIG}


@pytest.mark.slow
def test_worst_case_images_keep_peak_memory_bounded(bounded_backend, big_images):
    url = bounded_backend.url
    warm = httpx.post(f"{url}/predict", json=body(["data:image/jpeg;base64," + base64.b64encode(
        jpeg_bytes(64, 48)).decode()]), timeout=120)
    assert warm.status_code == 200
    before = vm_hwm_mb(bounded_backend.proc.pid)
    names = [f"flat-{i}.png" for i in range(6)] + [f"photo-{i}.jpg" for i in range(6)]
    r = httpx.post(f"{url}/predict", json=body(names), timeout=600)
    assert r.status_code == 200
    results = r.json()["results"]
    assert all("error" not in res for res in results), [res.get("error") for res in results]
    # regions are in the full images' coordinates (percent of the full size), not of what the model saw
    for res, size in ((results[:6], (7000, 7000)), (results[6:], (7300, 5480))):
        regions = [r for one in res for r in one["result"]]
        assert regions, f"no region on any of the {size} images"
        assert {(r["original_width"], r["original_height"]) for r in regions} == {size}
    growth = vm_hwm_mb(bounded_backend.proc.pid) - before
    logging.getLogger(__name__).info("peak RSS growth for 12 worst-case images: %.0f MB", growth)
    assert growth < PEAK_GROWTH_BOUND_MB, f"peak RSS grew by {growth:.0f} MB"


def test_a_client_that_disconnects_stops_the_work_within_one_batch(bounded_backend):
    url = bounded_backend.url
    rng = np.random.default_rng(0)
    uris = []
    for _ in range(60):  # 60 different images: no duplicate or cache shortcut
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(buf, format="JPEG")
        uris.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode())
    batches_before = metric(url, "shoeseg_backend_inference_seconds_count")
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{url}/predict", json=body(uris), timeout=httpx.Timeout(30, read=2.0))
    at_disconnect = metric(url, "shoeseg_backend_inference_seconds_count") - batches_before
    time.sleep(8)  # the whole request needs 15 batches; give any that still run the time to show
    after = metric(url, "shoeseg_backend_inference_seconds_count") - batches_before
    assert after <= at_disconnect + 2, (at_disconnect, after)  # the batch in flight, and the poll's delay
    assert after < 15
    assert "the client went away after" in bounded_backend.log_tail(20000)


def test_identical_images_are_inferred_once(app_client, media_server):
    client = app_client(result_cache_size=0, batch_size=4)
    uri = "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(80, 60, seed=3)).decode()
    before = _inferences(client)
    r = client.post("/predict", json=body([uri] * 40))
    assert r.status_code == 200
    results = r.json()["results"]
    assert len(results) == 40 and all(res["result"] == results[0]["result"] for res in results)
    assert results[0]["result"]
    assert _inferences(client) - before == 1


def _inferences(client: TestClient) -> float:
    text = client.get("/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("shoeseg_backend_inference_seconds_count"))


@pytest.mark.parametrize(("changes", "n_tasks", "message"), [
    ({"max_tasks_per_request": 5}, 6, "6 tasks in one request, over the limit of 5"),
    ({"max_request_pixels": 10_000}, 3, "more than 10000 pixels"),
])
def test_request_budgets_answer_413(app_client, changes, n_tasks, message):
    client = app_client(**changes)
    uris = ["data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(80, 60, seed=s)).decode() for s in range(n_tasks)]
    r = client.post("/predict", json=body(uris))
    assert r.status_code == 413 and message in r.json()["error"]
    assert client.get("/health").status_code == 200


def test_many_identical_failures_are_logged_once_with_a_count(app_client, caplog):
    client = app_client()
    with caplog.at_level(logging.ERROR, logger="backend.model"):
        r = client.post("/predict", json=body([f"https://not-allowed.example/{i}.jpg" for i in range(30)]))
    assert r.status_code == 200 and all("error" in res for res in r.json()["results"])
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "backend.model" and rec.levelno >= logging.ERROR]
    assert len(lines) == 1 and lines[0].startswith("30 tasks: image is on not-allowed.example:443"), lines


@pytest.mark.parametrize(("project", "field"), [
    ({"id": True}, "project.id"), ({"id": 1.9}, "project.id"), ({"id": -3}, "project.id"), ({"id": "1x"}, "project.id"),
    (True, "project"), (0, "project"), ("", "project"), ([1], "project"), ({"id": {"id": 1}}, "project.id"),
])
def test_webhook_project_ids_are_validated_before_the_queue(app_client, project, field):
    client = app_client(redis_url=None)  # no queue at all: a bad body must still be named, not answered 503
    r = client.post("/webhook", json={"action": "START_TRAINING", "project": project})
    assert r.status_code == 422 and f"{field} must be a positive integer project id" in r.json()["error"], r.text


@pytest.mark.parametrize("project", [{"id": 7}, {"id": "7"}, 7, "7"])
def test_webhook_good_project_ids_reach_the_queue(app_client, project):
    r = app_client(redis_url=None).post("/webhook", json={"action": "START_TRAINING", "project": project})
    assert r.status_code == 503 and "REDIS_URL" in r.json()["error"]
