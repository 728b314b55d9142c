"""Hostile request bodies: XML entities, decompression bombs, oversized and malformed bodies, basic auth."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from tests.e2e.backend_process import start_backend, stop_backend
from tests.helpers import POLYGON_CONFIG, make_checkpoint
from tests.security.requests import answering, predict_body

BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">'
    '<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>'
    '<View><Image name="image" value="$image"/><PolygonLabels name="label" toName="image">'
    '<Label value="&lol4;"/></PolygonLabels></View>'
)


def external_entity(target: str) -> str:
    return (
        f'<?xml version="1.0"?><!DOCTYPE v [<!ENTITY xxe SYSTEM "{target}">]>'
        '<View><Image name="image" value="$image"/><PolygonLabels name="label" toName="image">'
        '<Label value="&xxe;"/></PolygonLabels></View>'
    )


@pytest.mark.parametrize("route", ["/setup", "/predict"])
def test_xml_entities_in_the_labeling_config(exposed_backend, attacker, route):
    attacker.clear()
    for config in (BILLION_LAUGHS, external_entity(f"{attacker.url}/xxe"), external_entity("file:///etc/passwd")):
        body = ({"project": "30.1", "schema": config, "hostname": None} if route == "/setup"
                else predict_body("ok.png", config=config))
        r = httpx.post(f"{exposed_backend.url}{route}", json=body, timeout=30)
        assert r.status_code == 400, r.text
        assert "labeling config" in r.json()["error"].lower() or "entit" in r.json()["error"].lower()
        assert "root:" not in r.text
    assert attacker.requests == []
    assert answering(exposed_backend)


def test_decompression_bomb_png(exposed_backend):
    buf = io.BytesIO()
    Image.new("L", (12_000, 12_000)).save(buf, format="PNG", optimize=True)  # 144 MP in about 140 KB
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    r = httpx.post(f"{exposed_backend.url}/predict", json=predict_body(uri), timeout=60)
    assert r.status_code == 200
    assert "pixel limit" in r.json()["results"][0]["error"] and "task 1" in r.json()["results"][0]["error"]
    assert answering(exposed_backend)


def test_oversized_body(exposed_backend):
    body = predict_body("ok.png")
    body["padding"] = "x" * 300_000  # the process runs with SHOESEG_MAX_REQUEST_BYTES=200000
    r = httpx.post(f"{exposed_backend.url}/predict", json=body, timeout=30)
    assert r.status_code == 413 and "byte limit" in r.json()["error"]

    def chunks():  # no Content-Length: counted while it arrives
        for _ in range(40):
            yield b" " * 10_000

    r = httpx.post(f"{exposed_backend.url}/predict", content=chunks(), timeout=30,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert answering(exposed_backend)


@pytest.mark.parametrize(("content", "status"), [
    (b"{not json", 400), (b"[" * 1000 + b"]" * 1000, 400), (b'{"tasks": "no"}', 422), (b"", 400),
])
def test_malformed_bodies_answer_our_error_shape(exposed_backend, content, status):
    r = httpx.post(f"{exposed_backend.url}/predict", content=content, timeout=30,
                   headers={"Content-Type": "application/json"})
    assert r.status_code in (status, 422), r.text
    assert set(r.json()) == {"error"}


def test_unknown_routes_and_methods_answer_our_error_shape(exposed_backend):
    r = httpx.get(f"{exposed_backend.url}/admin", timeout=10)
    assert r.status_code == 404 and r.json() == {"error": "no route /admin"}
    r = httpx.delete(f"{exposed_backend.url}/predict", timeout=10)
    assert r.status_code == 405 and set(r.json()) == {"error"}


ROUTES = [("GET", "/versions"), ("GET", "/metrics"), ("POST", "/setup"), ("POST", "/predict"), ("POST", "/webhook")]


@pytest.fixture(scope="module")
def guarded_backend(tmp_path_factory):
    from shoeseg_services.registry import ModelRegistry

    root = tmp_path_factory.mktemp("guarded")
    reg = ModelRegistry(root / "models")
    reg.register(make_checkpoint(root / "g.pt", version="g-v1", fg_logit=4.0, detections=1, seed=5),
                 metrics={}, parent=None, meta={})
    reg.promote("g-v1")
    backend = start_backend(root, registry_root=reg.root, env={"BASIC_AUTH_USER": "ls", "BASIC_AUTH_PASS": "pw-1"})
    yield backend
    stop_backend(backend)


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("auth", [None, ("ls", "wrong"), ("other", "pw-1"), "Basic !!notbase64", "Bearer pw-1"])
def test_every_route_needs_basic_auth(guarded_backend, method, path, auth):
    headers = {"Authorization": auth} if isinstance(auth, str) else {}
    r = httpx.request(method, f"{guarded_backend.url}{path}", json={"action": "START_TRAINING"}, timeout=30,
                      auth=auth if isinstance(auth, tuple) else None, headers=headers)
    assert r.status_code == 401 and r.json() == {"error": "basic auth required"}
    assert r.headers["www-authenticate"].startswith("Basic")


def test_health_stays_open_and_the_right_pair_passes(guarded_backend):
    assert answering(guarded_backend)
    r = httpx.get(f"{guarded_backend.url}/versions", auth=("ls", "pw-1"), timeout=30)
    assert r.status_code == 200 and r.json()["current"] == "g-v1"
    r = httpx.post(f"{guarded_backend.url}/setup", auth=("ls", "pw-1"), timeout=30,
                   json={"project": "1.1", "schema": POLYGON_CONFIG, "hostname": None})
    assert r.status_code == 200
