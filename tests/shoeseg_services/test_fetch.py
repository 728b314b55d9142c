"""The image fetcher: Label Studio auth, allowed hosts, the local root, limits, EXIF, and every bad image."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shoeseg_app.stack.service import free_port
from shoeseg_services.fetch import ImageFetcher, ImageFetchError, LabelStudioAccess
from shoeseg_services.settings import Settings
from tests.helpers import LEGACY_TOKEN, jpeg_bytes


@pytest.fixture
def fetcher_for(tmp_path):
    made = []

    def make(**changes) -> ImageFetcher:
        f = ImageFetcher(Settings(fetch_timeout_s=2.0).with_(**changes))
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


def ls(media_server, token=LEGACY_TOKEN) -> LabelStudioAccess:
    return LabelStudioAccess(hostname=media_server.url, token=token)


def fetch_array(fetcher, url, access, task_id=7):
    return fetcher.decode(fetcher.fetch(url, task_id=task_id, access=access), task_id=task_id)[0]


# --- Label Studio URLs and auth --------------------------------------------------------------------------

def test_upload_with_legacy_token(fetcher_for, media_server):
    img = fetch_array(fetcher_for(), "/data/upload/1/3c053945-img1.jpg", ls(media_server))
    assert img.shape == (64, 96, 3) and img.dtype == np.uint8
    assert media_server.requests[-1] == ("/data/upload/1/3c053945-img1.jpg", f"Token {LEGACY_TOKEN}")


def test_local_files_url(fetcher_for, media_server):
    img = fetch_array(fetcher_for(), "/data/local-files/?d=imgs/img1.jpg", ls(media_server))
    assert img.shape == (120, 80, 3)


def test_absolute_url_on_label_studio_host_gets_auth(fetcher_for, media_server):
    img = fetch_array(fetcher_for(), f"{media_server.url}/data/local-files/?d=imgs/img0.jpg", ls(media_server))
    assert img.shape == (48, 64, 3)


def test_announced_hostname_is_an_alias_of_the_configured_url(fetcher_for, media_server):
    access = LabelStudioAccess(hostname=media_server.url, token=LEGACY_TOKEN, aliases=("http://localhost:8089",))
    img = fetch_array(fetcher_for(), "http://localhost:8089/data/local-files/?d=imgs/img0.jpg", access)
    assert img.shape == (48, 64, 3)


def test_personal_access_token_is_refreshed_to_bearer(fetcher_for, media_server):
    fetcher = fetcher_for()
    before = media_server.refreshes
    fetch_array(fetcher, "/data/upload/1/3c053945-img1.jpg", ls(media_server, media_server.pat))
    fetch_array(fetcher, "/data/local-files/?d=imgs/img1.jpg", ls(media_server, media_server.pat))
    assert media_server.refreshes == before + 1  # the access token is reused until it expires
    assert media_server.requests[-1][1] == f"Bearer {media_server.access}"
    media_server.revoke_access()  # the server no longer accepts it: 401, then one refresh and a retry
    fetch_array(fetcher, "/data/upload/1/3c053945-img1.jpg", ls(media_server, media_server.pat))
    assert media_server.refreshes == before + 2


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_refused_token_names_task_and_url(fetcher_for, media_server, token):
    with pytest.raises(ImageFetchError, match=r"task 7: image '/data/upload/1/3c053945-img1.jpg' was refused") as e:
        fetcher_for().fetch("/data/upload/1/3c053945-img1.jpg", task_id=7, access=ls(media_server, token))
    assert e.value.unauthorized and e.value.task_id == 7


def test_refused_personal_access_token(fetcher_for, media_server):
    bad_pat = media_server.pat[:-3] + "xyz"
    with pytest.raises(ImageFetchError, match="refused to refresh the personal access token"):
        fetcher_for().fetch("/data/upload/1/3c053945-img1.jpg", task_id=7, access=ls(media_server, bad_pat))


def test_label_studio_url_without_hostname(fetcher_for):
    with pytest.raises(ImageFetchError, match="no Label Studio hostname is known"):
        fetcher_for().fetch("/data/upload/1/a.jpg", task_id=3, access=LabelStudioAccess(None, None))


def test_settings_supply_the_fallback_hostname_and_key(fetcher_for, media_server):
    fetcher = fetcher_for(label_studio_url=media_server.url, label_studio_api_key=LEGACY_TOKEN)
    img = fetch_array(fetcher, "/data/upload/1/3c053945-img1.jpg", None)
    assert img.shape == (64, 96, 3)


def test_uploads_are_cached_on_disk(fetcher_for, media_server, tmp_path):
    fetcher = fetcher_for(cache_dir=tmp_path / "cache")
    fetch_array(fetcher, "/data/upload/1/3c053945-img1.jpg", ls(media_server))
    n = len(media_server.requests)
    fetch_array(fetcher, "/data/upload/1/3c053945-img1.jpg", ls(media_server))
    assert len(media_server.requests) == n
    assert any((tmp_path / "cache").rglob("*"))


# --- other hosts ---------------------------------------------------------------------------------------

def test_plain_url_needs_an_allowed_host(fetcher_for, media_server):
    url = f"{media_server.url}/open/plain.jpg"
    with pytest.raises(ImageFetchError, match="not in SHOESEG_ALLOWED_HOSTS"):
        fetcher_for().fetch(url, task_id=1, access=LabelStudioAccess(None, None))
    img = fetch_array(fetcher_for(allowed_hosts=(f"127.0.0.1:{media_server.port}",)), url, LabelStudioAccess(None, LEGACY_TOKEN))
    assert img.shape == (64, 64, 3)
    assert media_server.requests[-1] == ("/open/plain.jpg", None)  # no credentials to other hosts


def test_wildcard_allowed_host(fetcher_for):
    with pytest.raises(ImageFetchError, match="not in SHOESEG_ALLOWED_HOSTS"):
        fetcher_for(allowed_hosts=("*.example.org",)).fetch(
            "http://example.org.evil.test/a.jpg", task_id=1, access=None)


def test_redirect_to_a_host_not_allowed(fetcher_for, media_server):
    url = f"{media_server.url}/redirect?to=http://169.254.169.254/latest/meta-data"
    with pytest.raises(ImageFetchError, match="redirects to 'http://169.254.169.254"):
        fetcher_for(allowed_hosts=(f"127.0.0.1:{media_server.port}",)).fetch(url, task_id=2, access=None)


def test_redirect_within_allowed_hosts(fetcher_for, media_server):
    url = f"{media_server.url}/redirect?to=/open/plain.jpg"
    img = fetch_array(fetcher_for(allowed_hosts=(f"127.0.0.1:{media_server.port}",)), url, None)
    assert img.shape == (64, 64, 3)


@pytest.mark.parametrize(("path", "message"), [
    ("/status?code=404", "HTTP 404"),
    ("/status?code=500", "HTTP 500"),
    ("/huge", "over the 1000 byte limit"),
    ("/nolength", "over the 1000 byte limit"),
    ("/slow?s=3", "timed out"),
])
def test_http_failures(fetcher_for, media_server, path, message):
    fetcher = fetcher_for(allowed_hosts=(f"127.0.0.1:{media_server.port}",), max_image_bytes=1000, fetch_timeout_s=0.5)
    with pytest.raises(ImageFetchError, match=message) as e:
        fetcher.fetch(f"{media_server.url}{path}", task_id=11, access=None)
    assert str(e.value).startswith("task 11: image ")


def test_unreachable_host(fetcher_for):
    port = free_port()
    url = f"http://127.0.0.1:{port}/a.jpg"
    with pytest.raises(ImageFetchError, match=r"task 5: image .* cannot be downloaded \(ConnectError"):
        fetcher_for(allowed_hosts=(f"127.0.0.1:{port}",)).fetch(url, task_id=5, access=None)


@pytest.mark.parametrize("url", ["gs://b/x.png", "ftp://h/a.jpg"])
def test_unsupported_schemes(fetcher_for, url):
    with pytest.raises(ImageFetchError, match="unsupported scheme"):
        fetcher_for().fetch(url, task_id=1, access=None)


def test_s3_uris_of_buckets_not_allowed_and_without_label_studio_are_refused(fetcher_for):
    # (reading allowed buckets and resolving through Label Studio: tests/backend/test_s3_images.py)
    with pytest.raises(ImageFetchError, match="task 1: image 's3://bucket/a.jpg' is in bucket 'bucket', which is not "
                                              "in SHOESEG_S3_BUCKETS.*no Label Studio"):
        fetcher_for().fetch("s3://bucket/a.jpg", task_id=1, access=None)


@pytest.mark.parametrize("url", [None, "", "   ", 42])
def test_missing_url(fetcher_for, url):
    with pytest.raises(ImageFetchError, match="task 9: no image URL in the task data"):
        fetcher_for().fetch(url, task_id=9, access=None)


# --- local files ---------------------------------------------------------------------------------------

@pytest.fixture
def image_root(tmp_path) -> Path:
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.jpg").write_bytes(jpeg_bytes(40, 30))
    (tmp_path / "secret.jpg").write_bytes(jpeg_bytes(40, 30))
    os.symlink(tmp_path / "secret.jpg", root / "link.jpg")
    return root


def test_local_paths_under_the_root(fetcher_for, image_root):
    fetcher = fetcher_for(image_root=image_root)
    for url in ("sub/a.jpg", str(image_root / "sub" / "a.jpg"), f"file://{image_root}/sub/a.jpg"):
        assert fetch_array(fetcher, url, None).shape == (30, 40, 3)


@pytest.mark.parametrize(("rel", "message"), [
    ("../secret.jpg", "outside SHOESEG_IMAGE_ROOT"),
    ("link.jpg", "outside SHOESEG_IMAGE_ROOT"),
    ("/etc/passwd", "outside SHOESEG_IMAGE_ROOT"),
    ("sub/missing.jpg", "does not exist"),
    ("sub", "is not a file"),
])
def test_local_paths_refused(fetcher_for, image_root, rel, message):
    with pytest.raises(ImageFetchError, match=message):
        fetcher_for(image_root=image_root).fetch(rel, task_id=4, access=None)


def test_local_path_without_root(fetcher_for):
    with pytest.raises(ImageFetchError, match="SHOESEG_IMAGE_ROOT is not set"):
        fetcher_for().fetch("images/a.jpg", task_id=4, access=None)


def test_local_file_over_the_byte_limit(fetcher_for, image_root):
    with pytest.raises(ImageFetchError, match="over the 100 byte limit"):
        fetcher_for(image_root=image_root, max_image_bytes=100).fetch("sub/a.jpg", task_id=4, access=None)


# --- decoding ------------------------------------------------------------------------------------------

def _data_uri(data: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode()


def test_data_uri(fetcher_for):
    assert fetch_array(fetcher_for(), _data_uri(jpeg_bytes(20, 10)), None).shape == (10, 20, 3)
    with pytest.raises(ImageFetchError, match="not base64"):
        fetcher_for().fetch("data:image/png,abc", task_id=1, access=None)


@pytest.mark.parametrize(("data", "message"), [
    (b"", "not a readable image"),
    (b"GIF89a but nothing else", "not a readable image"),
    (b"%PDF-1.4 a document", "not a readable image"),
    (jpeg_bytes(64, 64)[:200], "not a readable image"),  # truncated
])
def test_corrupt_images(fetcher_for, data, message):
    fetcher = fetcher_for()
    fetched = fetcher.fetch(_data_uri(data), task_id=12, access=None)
    with pytest.raises(ImageFetchError, match=f"task 12: .*{message}"):
        fetcher.decode(fetched, task_id=12)


def test_pixel_limit(fetcher_for):
    fetcher = fetcher_for(max_image_pixels=1000)
    fetched = fetcher.fetch(_data_uri(jpeg_bytes(64, 64)), task_id=13, access=None)
    with pytest.raises(ImageFetchError, match="over the 1000 pixel limit"):
        fetcher.decode(fetched, task_id=13)


def test_exif_orientation_is_applied(fetcher_for, media_server):
    stored = Image.open(io.BytesIO(jpeg_bytes(96, 64, orientation=6)))
    assert stored.size == (96, 64)
    img = fetch_array(fetcher_for(), "/data/local-files/?d=imgs/rotated.jpg", ls(media_server))
    assert img.shape == (96, 64, 3)  # displayed rotated, as Label Studio shows it
