"""Fixtures of the security suite: a real backend process, and local listeners that record every request.

A listener stands for a host an attacker controls (or a host the backend must not reach): the tests assert
on what it received, never on what the backend says it did.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from tests.e2e.backend_process import start_backend, stop_backend
from tests.helpers import make_checkpoint
from tests.security.requests import SECRET_KEY


def png_bytes(width_px: int = 32, height_px: int = 24, colour=(10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width_px, height_px), colour).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Listener:
    """An HTTP server on loopback that records ``(method, path, headers)`` of every request it gets.

    Routes: ``/redirect?to=URL`` (302), ``/img.png`` (a small PNG), anything else 404.
    """

    port: int = 0
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def clear(self) -> None:
        self.requests.clear()

    def authorizations(self) -> list[str]:
        return [h["authorization"] for _, _, h in self.requests if "authorization" in h]


def _handler(listener: Listener):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _record_and_answer(self):
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                self.rfile.read(n)
            parts = urlsplit(self.path)
            listener.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
            if parts.path.endswith("/redirect"):
                self.send_response(302)
                self.send_header("Location", parse_qs(parts.query)["to"][0])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body, code = (png_bytes(), 200) if parts.path == "/img.png" else (b"not here", 404)
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = _record_and_answer

    return Handler


def _listening():
    listener = Listener()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(listener))
    listener.port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield listener
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="session")
def attacker():
    """A host nobody configured: nothing may reach it carrying a credential, most things not at all."""
    yield from _listening()


@pytest.fixture(scope="session")
def allowed_host():
    """A host named in ``SHOESEG_ALLOWED_HOSTS`` (as ``127.0.0.1:<port>``)."""
    yield from _listening()


@pytest.fixture(scope="session")
def security_registry(tmp_path_factory):
    from shoeseg_services.registry import ModelRegistry

    root = tmp_path_factory.mktemp("security-models")
    reg = ModelRegistry(root / "models")
    ckpt = make_checkpoint(root / "v1.pt", version="sec-v1", fg_logit=4.0, detections=2, seed=3)
    reg.register(ckpt, metrics={}, parent=None, meta={})
    reg.promote("sec-v1")
    return reg


@pytest.fixture(scope="session")
def image_root(tmp_path_factory):
    """``SHOESEG_IMAGE_ROOT`` with one image, a secret beside it and a symbolic link out of it."""
    base = tmp_path_factory.mktemp("security-files")
    root = base / "images"
    root.mkdir()
    (root / "ok.png").write_bytes(png_bytes())
    (base / "secret.png").write_bytes(png_bytes(colour=(255, 0, 0)))
    (root / "link.png").symlink_to(base / "secret.png")
    return root


@pytest.fixture(scope="session")
def exposed_backend(security_registry, image_root, allowed_host, tmp_path_factory):
    """``shoeseg serve`` as the issue found it exploitable: a configured key, no ``LABEL_STUDIO_URL``, no auth."""
    backend = start_backend(tmp_path_factory.mktemp("security-backend"), registry_root=security_registry.root, env={
        "LABEL_STUDIO_API_KEY": SECRET_KEY,
        "SHOESEG_ALLOWED_HOSTS": f"127.0.0.1:{allowed_host.port}",
        "SHOESEG_IMAGE_ROOT": str(image_root),
        "SHOESEG_MAX_REQUEST_BYTES": "200000",
    })
    yield backend
    stop_backend(backend)
