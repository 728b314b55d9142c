"""A credential goes only to the server it belongs to (the exploit of the issue, and its variants)."""

from __future__ import annotations

import httpx

from tests.helpers import POLYGON_CONFIG
from tests.security.requests import SECRET_KEY, answering, predict_body


def setup(backend, hostname: str, *, project: str = "9.1", token: str = "") -> httpx.Response:
    return httpx.post(f"{backend.url}/setup", timeout=30, json={
        "project": project, "schema": POLYGON_CONFIG, "hostname": hostname, "access_token": token})


def test_the_configured_key_never_reaches_a_host_that_setup_names(exposed_backend, attacker):
    attacker.clear()
    r = setup(exposed_backend, attacker.url)
    assert r.status_code == 403
    assert attacker.url in r.json()["error"] and "SHOESEG_ALLOWED_HOSTS" in r.json()["error"]
    r = httpx.post(f"{exposed_backend.url}/predict", json=predict_body("/data/upload/1/x.jpg"), timeout=60)
    assert r.status_code == 200
    result = r.json()["results"][0]
    assert result["result"] == [] and "no Label Studio hostname is known" in result["error"]
    assert attacker.requests == []  # nothing at all reached it, let alone the key
    assert answering(exposed_backend)


def test_an_allowed_server_gets_only_its_own_token(exposed_backend, allowed_host):
    allowed_host.clear()
    assert setup(exposed_backend, allowed_host.url, project="10.1", token="its-own-token").status_code == 200
    r = httpx.post(f"{exposed_backend.url}/predict", json=predict_body("/data/upload/1/x.jpg", project="10.1"),
                   timeout=60)
    assert "HTTP 404" in r.json()["results"][0]["error"]
    assert allowed_host.authorizations() == ["Token its-own-token"]  # and no retry with the configured key
    assert SECRET_KEY not in str(allowed_host.requests)


def test_an_allowed_server_without_a_token_gets_no_credential(exposed_backend, allowed_host):
    allowed_host.clear()
    assert setup(exposed_backend, allowed_host.url, project="11.1", token="").status_code == 200
    r = httpx.post(f"{exposed_backend.url}/predict", json=predict_body("/data/upload/1/x.jpg", project="11.1"),
                   timeout=60)
    assert r.status_code == 200 and allowed_host.requests and allowed_host.authorizations() == []


def test_one_projects_setup_does_not_change_another(exposed_backend, allowed_host, attacker):
    allowed_host.clear()
    assert setup(exposed_backend, allowed_host.url, project="12.1", token="token-12").status_code == 200
    setup(exposed_backend, attacker.url, project="13.1")  # refused, and must not become anyone's access
    for project in ("13.1", None):  # a project without a /setup of its own, and a request naming none
        body = predict_body("/data/upload/1/x.jpg", project=project)
        r = httpx.post(f"{exposed_backend.url}/predict", json=body, timeout=60)
        assert "no Label Studio hostname is known" in r.json()["results"][0]["error"]
    assert allowed_host.requests == [] and attacker.requests == []
    r = httpx.post(f"{exposed_backend.url}/predict", json=predict_body("/data/upload/1/x.jpg", project="12.1"),
                   timeout=60)
    assert allowed_host.authorizations() == ["Token token-12"]


def test_setup_hostnames_that_are_not_urls_or_carry_credentials(exposed_backend, attacker):
    attacker.clear()
    for hostname in (f"http://user:pw@127.0.0.1:{attacker.port}", "file:///etc/passwd", "gopher://127.0.0.1:1/"):
        r = setup(exposed_backend, hostname)
        assert r.status_code == 403 and "error" in r.json(), hostname
    assert attacker.requests == []
    assert answering(exposed_backend)


def test_redirect_from_an_allowed_host_to_another_host(exposed_backend, allowed_host, attacker):
    allowed_host.clear()
    attacker.clear()
    url = f"{allowed_host.url}/redirect?to={attacker.url}/img.png"
    r = httpx.post(f"{exposed_backend.url}/predict", json=predict_body(url), timeout=60)
    assert "redirects to" in r.json()["results"][0]["error"] and "not an allowed host" in r.json()["results"][0]["error"]
    assert attacker.requests == []
    assert answering(exposed_backend)


def test_redirect_from_label_studio_carries_no_token_elsewhere(exposed_backend, allowed_host, attacker):
    allowed_host.clear()
    attacker.clear()
    assert setup(exposed_backend, allowed_host.url, project="14.1", token="token-14").status_code == 200
    body = predict_body(f"/data/upload/redirect?to={attacker.url}/img.png", project="14.1")
    r = httpx.post(f"{exposed_backend.url}/predict", json=body, timeout=60)
    assert "redirects to" in r.json()["results"][0]["error"]
    assert allowed_host.authorizations() == ["Token token-14"] and attacker.requests == []


def test_userinfo_in_an_image_url_is_refused_not_forwarded(exposed_backend, allowed_host):
    allowed_host.clear()
    url = f"http://user:pw@127.0.0.1:{allowed_host.port}/img.png"
    r = httpx.post(f"{exposed_backend.url}/predict", json=predict_body(url), timeout=60)
    assert "user or password" in r.json()["results"][0]["error"]
    assert allowed_host.requests == []


def test_a_raw_label_studio_request_redirected_to_another_host_carries_no_key(allowed_host, attacker):
    from shoeseg_services.ls_api.connection import Connection

    allowed_host.clear()
    attacker.clear()
    r = Connection(allowed_host.url, "raw-key", timeout_s=10).request(f"api/redirect?to={attacker.url}/img.png",
                                                                      method="GET")
    assert r.status_code == 200  # followed, as the SDK's own client follows redirects
    assert allowed_host.authorizations() == ["Token raw-key"]
    assert attacker.requests and attacker.authorizations() == []
