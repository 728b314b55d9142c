"""Fixtures of the ML backend tests: model versions in a registry, images, a media server, app clients.

The models are Mask R-CNN R50-FPN networks with random weights whose box classifier and mask head biases
are set so that every image yields a few confident detections with full-box masks; the backend is tested
for what it does with detections, not for their quality.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from PIL import Image

from tests.conftest import FIXTURES

POLYGON_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<PolygonLabels name="label" toName="image"><Label value="shoe"/></PolygonLabels></View>'
)
ALL_CONTROLS_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<PolygonLabels name="label" toName="image"><Label value="shoe"/></PolygonLabels>'
    '<RectangleLabels name="box" toName="image"><Label value="Shoe"/></RectangleLabels>'
    '<BrushLabels name="brush" toName="image"><Label value="footwear" predicted_values="shoe"/></BrushLabels>'
    "</View>"
)
LEGACY_TOKEN = "legacy-token-0123456789"


def fixture_body(name: str) -> dict:
    """The JSON body of a request recorded from Label Studio 1.23.2."""
    return json.loads((FIXTURES / name).read_text())["body"]


def make_checkpoint(path: Path, *, version: str, fg_logit: float, detections: int, seed: int, size_px: int = 128,
                    serve_score_thresh: float | None = None):
    """A checkpoint whose model finds ``detections`` boxes per image with score ``sigmoid(2 * fg_logit)``."""
    import torch

    from shoeseg.model import build_model, save_checkpoint

    torch.manual_seed(seed)
    model = build_model(num_classes=1, weights=None, min_size=size_px, max_size=size_px,
                        box_detections_per_img=detections)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([-fg_logit, fg_logit]))
        model.roi_heads.mask_predictor.mask_fcn_logits.weight.zero_()
        model.roi_heads.mask_predictor.mask_fcn_logits.bias.fill_(6.0)
    model.eval()
    save_checkpoint(path, model=model, class_names=["shoe"], config={"purpose": "backend tests"}, version=version,
                    serve_score_thresh=serve_score_thresh)
    return path


@dataclass
class Checkpoints:
    v1: Path
    v2: Path


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Checkpoints:
    root = tmp_path_factory.mktemp("checkpoints")
    return Checkpoints(
        v1=make_checkpoint(root / "v1.pt", version="test-v1", fg_logit=4.0, detections=3, seed=1),
        v2=make_checkpoint(root / "v2.pt", version="test-v2", fg_logit=1.0, detections=1, seed=2),
    )


def new_registry(root: Path, checkpoints: Checkpoints, *, promote: str | None = "test-v1"):
    from shoeseg.registry import ModelRegistry

    reg = ModelRegistry(root)
    reg.register(checkpoints.v1, metrics={"segm_AP": 0.1}, parent=None, meta={})
    reg.register(checkpoints.v2, metrics={"segm_AP": 0.2}, parent="test-v1", meta={})
    if promote:
        reg.promote(promote)
    return reg


@pytest.fixture(scope="session")
def registry(tmp_path_factory, checkpoints):
    """A registry with test-v1 promoted and test-v2 registered (do not change it: shared by the session)."""
    return new_registry(tmp_path_factory.mktemp("registry"), checkpoints)


def jpeg_bytes(width_px: int, height_px: int, *, orientation: int | None = None, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = np.full((height_px, width_px, 3), 200, np.uint8)
    arr[height_px // 4: 3 * height_px // 4, width_px // 5: 4 * width_px // 5] = rng.integers(0, 80, 3, dtype=np.uint8)
    im = Image.fromarray(arr)
    buf = io.BytesIO()
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        im.save(buf, format="JPEG", exif=exif)
    else:
        im.save(buf, format="JPEG")
    return buf.getvalue()


def _b64(d: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")


def fake_jwt(claims: dict) -> str:
    return f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(claims)}.c2lnbmF0dXJl"


@dataclass
class MediaServer:
    """A stand-in for Label Studio's media routes: ``/data/upload``, ``/data/local-files``, token refresh.

    It checks auth as Label Studio 1.23 does (``Token <legacy>`` or ``Bearer <access>``; 401 otherwise),
    and offers misbehaving routes: ``/slow`` (sleeps), ``/huge`` (declares and sends too many bytes),
    ``/redirect?to=URL``, ``/status?code=N``.
    """

    root: Path
    port: int = 0
    pat: str = field(default_factory=lambda: fake_jwt({"token_type": "refresh", "exp": time.time() + 86400}))
    access: str | None = None
    refreshes: int = 0
    requests: list = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def revoke_access(self) -> None:
        self.access = None

    def put(self, rel: str, data: bytes) -> None:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def _handler(server: MediaServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, code: int, body: bytes = b"", ctype: str = "application/octet-stream", headers=None):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _authorized(self) -> bool:
            auth = self.headers.get("Authorization", "")
            return auth == f"Token {LEGACY_TOKEN}" or (server.access is not None and auth == f"Bearer {server.access}")

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(n) or b"{}")
            if self.path.rstrip("/") == "/api/token/refresh" and body.get("refresh") == server.pat:
                server.refreshes += 1
                server.access = fake_jwt({"token_type": "access", "exp": time.time() + 300, "n": server.refreshes})
                self._send(200, json.dumps({"access": server.access}).encode(), "application/json")
            else:
                self._send(401, b'{"detail": "bad token"}', "application/json")

        def do_GET(self):
            parts = urlsplit(self.path)
            server.requests.append((parts.path, self.headers.get("Authorization")))
            query = parse_qs(parts.query)
            if parts.path == "/slow":
                time.sleep(float(query.get("s", ["3"])[0]))
                self._send(200, b"late")
                return
            if parts.path == "/huge":
                self._send(200, b"\xff" * 4096)
                return
            if parts.path == "/nolength":  # HTTP/1.0, body until the connection closes
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"\xff" * 4096)
                return
            if parts.path == "/redirect":
                self._send(302, b"", headers={"Location": query["to"][0]})
                return
            if parts.path == "/status":
                self._send(int(query["code"][0]), b"")
                return
            if parts.path.startswith("/open/"):
                f = server.root / "open" / parts.path[len("/open/"):]
                self._send(200, f.read_bytes()) if f.is_file() else self._send(404)
                return
            if not self._authorized():
                self._send(401, b'{"detail": "Authentication credentials were not provided."}', "application/json")
                return
            if parts.path.startswith("/data/upload/"):
                f = server.root / "upload" / parts.path[len("/data/upload/"):]
            elif parts.path == "/data/local-files/":
                f = server.root / "local" / query.get("d", [""])[0]
            else:
                f = None
            if f is None or not f.is_file():
                self._send(404, b"not found")
            else:
                self._send(200, f.read_bytes(), "image/jpeg")

    return Handler


@pytest.fixture(scope="session")
def media_server(tmp_path_factory):
    """The media stand-in, serving the images named in the recorded ``/predict`` body."""
    server = MediaServer(root=tmp_path_factory.mktemp("media"))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
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
    from shoeseg.settings import Settings

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


def setup_body(media_server: MediaServer, *, token: str = LEGACY_TOKEN, schema: str = POLYGON_CONFIG) -> dict:
    body = fixture_body("setup.json")
    body.update(hostname=media_server.url, access_token=token, schema=schema)
    return body
