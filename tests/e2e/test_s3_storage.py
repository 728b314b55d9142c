"""Beyond one machine, on S3: the model registry in a bucket and task images in S3 storage, end to end.

A real S3-compatible server (moto's, in its own process), Label Studio 1.23.2 with two S3 source storages
pointed at it (its ``s3_endpoint`` setting), and the backend as a real process (`shoeseg serve`) whose registry
is ``s3://<bucket>/models``:

* Label Studio sends the tasks' bare ``s3://`` URIs to ``/predict``; the backend reads the bucket named in
  ``SHOESEG_S3_BUCKETS`` with its own credentials and asks Label Studio to presign the other one (it follows
  the redirect to the S3 endpoint, an allowed host, without Label Studio's token);
* the worker's way (tasks listed from Label Studio's API, images through the shared fetcher) gets the same bytes;
* another process (`shoeseg models promote`) promotes a version and the running backend serves it without a
  restart, its checkpoint downloaded once into the backend's cache.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import subprocess
import sys
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.e2e.backend_process import BIN, fill_registry, start_backend, stop_backend
from tests.helpers import jpeg_bytes
from via_tools.labelstudio import labeling_config

pytestmark = pytest.mark.e2e

SIZES = {"direct/left.jpg": (96, 64), "direct/right.jpg": (64, 80), "presigned/pair.jpg": (72, 72)}


@contextlib.contextmanager
def aws_environ(server):
    """This process's AWS variables pointed at ``server`` for the block only (Label Studio never sees them)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    for k in saved:
        del os.environ[k]
    os.environ.update(server.env())
    try:
        yield
    finally:
        for k in [k for k in os.environ if k.startswith("AWS_")]:
            del os.environ[k]
        os.environ.update(saved)


@pytest.fixture(scope="module")
def buckets(s3_server):
    """(registry bucket, bucket read directly, bucket read through Label Studio's presigned URLs)."""
    registry, direct, presigned = (s3_server.new_bucket(n) for n in ("models", "direct", "presigned"))
    c = s3_server.client()
    for i, (key, (w, h)) in enumerate(SIZES.items()):
        bucket = direct if key.startswith("direct/") else presigned
        c.put_object(Bucket=bucket, Key=f"shoes/{key.split('/')[1]}", Body=jpeg_bytes(w, h, seed=20 + i),
                     ContentType="image/jpeg")
    return registry, direct, presigned


@pytest.fixture(scope="module")
def s3_registry(s3_server, buckets, tmp_path_factory):
    """``s3://<bucket>/models`` with test-v1 promoted and test-v2 registered (real models)."""
    from shoeseg_services.registry import ModelRegistry

    root = tmp_path_factory.mktemp("s3-models")
    with aws_environ(s3_server):
        return fill_registry(ModelRegistry(f"s3://{buckets[0]}/models", cache_dir=root / "uploader-cache"), root)


@pytest.fixture(scope="module")
def s3_backend(label_studio, s3_server, buckets, s3_registry, tmp_path_factory):
    logs = tmp_path_factory.mktemp("s3-backend")
    backend = start_backend(logs, registry_root=s3_registry.root, env={
        "LABEL_STUDIO_URL": label_studio.url, **s3_server.env(),
        "SHOESEG_S3_BUCKETS": buckets[1],  # the other image bucket goes through Label Studio
        "SHOESEG_ALLOWED_HOSTS": s3_server.host,  # where Label Studio's presigned URLs point
        "SHOESEG_CACHE_DIR": str(logs / "cache"),
    })
    backend.cache_dir = logs / "cache"
    yield backend
    stop_backend(backend)


def create_s3_storage(label_studio, project_id: int, bucket: str, s3_server) -> int:
    headers = {"Authorization": f"Token {label_studio.token}"}
    r = httpx.post(f"{label_studio.url}/api/storages/s3", headers=headers, timeout=60, json={
        "project": project_id, "title": bucket, "bucket": bucket, "prefix": "shoes", "regex_filter": r".*\.jpg",
        "use_blob_urls": True, "presign": True, "presign_ttl": 5, "region_name": "us-east-1",
        "s3_endpoint": s3_server.endpoint,
        "aws_access_key_id": s3_server.env()["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": s3_server.env()["AWS_SECRET_ACCESS_KEY"],
    })
    assert r.status_code == 201, r.text
    storage_id = r.json()["id"]
    r = httpx.post(f"{label_studio.url}/api/storages/s3/{storage_id}/sync", headers=headers, timeout=120)
    assert r.status_code == 200, r.text
    return storage_id


@pytest.fixture(scope="module")
def s3_project(label_studio, s3_server, buckets, s3_backend):
    """A project whose tasks come from the two image buckets, connected to the backend, predictions retrieved."""
    client = label_studio.client()
    project = client.projects.create(title="shoeseg s3 storage", label_config=labeling_config(["shoe"]))
    for bucket in buckets[1:]:
        create_s3_storage(label_studio, project.id, bucket, s3_server)
    deadline = time.monotonic() + 60
    while len(tasks := list(client.tasks.list(project=project.id))) < len(SIZES) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(tasks) == len(SIZES), [t.data for t in tasks]
    ml = client.ml.create(url=s3_backend.url, project=project.id, title="shoeseg", is_interactive=True)
    client.actions.create(id="retrieve_tasks_predictions", project=project.id,
                          selected_items={"all": True, "excluded": []})
    return project.id, ml.id, {t.id: t for t in tasks}


def storage_uri(url: str) -> str:
    """The ``s3://`` URI behind what Label Studio's API lists for a storage task: its own presign URL
    (``/tasks/<id>/presign/?fileuri=<base64 URI>``), or the URI itself."""
    if url.startswith("s3://"):
        return url
    query = parse_qs(urlsplit(url).query)
    assert "fileuri" in query, url
    encoded = query["fileuri"][0]
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()


def expected_size(uri: str, buckets) -> tuple[int, int]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return SIZES[("direct/" if bucket == buckets[1] else "presigned/") + key.split("/")[-1]]


def image_requests(s3_server, bucket: str) -> list[str]:
    """The request lines of GETs of ``bucket``'s images in the S3 server's log (werkzeug's access log)."""
    text = s3_server.log_path.read_text(errors="replace") if s3_server.log_path else ""
    return re.findall(rf'"(?:\x1b\[[0-9;]*m)*GET (/{re.escape(bucket)}/shoes/[^ "]+) HTTP', text)


def test_label_studio_s3_tasks_are_preannotated_by_the_backend(label_studio, s3_server, buckets, s3_backend,
                                                               s3_project):
    client = label_studio.client()
    project_id, ml_id, tasks = s3_project
    uris = {storage_uri(t.data["image"]) for t in tasks.values()}
    assert all(u.startswith("s3://") for u in uris) and {u.split("/")[2] for u in uris} == set(buckets[1:]), uris
    ml = client.ml.get(id=ml_id)
    assert str(ml.state).endswith("CO"), f"backend state {ml.state}: {ml.error_message}\n{s3_backend.log_tail()}"
    by_task = {p.task: p for p in client.predictions.list(project=project_id)}
    assert sorted(by_task) == sorted(tasks), s3_backend.log_tail()
    with_regions = set()
    for task_id, task in tasks.items():
        p = by_task[task_id]
        assert p.model_version == "test-v1", f"task {task_id}: {p}\n{s3_backend.log_tail()}"
        if p.result:  # the random model's strips along an edge give no pre-label (too thin to draw)
            with_regions.add(storage_uri(task.data["image"]).split("/")[2])
        assert {(r["original_width"], r["original_height"]) for r in p.result} <= {
            expected_size(storage_uri(task.data["image"]), buckets)}
    assert with_regions == set(buckets[1:]), f"regions only from {with_regions}\n{s3_backend.log_tail()}"
    # the routes taken, as the S3 server saw them: the allowed bucket read with the backend's own credentials
    # (a signed request, no query), the other through the presigned URL that Label Studio redirected to
    direct, presigned = image_requests(s3_server, buckets[1]), image_requests(s3_server, buckets[2])
    assert direct and all("?" not in r for r in direct), direct
    assert presigned and all("X-Amz-Signature=" in r for r in presigned), presigned
    log = s3_backend.log_tail(200_000)
    assert "Traceback" not in log, log[-4000:]


def test_the_workers_fetcher_reads_the_tasks_label_studio_lists(label_studio, s3_server, buckets, s3_project):
    """The worker lists tasks from the API (their URIs resolved to Label Studio's presign URLs) and fetches them
    with the shared fetcher: the presigned redirect leads to the S3 endpoint, followed as an allowed host."""
    from shoeseg_services.fetch import ImageFetcher, configured_access
    from shoeseg_services.ls_api import connect, list_tasks
    from shoeseg_services.settings import Settings

    project_id, _, _ = s3_project
    settings = Settings(label_studio_url=label_studio.url, label_studio_api_key=label_studio.token,
                        allowed_hosts=(s3_server.host,), fetch_timeout_s=10.0)
    fetcher = ImageFetcher(settings)
    listed = list_tasks(connect(settings.label_studio_url, settings.label_studio_api_key), project_id)
    assert len(listed) == len(SIZES)
    for t in listed:
        url = t["data"]["image"]
        assert "presign" in url or "resolve" in url, url  # what the API gives for storage URIs
        img = fetcher.fetch(url, task_id=t["id"], access=configured_access(settings))
        assert fetcher.image_size(img, task_id=t["id"]) in SIZES.values()
    fetcher.close()


def test_a_promotion_by_another_process_is_served_without_a_restart(label_studio, s3_server, s3_registry,
                                                                    s3_backend, s3_project):
    assert httpx.get(f"{s3_backend.url}/health", timeout=10).json()["model_version"] == "test-v1"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SHOESEG_"))}, **s3_server.env()}
    exe = BIN / "shoeseg"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "shoeseg_app"]
    out = subprocess.run([*cmd, "models", "promote", "test-v2", "--registry", str(s3_registry.root)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "current model: test-v2" in out.stdout, out.stdout + out.stderr
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        health = httpx.get(f"{s3_backend.url}/health", timeout=10).json()
        if health["model_version"] == "test-v2":
            break
        time.sleep(0.5)
    assert health["model_version"] == "test-v2", f"{health}\n{s3_backend.log_tail()}"
    versions = httpx.get(f"{s3_backend.url}/versions", timeout=10).json()
    assert versions["current"] == "test-v2" and versions["versions"] == ["test-v1", "test-v2"]
    # each checkpoint was downloaded once into the backend's own cache, named by its sha256
    with aws_environ(s3_server):
        shas = {v.version: v.sha256 for v in s3_registry.versions()}
    # (the ONNX runtime's files, exported from them, sit beside them: model.onnx next to each checkpoint)
    cached = sorted(p.name for p in (s3_backend.cache_dir / "models").iterdir() if p.suffix == ".pt")
    assert cached == sorted(f"{shas[v]}.pt" for v in ("test-v1", "test-v2"))
    log = s3_backend.log_tail(200_000)
    assert log.count("downloaded model version test-v2") == 1, log[-4000:]

    # Label Studio now gets test-v2's predictions
    project_id, _, tasks = s3_project
    client = label_studio.client()
    client.actions.create(id="retrieve_tasks_predictions", project=project_id, selected_items={"all": True, "excluded": []})
    versions_by_task = {}
    for p in client.predictions.list(project=project_id):
        versions_by_task.setdefault(p.task, set()).add(p.model_version)
    assert all("test-v2" in versions_by_task.get(t, set()) for t in tasks), versions_by_task
