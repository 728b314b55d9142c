"""Task images in S3: ``s3://`` URIs read with the backend's own credentials (allowed buckets only), or resolved
through Label Studio's presign endpoint, against a real S3-compatible server (moto's, in its own process).

The Label Studio here is a small stand-in answering ``/tasks/<id>/presign/?fileuri=`` as Label Studio 1.23.2
does (303 to a presigned URL of the S3 endpoint); tests/e2e/test_s3_storage.py does it with the real one.
"""

from __future__ import annotations

import base64
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from shoeseg_services.fetch import ImageFetcher, ImageFetchError, LabelStudioAccess
from shoeseg_services.settings import Settings
from tests.helpers import fixture_body, jpeg_bytes

TOKEN = "ls-token-for-presign-0123"


@pytest.fixture
def bucket(s3_env):
    """A bucket holding shoe.jpg (64x48), notes.txt and big.jpg (over a 20 kB limit)."""
    name = s3_env.new_bucket("images")
    c = s3_env.client()
    c.put_object(Bucket=name, Key="shoes/shoe.jpg", Body=jpeg_bytes(64, 48, seed=3), ContentType="image/jpeg")
    c.put_object(Bucket=name, Key="shoes/notes.txt", Body=b"not a picture of a shoe\n", ContentType="text/plain")
    c.put_object(Bucket=name, Key="shoes/big.jpg", Body=b"\xff" * 20_001)
    return name


def fetcher(**changes) -> ImageFetcher:
    return ImageFetcher(Settings(fetch_timeout_s=5.0).with_(**changes))


def test_an_allowed_bucket_is_read_with_the_backends_credentials(bucket):
    f = fetcher(s3_buckets=(bucket,))
    img = f.fetch(f"s3://{bucket}/shoes/shoe.jpg", task_id=7, access=None)
    assert img.data == jpeg_bytes(64, 48, seed=3) and img.source == f"s3://{bucket}/shoes/shoe.jpg"
    assert f.decode(img, task_id=7)[1] == (64, 48)


def test_s3_images_have_the_limits_and_clear_errors(bucket, s3_env, monkeypatch):
    f = fetcher(s3_buckets=(bucket, "no-such-bucket-shoeseg"), max_image_bytes=20_000)
    with pytest.raises(ImageFetchError, match=f"task 3: image 's3://{bucket}/shoes/big.jpg' cannot be read from S3: "
                                              ".*is 20001 bytes, over the 20000 byte limit"):
        f.fetch(f"s3://{bucket}/shoes/big.jpg", task_id=3, access=None)
    notes = f.fetch(f"s3://{bucket}/shoes/notes.txt", task_id=4, access=None)
    with pytest.raises(ImageFetchError, match=f"task 4: .*s3://{bucket}/shoes/notes.txt"):
        f.decode(notes, task_id=4)
    with pytest.raises(ImageFetchError, match=f"task 5: .*s3://{bucket}/shoes/gone.jpg.*no such key in bucket '{bucket}'"):
        f.fetch(f"s3://{bucket}/shoes/gone.jpg", task_id=5, access=None)
    with pytest.raises(ImageFetchError, match="task 6: .*bucket 'no-such-bucket-shoeseg' does not exist"):
        f.fetch("s3://no-such-bucket-shoeseg/a.jpg", task_id=6, access=None)
    with pytest.raises(ImageFetchError, match=f"task 6: .*s3://{bucket}/.*names no object"):
        f.fetch(f"s3://{bucket}/", task_id=6, access=None)

    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ImageFetchError, match=f"task 8: image 's3://{bucket}/shoes/shoe.jpg'.*no AWS credentials"):
        f.fetch(f"s3://{bucket}/shoes/shoe.jpg", task_id=8, access=None)

    from shoeseg_app.stack.service import free_port

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ImageFetchError, match="task 9: .*the S3 endpoint http://127.0.0.1:\\d+ cannot be reached"):
        f.fetch(f"s3://{bucket}/shoes/shoe.jpg", task_id=9, access=None)


class PresignStandIn:
    """Label Studio's ``/tasks/<id>/presign/?fileuri=<base64>``: 303 to a presigned URL (token required)."""

    def __init__(self, s3_server):
        self.s3 = s3_server
        self.requests: list[tuple[str, str | None]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                parts = urlsplit(self.path)
                stand_in.requests.append((parts.path, self.headers.get("Authorization")))
                if self.headers.get("Authorization") != f"Token {TOKEN}":
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                uri = base64.urlsafe_b64decode(parse_qs(parts.query)["fileuri"][0]).decode()
                bucket, _, key = uri[len("s3://"):].partition("/")
                url = stand_in.s3.client().generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                                                  ExpiresIn=60)
                self.send_response(303)
                self.send_header("Location", url)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def presign(s3_env):
    stand_in = PresignStandIn(s3_env)
    yield stand_in
    stand_in.close()


def test_other_buckets_are_resolved_through_label_studio_and_its_redirect_needs_an_allowed_host(bucket, presign,
                                                                                               s3_env, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)  # the backend needs no AWS credentials of its own for this
    access = LabelStudioAccess(hostname=presign.url, token=TOKEN)
    uri = f"s3://{bucket}/shoes/shoe.jpg"
    img = fetcher(allowed_hosts=(s3_env.host,)).fetch(uri, task_id=12, access=access)
    assert img.data == jpeg_bytes(64, 48, seed=3)
    path, auth = presign.requests[-1]
    assert path == "/tasks/12/presign/" and auth == f"Token {TOKEN}"

    with pytest.raises(ImageFetchError) as e:  # the S3 endpoint is not an allowed host: no redirect there
        fetcher().fetch(uri, task_id=12, access=access)
    message = str(e.value)
    assert f"task 12: image '{uri}' redirects to 'http://{s3_env.host}/{bucket}/shoes/shoe.jpg'" in message
    assert f"add {s3_env.host} to SHOESEG_ALLOWED_HOSTS" in message
    assert "Signature" not in message and "X-Amz" not in message  # the presigned query is a credential

    with pytest.raises(ImageFetchError, match="task 12: .*was refused by Label Studio \\(HTTP 401\\)"):
        fetcher(allowed_hosts=(s3_env.host,)).fetch(uri, task_id=12, access=LabelStudioAccess(presign.url, "wrong"))


def test_the_worker_keeps_an_s3_image_in_its_cache(bucket, tmp_path):
    f = fetcher(s3_buckets=(bucket,), cache_dir=tmp_path / "cache")
    path = f.cached_file(f"s3://{bucket}/shoes/shoe.jpg", task_id=1, access=None)
    assert path.is_file() and path.read_bytes() == jpeg_bytes(64, 48, seed=3)
    assert path.is_relative_to(tmp_path / "cache" / "images")


def test_predict_on_tasks_with_s3_images(bucket, app_client, registry):
    """What Label Studio 1.23.2 sends for an S3 source storage's tasks: the bare s3:// URI."""
    c = app_client(s3_buckets=(bucket,))
    body = fixture_body("predict.json")
    task = dict(body["tasks"][0])
    body["tasks"] = [dict(task, id=31, data={"image": f"s3://{bucket}/shoes/shoe.jpg"}),
                     dict(task, id=32, data={"image": f"s3://{bucket}/shoes/notes.txt"})]
    r = c.post("/predict", json=body)
    assert r.status_code == 200, r.text
    ok, bad = r.json()["results"]
    assert ok["model_version"] == "test-v1" and ok["result"]
    assert {(x["original_width"], x["original_height"]) for x in ok["result"]} == {(64, 48)}
    assert not bad["result"] and f"s3://{bucket}/shoes/notes.txt" in bad.get("error", "")
