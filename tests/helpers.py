"""Helpers shared by the tests of several packages (imported by tests; not a test module): the recorded Label
Studio requests, labeling configs, generated JPEGs, tiny model versions with biased heads, and a stand-in for
Label Studio's media routes.

The models are Mask R-CNN networks with random weights whose box classifier and mask head biases are set so
that every image yields a few confident detections with full-box masks: they test what the services do with
detections, not their quality.
"""

from __future__ import annotations

import base64
import io
import json
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from PIL import Image

FIXTURES = Path(__file__).resolve().parent / "fixtures"


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


def shared_dataset(shared_dir: Path, name: str, needs: str) -> Path:
    """The shared dataset folder ``name``; the test skips, saying why, when it lacks the file ``needs``."""
    root = shared_dir / "datasets" / name
    if not (root / needs).is_file():
        pytest.skip(f"{root} has no {needs}")
    return root


def fixture_body(name: str) -> dict:
    """The JSON body of a request recorded from Label Studio 1.23.2."""
    return json.loads((FIXTURES / name).read_text())["body"]


def make_checkpoint(path: Path, *, version: str, fg_logit: float, detections: int, seed: int, size_px: int = 128,
                    serve_score_thresh: float | None = None, anchor_boxes: bool = False,
                    metrics: dict | None = None):
    """A checkpoint whose model finds up to ``detections`` boxes per image with score ``sigmoid(2 * fg_logit)``.

    The boxes of these random models are arbitrary: at the served box NMS (0.4) one of test-v1's on the browser
    test's upload is a sliver two pixels tall along the image's edge, which the predictor drops (Label Studio's
    editor would list it but not draw it; :data:`shoeseg.geometry.MIN_PART_WIDTH_PX`). ``anchor_boxes`` zeroes the
    box deltas, so that the boxes are anchors and every image gets regions. ``metrics``: the evaluation the
    checkpoint records (as training writes it)."""
    import torch

    from shoeseg.checkpoint import save_checkpoint
    from shoeseg.model import build_model

    torch.manual_seed(seed)
    model = build_model(num_classes=1, weights=None, min_size=size_px, max_size=size_px,
                        box_detections_per_img=detections)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([-fg_logit, fg_logit]))
        model.roi_heads.mask_predictor.mask_fcn_logits.weight.zero_()
        model.roi_heads.mask_predictor.mask_fcn_logits.bias.fill_(6.0)
        if anchor_boxes:  # no random box deltas: the boxes are anchors, never strips along an edge
            for layer in (model.rpn.head.bbox_pred, model.roi_heads.box_predictor.bbox_pred):
                layer.weight.zero_()
                layer.bias.zero_()
    model.eval()
    save_checkpoint(path, model=model, class_names=["shoe"], config={"purpose": "backend tests"}, version=version,
                    serve_score_thresh=serve_score_thresh, metrics=metrics)
    return path


@dataclass
class Checkpoints:
    v1: Path
    v2: Path


def new_registry(root: Path, checkpoints: Checkpoints, *, promote: str | None = "test-v1"):
    from shoeseg_services.registry import ModelRegistry

    reg = ModelRegistry(root)
    reg.register(checkpoints.v1, metrics={"segm_AP": 0.1}, parent=None, meta={})
    reg.register(checkpoints.v2, metrics={"segm_AP": 0.2}, parent="test-v1", meta={})
    if promote:
        reg.promote(promote)
    return reg


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


def media_handler(server: MediaServer):
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


def setup_body(media_server: MediaServer, *, token: str = LEGACY_TOKEN, schema: str = POLYGON_CONFIG) -> dict:
    body = fixture_body("setup.json")
    body.update(hostname=media_server.url, access_token=token, schema=schema)
    return body


def skip_without_session_groups() -> None:
    """Skips a test of session scheduling groups (Linux autogroup) where the kernel has none, or refuses a fresh
    session changing its own nice (a sandboxed ``/proc``)."""
    import subprocess
    import sys

    if not Path("/proc/self/autogroup").exists():
        pytest.skip("this kernel has no session scheduling groups (/proc/self/autogroup)")
    probe = subprocess.run([sys.executable, "-c", "open('/proc/self/autogroup', 'w').write('1')"],
                           capture_output=True, text=True, timeout=60, start_new_session=True)
    if probe.returncode != 0:
        pytest.skip(f"a session may not change its nice here: {probe.stderr.strip().splitlines()[-1:]}")
