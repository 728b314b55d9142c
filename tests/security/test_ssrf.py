"""Where image URLs may lead: no other host, port, scheme or file than those configured."""

from __future__ import annotations

import httpx
import pytest

from tests.security.requests import answering, predict_body


def error_of(backend, url: str) -> str:
    r = httpx.post(f"{backend.url}/predict", json=predict_body(url), timeout=60)
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    assert result["result"] == []
    return result["error"]


@pytest.mark.parametrize(("make_url", "message"), [
    (lambda a: f"{a.url}/img.png", "not in SHOESEG_ALLOWED_HOSTS"),  # loopback, another port
    (lambda a: f"http://localhost:{a.port}/img.png", "not in SHOESEG_ALLOWED_HOSTS"),
    (lambda a: f"http://[::1]:{a.port}/img.png", "not in SHOESEG_ALLOWED_HOSTS"),
    (lambda a: "http://169.254.169.254/latest/meta-data/", "not in SHOESEG_ALLOWED_HOSTS"),  # link-local
    (lambda a: "http://0.0.0.0:80/", "not in SHOESEG_ALLOWED_HOSTS"),
    (lambda a: f"gopher://127.0.0.1:{a.port}/_GET", "unsupported scheme"),
    (lambda a: f"ftp://127.0.0.1:{a.port}/x", "unsupported scheme"),
])
def test_plain_urls_to_hosts_not_allowed(exposed_backend, attacker, make_url, message):
    attacker.clear()
    assert message in error_of(exposed_backend, make_url(attacker))
    assert attacker.requests == []
    assert answering(exposed_backend)


def test_an_allowed_host_on_another_port_is_refused(exposed_backend, allowed_host):
    url = f"http://127.0.0.1:{allowed_host.port + 1}/img.png"  # the entry names host:port, not the host
    assert "not in SHOESEG_ALLOWED_HOSTS" in error_of(exposed_backend, url)


@pytest.mark.parametrize(("url", "message"), [
    ("file:///etc/passwd", "outside SHOESEG_IMAGE_ROOT"),
    ("../secret.png", "outside SHOESEG_IMAGE_ROOT"),
    ("%2e%2e/secret.png", "outside SHOESEG_IMAGE_ROOT"),  # percent-encoded ..
    ("..%2fsecret.png", "outside SHOESEG_IMAGE_ROOT"),
    ("file://{root}/../secret.png", "outside SHOESEG_IMAGE_ROOT"),
    ("file://{root}/%2e%2e/secret.png", "outside SHOESEG_IMAGE_ROOT"),
    ("link.png", "outside SHOESEG_IMAGE_ROOT"),  # a symbolic link out of the root
    ("/etc/shadow", "outside SHOESEG_IMAGE_ROOT"),
])
def test_local_paths_outside_the_root(exposed_backend, image_root, url, message):
    assert message in error_of(exposed_backend, url.format(root=image_root))
    assert answering(exposed_backend)


def test_a_path_under_the_root_is_served(exposed_backend):
    r = httpx.post(f"{exposed_backend.url}/predict", json=predict_body("ok.png"), timeout=60)
    assert "error" not in r.json()["results"][0]


def test_label_studio_local_files_urls_never_read_the_disk(exposed_backend, allowed_host):
    """``/data/local-files/?d=`` belongs to Label Studio: with traversal in it, it still goes only there."""
    allowed_host.clear()
    httpx.post(f"{exposed_backend.url}/setup", timeout=30, json={
        "project": "20.1", "schema": predict_body()["label_config"], "hostname": allowed_host.url,
        "access_token": ""})
    for d in ("..%2F..%2Fsecret.png", "../../secret.png", "%2e%2e/link.png"):
        body = predict_body(f"/data/local-files/?d={d}", project="20.1")
        r = httpx.post(f"{exposed_backend.url}/predict", json=body, timeout=60)
        assert "HTTP 404" in r.json()["results"][0]["error"]  # asked of Label Studio, which refused it
    assert [p for _, p, _ in allowed_host.requests] == [
        "/data/local-files/?d=..%2F..%2Fsecret.png", "/data/local-files/?d=../../secret.png",
        "/data/local-files/?d=%2e%2e/link.png"]
