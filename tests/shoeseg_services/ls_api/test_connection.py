"""Connecting to Label Studio: the client and its connection, the key and the scheme it is sent in, raw requests."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from label_studio_sdk import LabelStudio

from shoeseg_services.ls_api import LabelStudioError, auth_headers, base_url, connect
from shoeseg_services.ls_api import connection as connection_module
from shoeseg_services.ls_api.connection import RAW_RETRIES, Credentials, request_json
from tests.helpers import LEGACY_TOKEN, fake_jwt


def test_connect_keeps_the_url_and_the_key_beside_the_sdk_client(media_server):
    client = connect(media_server.url + "/", LEGACY_TOKEN, timeout_s=5)
    assert isinstance(client, LabelStudio)
    assert client.connection.url == media_server.url == base_url(client)
    assert client.connection.credentials.key == LEGACY_TOKEN and not client.connection.credentials.personal
    assert base_url(object()) == "<unknown Label Studio URL>"
    with pytest.raises(LabelStudioError, match="LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"):
        connect(media_server.url, None)


def test_a_raw_request_goes_to_its_server_with_the_key(media_server):
    client = connect(media_server.url, LEGACY_TOKEN, timeout_s=5)
    r = client.connection.request("data/local-files/?d=imgs/img1.jpg", method="GET")
    assert r.status_code == 200 and r.content == (media_server.root / "local" / "imgs" / "img1.jpg").read_bytes()
    assert media_server.requests[-1] == ("/data/local-files/", f"Token {LEGACY_TOKEN}")


def test_a_raw_request_is_retried_as_the_sdk_retries(media_server, monkeypatch):
    monkeypatch.setattr(connection_module, "time", SimpleNamespace(time=time.time, sleep=lambda s: None))
    client = connect(media_server.url, LEGACY_TOKEN, timeout_s=5)
    n = len(media_server.requests)
    assert client.connection.request("status?code=503", method="GET").status_code == 503
    assert len(media_server.requests) - n == 1 + RAW_RETRIES
    assert client.connection.request("status?code=404", method="GET").status_code == 404
    assert len(media_server.requests) - n == 2 + RAW_RETRIES  # a client error is not retried


def test_a_raw_request_needs_a_client_made_by_connect():
    with pytest.raises(LabelStudioError, match="list uploaded files: the Label Studio client was not made by"):
        request_json(object(), "api/projects/1/file-uploads", method="GET", what="list uploaded files")


def test_the_scheme_is_the_sdks_rule_a_jwt_is_a_personal_access_token():
    pat = fake_jwt({"token_type": "refresh", "exp": time.time() + 60})
    assert Credentials("http://ls", pat, timeout_s=1).personal
    for legacy in ("0123abcd", "a.b.c", "e30.W10.c2ln"):  # not a JWT: not base64, or claims that are no object
        assert not Credentials("http://ls", legacy, timeout_s=1).personal, legacy
    assert Credentials("http://ls", "0123abcd", timeout_s=1).authorization() == "Token 0123abcd"


def test_a_personal_access_token_is_refreshed_once_then_on_expiry_or_refusal(media_server, monkeypatch):
    credentials = Credentials(media_server.url, media_server.pat, timeout_s=5)
    before = media_server.refreshes
    first = credentials.authorization()
    assert first == f"Bearer {media_server.access}" and credentials.authorization() == first
    assert media_server.refreshes == before + 1
    refused = credentials.authorization(fresh=True)  # the server refused the access token
    assert refused != first and media_server.refreshes == before + 2
    later = SimpleNamespace(time=lambda: time.time() + 3600, sleep=time.sleep)  # the access token expired
    monkeypatch.setattr(connection_module, "time", later)
    assert credentials.authorization() not in (first, refused) and media_server.refreshes == before + 3


def test_a_refused_personal_access_token_names_the_server(media_server):
    bad = media_server.pat[:-3] + "xyz"
    with pytest.raises(LabelStudioError, match=r"refused to refresh the personal access token \(HTTP 401\)") as e:
        auth_headers(media_server.url, bad)
    assert media_server.url in str(e.value)
    assert auth_headers(media_server.url, None) == {}
