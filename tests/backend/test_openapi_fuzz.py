"""Property test: schemathesis generates requests from the app's OpenAPI schema; none may get a 500."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402


@pytest.fixture(scope="module")
def fuzz_app(registry, redis_server, tmp_path_factory):
    import redis
    from fastapi.testclient import TestClient

    from backend.app import create_app
    from shoeseg_services.settings import Settings

    s = Settings(model_dir=registry.root, device="cpu", fetch_timeout_s=1.0, reload_interval_s=0.0,
                 image_root=tmp_path_factory.mktemp("fuzz-images"), redis_url=f"redis://127.0.0.1:{redis_server.port}/0")
    conn = redis.Redis.from_url(s.redis_url)
    conn.flushdb()
    app = create_app(s)
    with TestClient(app):  # runs the lifespan: the model is loaded as in production
        yield app
    conn.flushdb()


def _operations(app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return {op.ok().label: op.ok() for op in schema.get_all_operations()}


def test_schema_lists_every_route(fuzz_app):
    assert set(_operations(fuzz_app)) == {
        "GET /", "GET /health", "POST /setup", "POST /predict", "POST /webhook", "GET /versions", "GET /metrics",
    }


_ROUTES = ["GET /", "GET /health", "POST /setup", "POST /predict", "POST /webhook", "GET /versions", "GET /metrics"]
_CASES = [(r, GenerationMode.POSITIVE) for r in _ROUTES] + [
    (r, GenerationMode.NEGATIVE) for r in _ROUTES if r.startswith("POST")  # routes without input have no negatives
]


@pytest.mark.parametrize(("label", "mode"), _CASES)
def test_no_server_errors(fuzz_app, label, mode):
    operation = _operations(fuzz_app)[label]
    seen = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case):
        response = case.call()
        seen.append(response.status_code)
        case.validate_response(response, checks=[not_a_server_error])
        assert response.status_code < 500, response.text
        assert "Traceback" not in response.text

    check()
    assert seen
