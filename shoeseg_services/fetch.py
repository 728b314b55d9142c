"""Fetching task images the way Label Studio serves them, within limits.

Where an image may come from:

* Label Studio's own URLs (``/data/upload/...``, ``/data/local-files/?d=...``, ``/tasks/.../resolve/...``
  and absolute URLs on Label Studio's host): fetched from the ``hostname`` that ``/setup`` sent, with the
  header :func:`shoeseg_services.ls_api.auth_headers` makes by the SDK's rule (``Token <legacy token>``,
  or ``Bearer <access>`` for a personal access token, refreshed again on expiry or 401).
* plain ``http(s)`` URLs: only from the hosts in ``SHOESEG_ALLOWED_HOSTS`` (exact names, or ``*.domain``);
  redirects are followed only to allowed hosts; no credentials are sent to them.
* ``s3://bucket/key`` URIs (what Label Studio's S3 source storage puts in the tasks it sends the backend):
  read with this machine's own AWS credentials (:mod:`shoeseg_services.s3`) when the bucket is in ``SHOESEG_S3_BUCKETS``;
  otherwise asked of Label Studio (``/tasks/<id>/presign/?fileuri=<base64 URI>``, with its token), which
  answers with the bytes (a storage with "presign" off) or a redirect to a presigned URL of the S3 endpoint,
  followed only when that host is in ``SHOESEG_ALLOWED_HOSTS`` and without the Label Studio token. The AWS
  credentials go only to the S3 endpoint, the token only to Label Studio.
* local paths and ``file://`` URLs: only under ``SHOESEG_IMAGE_ROOT`` (symbolic links resolved first).
* ``data:image/...;base64,`` URIs.

Every download is bounded in bytes and time, every decode in pixels; EXIF orientation is applied as
Label Studio shows the image. Each failure raises :class:`ImageFetchError` naming the task and the URL.

One disk cache (``<SHOESEG_CACHE_DIR>/images``), shared by the backend and the worker: Label Studio uploads
(immutable, named with a unique prefix) are kept there by every fetch; :meth:`ImageFetcher.cached_file`
keeps any image there, for training, which reads files.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import httpx
import numpy as np
from PIL import Image, UnidentifiedImageError

from shoeseg_services.settings import Settings
from via_tools.files import atomic_write_bytes
from via_tools.images import ImageReadError, decode_image_scaled

log = logging.getLogger(__name__)

#: Relative URL prefixes that Label Studio itself serves (with auth).
LS_PREFIXES = ("/data/", "/tasks/", "/storage-data/", "/api/", "/projects/")
_MAX_REDIRECTS = 3


class ImageFetchError(ValueError):
    """An image that could not be fetched or decoded; the message names the task and the URL."""

    def __init__(self, message: str, *, task_id=None, url: str | None = None, unauthorized: bool = False,
                 reason: str | None = None):
        super().__init__(message)
        self.task_id = task_id
        self.url = url
        self.unauthorized = unauthorized
        #: the message without the task and the URL, to group identical failures of many tasks
        self.reason = reason or message


@dataclass(frozen=True)
class LabelStudioAccess:
    """Where Label Studio is and how to authenticate to it (from ``/setup``, else from the settings).

    Args:
        hostname: the server's base URL, e.g. ``http://localhost:8080``.
        token: a legacy API token (sent as ``Token``) or a personal access token (a JWT, refreshed to ``Bearer``).
        aliases: other base URLs of the same server (the ``hostname`` Label Studio announced when
            ``LABEL_STUDIO_URL`` overrides it); absolute URLs on them are fetched from ``hostname``.
        fallback_token: a second credential of the same server, tried once when ``token`` is refused (the
            configured ``LABEL_STUDIO_API_KEY``, only ever set when ``hostname`` is ``LABEL_STUDIO_URL``).

    Every credential here goes to ``hostname`` and nowhere else.
    """

    hostname: str | None
    token: str | None = None
    aliases: tuple[str, ...] = ()
    fallback_token: str | None = None


class SetupRefused(PermissionError):
    """A ``/setup`` names a Label Studio server this backend does not trust (answered 403)."""


def configured_access(settings: Settings) -> LabelStudioAccess:
    """The configured server and key (``LABEL_STUDIO_URL``, ``LABEL_STUDIO_API_KEY``), or no access at all."""
    url = settings.label_studio_url
    if not url:
        return LabelStudioAccess(hostname=None)
    aliases = (settings.label_studio_host,) if settings.label_studio_host else ()
    return LabelStudioAccess(hostname=url, token=settings.label_studio_api_key, aliases=aliases)

def setup_access(settings: Settings, hostname: str | None, token: str | None) -> LabelStudioAccess:
    """Where a ``/setup``'s Label Studio is, and which credentials may go to it.

    * ``hostname`` is ``LABEL_STUDIO_URL`` (or the ``LABEL_STUDIO_HOST`` it announces): requests go to
      ``LABEL_STUDIO_URL`` with the ``/setup`` token, and the configured key is tried when it is refused.
    * ``hostname`` is another server named in ``SHOESEG_ALLOWED_HOSTS``: requests go to it with the
      ``/setup`` token only; the configured key never goes there.
    * no ``hostname``: the configured access (the ``/setup`` token goes nowhere without its server).

    Raises:
        SetupRefused: any other hostname, or one holding a user or password.
    """
    configured = configured_access(settings)
    hostname = (hostname or "").strip().rstrip("/") or None
    if hostname is None:
        return configured
    parts = urlsplit(hostname)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SetupRefused(f"setup: hostname {hostname!r} is not an http(s) URL")
    if has_userinfo(hostname):
        raise SetupRefused("setup: the hostname holds a user or password; such URLs are refused")
    if configured.hostname and any(same_server(hostname, h) for h in (configured.hostname, *configured.aliases)):
        key = settings.label_studio_api_key
        aliases = tuple(a for a in (*configured.aliases, hostname) if not same_server(a, configured.hostname))
        return LabelStudioAccess(hostname=configured.hostname, token=token or key, aliases=tuple(dict.fromkeys(aliases)),
                                 fallback_token=key if token and key and key != token else None)
    _, host, port = origin(hostname)
    if host_allowed(host, port, settings.allowed_hosts):
        return LabelStudioAccess(hostname=hostname, token=token or None)
    trusted = settings.label_studio_url or "none configured"
    raise SetupRefused(
        f"setup: Label Studio at {hostname} is not trusted by this backend (LABEL_STUDIO_URL: {trusted}). "
        f"Set LABEL_STUDIO_URL to it (or LABEL_STUDIO_HOST, when it announces another name than the one the "
        f"backend reaches it by), or add {host}:{port} to SHOESEG_ALLOWED_HOSTS"
    )


@dataclass(frozen=True)
class FetchedImage:
    """Raw bytes of one image and the content digest that keys the prediction cache."""

    data: bytes
    digest: str
    source: str


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _split_entry(entry: str) -> tuple[str, int | None]:
    """``host`` -> (host, None); ``host:port`` and ``[v6]:port`` -> (host, port)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    host, sep, port = entry.rpartition(":")
    if sep and port.isdigit():
        return host, int(port)
    return entry, None


def host_allowed(host: str, port: int | None, allowed: tuple[str, ...]) -> bool:
    """Whether ``host:port`` matches an entry of ``SHOESEG_ALLOWED_HOSTS``.

    An entry ``host`` allows that host on ports 80 and 443 only; ``host:port`` that port only; ``*.domain``
    every subdomain (not the domain itself) on ports 80 and 443, ``*.domain:port`` on that port.

    Example:
        >>> host_allowed("img.example.org", 443, ("*.example.org",))
        True
        >>> host_allowed("localhost", 8080, ("localhost",))
        False
    """
    host = host.lower().rstrip(".")
    for entry in allowed:
        name, entry_port = _split_entry(entry.lower())
        if entry_port is None:
            if port not in _DEFAULT_PORTS.values():
                continue
        elif port != entry_port:
            continue
        if name.startswith("*."):
            if host.endswith(name[1:]):
                return True
        elif host == name.rstrip("."):
            return True
    return False


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:  # a port that is not a number
        port = None
    return parts.scheme, (parts.hostname or "").lower(), port


def same_server(a: str | None, b: str | None) -> bool:
    """Whether two base URLs name the same server (scheme, host and port)."""
    return bool(a) and bool(b) and origin(a) == origin(b)


def has_userinfo(url: str) -> bool:
    """Whether a URL carries ``user[:password]@`` (never forwarded: such URLs are refused)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return "@" in parts.netloc


class ImageFetcher:
    """Fetches and decodes task images under the backend's rules (see the module docstring).

    Args:
        settings: limits, the local image root, allowed hosts, the cache directory, fallback credentials.
        transport: an ``httpx`` transport (tests); ``None`` for the network.

    Example:
        >>> fetcher = ImageFetcher(Settings(image_root=Path("/srv/images")))  # doctest: +SKIP
        >>> img = fetcher.fetch("shoes/1.jpg", task_id=7, access=None)  # doctest: +SKIP
        >>> fetcher.decode(img, task_id=7)[0].shape  # doctest: +SKIP
        (480, 640, 3)
    """

    def __init__(self, settings: Settings, *, transport: httpx.BaseTransport | None = None):
        self.settings = settings
        self._transport = transport
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()
        self._root = settings.image_root.resolve() if settings.image_root else None

    @property
    def _client(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                self._http = httpx.Client(
                    timeout=httpx.Timeout(self.settings.fetch_timeout_s),
                    follow_redirects=False,
                    transport=self._transport,
                    headers={"User-Agent": "shoeseg-backend"},
                )
            return self._http

    def close(self) -> None:
        """Closes the connection pool (a new one is made if the fetcher is used again)."""
        with self._lock:
            http, self._http = self._http, None
        if http is not None:
            http.close()

    # -- public API ------------------------------------------------------------------------------
    def default_access(self) -> LabelStudioAccess:
        """Label Studio access from the settings (:func:`configured_access`)."""
        return configured_access(self.settings)

    def fetch(self, url: str, *, task_id, access: LabelStudioAccess | None) -> FetchedImage:
        """Returns the bytes of the image at ``url`` for task ``task_id``.

        Raises:
            ImageFetchError: naming the task and the URL, for any refusal, limit or network error.
        """
        if not isinstance(url, str) or not url.strip():
            raise ImageFetchError(f"task {task_id}: no image URL in the task data (got {url!r})", task_id=task_id)
        url = url.strip()
        try:
            data, source = self._fetch(url, task_id=task_id, access=access or self.default_access())
        except ImageFetchError:
            raise
        except httpx.TimeoutException as e:
            raise self._error(task_id, url, f"timed out after {self.settings.fetch_timeout_s:g} s ({e})") from e
        except httpx.HTTPError as e:
            raise self._error(task_id, url, f"cannot be downloaded ({type(e).__name__}: {e})") from e
        except OSError as e:
            raise self._error(task_id, url, f"cannot be read ({e.strerror or e})") from e
        return FetchedImage(data=data, digest=hashlib.sha256(data).hexdigest(), source=source)

    def decode(self, image: FetchedImage, *, task_id, fit_within: tuple[int, int] | None = None
               ) -> tuple[np.ndarray, tuple[int, int]]:
        """Decodes fetched bytes to RGB uint8 ``(H, W, 3)`` with EXIF orientation applied, within the pixel limit.

        Args:
            image: the fetched bytes.
            task_id: for error messages.
            fit_within: ``(min_size, max_size)`` of the model's resize: the image is shrunk to it while decoding.

        Returns:
            ``(array, (width_px, height_px))``: the (possibly shrunk) pixels and the image's full displayed size.
        """
        try:
            return decode_image_scaled(image.data, name=image.source, max_pixels=self.settings.max_image_pixels,
                                       fit_within=fit_within)
        except ImageReadError as e:
            raise ImageFetchError(f"task {task_id}: {e}", task_id=task_id, url=image.source,
                                  reason=str(e).replace(image.source, "<image>", 1)) from e

    def image_size(self, image: FetchedImage, *, task_id) -> tuple[int, int]:
        """``(width_px, height_px)`` from the file header, before any pixel is decoded."""
        try:
            with Image.open(io.BytesIO(image.data)) as im:
                return im.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ImageFetchError(f"task {task_id}: image {image.source!r} is not a readable image ({e})",
                                  task_id=task_id, url=image.source, reason=f"not a readable image ({e})") from e

    # -- sources ---------------------------------------------------------------------------------
    def _error(self, task_id, url: str, reason: str) -> ImageFetchError:
        shown = url if len(url) <= 200 else url[:200] + "..."
        return ImageFetchError(f"task {task_id}: image {shown!r} {reason}", task_id=task_id, url=url,
                               reason=f"image {reason}")

    def _fetch(self, url: str, *, task_id, access: LabelStudioAccess) -> tuple[bytes, str]:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme == "data":
            return self._from_data_uri(url, task_id=task_id), "data URI"
        if scheme in ("http", "https"):
            if has_userinfo(url):
                raise self._error(task_id, url, "holds a user or password (user:password@host); such URLs are "
                                  "refused so that no credential in them is forwarded")
            if access.hostname and origin(url)[1:] == origin(access.hostname)[1:]:
                return self._from_label_studio(url, task_id=task_id, access=access), url
            for alias in access.aliases:
                if access.hostname and origin(url)[1:] == origin(alias)[1:]:
                    path = parts.path + (f"?{parts.query}" if parts.query else "")
                    absolute = urljoin(access.hostname.rstrip("/") + "/", path.lstrip("/"))
                    return self._from_label_studio(absolute, task_id=task_id, access=access, shown=url), url
            _, host, port = origin(url)
            if not host_allowed(host, port, self.settings.allowed_hosts):
                raise self._error(
                    task_id, url,
                    f"is on {host}:{port}, which is not Label Studio's and not in SHOESEG_ALLOWED_HOSTS "
                    "(an entry 'host' allows ports 80 and 443; name other ports as 'host:port')",
                )
            return self._download(url, task_id=task_id, headers={}, allowed_origin=None), url
        if scheme == "file":
            return self._from_local(unquote(parts.path), url, task_id=task_id), url
        if scheme == "s3":
            return self._from_s3(url, task_id=task_id, access=access), url
        if scheme:
            raise self._error(task_id, url, f"has an unsupported scheme {scheme!r} (http, https, s3, file, data)")
        if url.startswith(LS_PREFIXES):
            if not access.hostname:
                raise self._error(
                    task_id, url,
                    "is a Label Studio URL but no Label Studio hostname is known "
                    "(connect the backend from Label Studio, or set LABEL_STUDIO_URL)",
                )
            absolute = urljoin(access.hostname.rstrip("/") + "/", url.lstrip("/"))
            return self._from_label_studio(absolute, task_id=task_id, access=access, shown=url), url
        return self._from_local(unquote(url), url, task_id=task_id), url

    def _from_data_uri(self, url: str, *, task_id) -> bytes:
        header, _, payload = url.partition(",")
        if ";base64" not in header:
            raise self._error(task_id, url, "is a data URI that is not base64")
        if len(payload) * 3 // 4 > self.settings.max_image_bytes:
            raise self._error(task_id, url, f"is over the {self.settings.max_image_bytes} byte limit")
        try:
            return base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError) as e:
            raise self._error(task_id, url, f"is a data URI with bad base64 ({e})") from e

    def _from_local(self, path: str, url: str, *, task_id) -> bytes:
        if self._root is None:
            raise self._error(task_id, url, "is a local path but SHOESEG_IMAGE_ROOT is not set")
        candidate = Path(path)
        if not candidate.is_absolute():
            candidate = self._root / candidate
        try:
            resolved = candidate.resolve(strict=True)
        except (FileNotFoundError, RuntimeError) as e:
            raise self._error(task_id, url, "does not exist") from e
        if not resolved.is_relative_to(self._root):
            raise self._error(task_id, url, f"is outside SHOESEG_IMAGE_ROOT ({self._root})")
        if not resolved.is_file():
            raise self._error(task_id, url, "is not a file")
        size = resolved.stat().st_size
        if size > self.settings.max_image_bytes:
            raise self._error(task_id, url, f"is {size} bytes, over the {self.settings.max_image_bytes} byte limit")
        return resolved.read_bytes()

    # -- S3 --------------------------------------------------------------------------------------
    def _from_s3(self, url: str, *, task_id, access: LabelStudioAccess) -> bytes:
        """An ``s3://`` URI: read directly (allowed bucket) or through Label Studio's presign endpoint."""
        from shoeseg_services.s3 import S3Error, parse_s3_uri, read_object

        try:
            bucket, key = parse_s3_uri(url)
        except ValueError as e:
            raise self._error(task_id, url, f"is not a usable S3 URI ({e})") from e
        if bucket in self.settings.s3_buckets:
            try:
                return read_object(bucket, key, max_bytes=self.settings.max_image_bytes,
                                   timeout_s=self.settings.fetch_timeout_s)
            except S3Error as e:
                raise self._error(task_id, url, f"cannot be read from S3: {e}") from e
        if access.hostname and task_id is not None and str(task_id).isdigit():
            fileuri = base64.urlsafe_b64encode(url.encode()).decode()
            resolve = urljoin(access.hostname.rstrip("/") + "/", f"tasks/{task_id}/presign/?fileuri={fileuri}")
            return self._from_label_studio(resolve, task_id=task_id, access=access, shown=url)
        raise self._error(
            task_id, url,
            f"is in bucket {bucket!r}, which is not in SHOESEG_S3_BUCKETS (buckets this backend reads with its own "
            "AWS credentials), and no Label Studio is known to resolve it (connect the backend from Label Studio "
            "or set LABEL_STUDIO_URL)",
        )

    # -- Label Studio ----------------------------------------------------------------------------
    def _cache_file(self, url: str) -> Path | None:
        if self.settings.cache_dir is None:
            return None
        key = hashlib.sha256(url.encode()).hexdigest()
        return self.settings.cache_dir / "images" / key[:2] / key

    def _cache_path(self, absolute_url: str) -> Path | None:
        if "/data/upload/" not in absolute_url:
            return None  # only uploads are immutable (Label Studio names them with a unique prefix)
        return self._cache_file(absolute_url)

    def cached_file(self, url: str, *, task_id, access: LabelStudioAccess | None) -> Path:
        """The image at ``url`` as a file of the cache, fetched (under the same rules as :meth:`fetch`) when absent.

        For training, which reads image files: the worker downloads each task's image once.

        Raises:
            ImageFetchError: as :meth:`fetch`; also when no cache directory is configured.
        """
        access = access or self.default_access()
        where = url if not access.hostname or "://" in url else urljoin(access.hostname.rstrip("/") + "/", url.lstrip("/"))
        path = self._cache_file(where)
        if path is None:
            raise ImageFetchError(f"task {task_id}: no SHOESEG_CACHE_DIR to keep image {url!r} in", task_id=task_id,
                                  url=url)
        if not path.is_file():
            atomic_write_bytes(path, self.fetch(url, task_id=task_id, access=access).data)
        return path

    def _from_label_studio(self, absolute_url: str, *, task_id, access: LabelStudioAccess, shown: str | None = None):
        cached = self._cache_path(absolute_url)
        if cached is not None and cached.is_file():
            return cached.read_bytes()
        token = access.token
        ls_origin = origin(absolute_url)
        data = None
        for attempt in range(2):
            headers = self._auth_headers(access, force_refresh=attempt > 0, task_id=task_id, url=shown or absolute_url)
            try:
                data = self._download(absolute_url, task_id=task_id, headers=headers, allowed_origin=ls_origin,
                                      shown=shown)
                break
            except _Unauthorized as e:
                if attempt == 0 and token:
                    continue  # an access token that expired early: refresh once (a legacy token is refused again)
                hint = (
                    "no token: connect the backend from Label Studio or set LABEL_STUDIO_API_KEY"
                    if not token
                    else "the token was refused; Label Studio sends the project owner's legacy token, which needs "
                    "legacy tokens enabled in the organization, or set LABEL_STUDIO_API_KEY to a personal access token"
                )
                err = self._error(task_id, shown or absolute_url, f"was refused by Label Studio (HTTP {e.status}): {hint}")
                err.unauthorized = True
                raise err from None
        assert data is not None
        if cached is not None:
            atomic_write_bytes(cached, data)
        return data

    def _auth_headers(self, access: LabelStudioAccess, *, force_refresh: bool, task_id, url: str) -> dict[str, str]:
        from shoeseg_services.ls_api import LabelStudioError, auth_headers

        try:
            return auth_headers(access.hostname or "", access.token, fresh=force_refresh,
                                timeout_s=self.settings.fetch_timeout_s)
        except LabelStudioError as e:
            raise self._error(task_id, url, f"cannot be fetched: {e}") from e

    # -- HTTP ------------------------------------------------------------------------------------
    def _download(self, url: str, *, task_id, headers: dict[str, str], allowed_origin, shown: str | None = None) -> bytes:
        limit = self.settings.max_image_bytes
        deadline = time.monotonic() + self.settings.fetch_timeout_s
        current = url
        for _ in range(_MAX_REDIRECTS + 1):
            send_headers = headers if allowed_origin is None or origin(current) == allowed_origin else {}
            with self._client.stream("GET", current, headers=send_headers) as r:
                if r.is_redirect:
                    target = urljoin(current, r.headers.get("location", ""))
                    tscheme, thost, tport = origin(target)
                    same_ls = allowed_origin is not None and origin(target) == allowed_origin
                    if has_userinfo(target):
                        raise self._error(task_id, shown or url, "redirects to a URL with a user or password")
                    if tscheme not in ("http", "https") or not (same_ls or host_allowed(thost, tport, self.settings.allowed_hosts)):
                        # the query is left out of the message: a presigned URL's signature is a credential
                        shown_target = urlsplit(target)._replace(query="", fragment="").geturl()
                        raise self._error(task_id, shown or url,
                                          f"redirects to {shown_target!r}, which is not an allowed host (add "
                                          f"{thost}:{tport} to SHOESEG_ALLOWED_HOSTS to follow it, e.g. to the S3 "
                                          "endpoint of Label Studio's presigned URLs)")
                    current = target
                    continue
                if r.status_code in (401, 403) and allowed_origin is not None and origin(current) == allowed_origin:
                    raise _Unauthorized(r.status_code)  # (a refusal after a redirect is the other host's, not LS's)
                if r.status_code != 200:
                    where = "" if current == url else f" from {origin(current)[1]}:{origin(current)[2]} (redirected there)"
                    raise self._error(task_id, shown or url, f"cannot be downloaded{where} (HTTP {r.status_code})")
                declared = r.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > limit:
                    raise self._error(task_id, shown or url, f"is {declared} bytes, over the {limit} byte limit")
                chunks, total = [], 0
                for chunk in r.iter_bytes():
                    total += len(chunk)
                    if total > limit:
                        raise self._error(task_id, shown or url, f"is over the {limit} byte limit")
                    if time.monotonic() > deadline:
                        raise self._error(task_id, shown or url, f"timed out after {self.settings.fetch_timeout_s:g} s")
                    chunks.append(chunk)
                return b"".join(chunks)
        raise self._error(task_id, shown or url, f"redirects more than {_MAX_REDIRECTS} times")


class _Unauthorized(Exception):
    def __init__(self, status: int):
        super().__init__(status)
        self.status = status
