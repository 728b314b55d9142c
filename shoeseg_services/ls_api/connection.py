"""Connecting to Label Studio: the client, the credentials it sends, its errors, and which failures to retry.

* :func:`connect` makes the client every other call of :mod:`shoeseg_services.ls_api` takes: the SDK's
  ``LabelStudio`` with a :class:`Connection` beside it, which keeps what the SDK does not show (the server's
  URL, the key and the scheme it is sent in) and makes the requests the SDK has no method for;
* :func:`auth_headers` is the ``Authorization`` header of image downloads (:class:`Credentials`: a legacy token
  as ``Token``, a personal access token refreshed to ``Bearer``, as the SDK decides);
* :func:`calls` and :func:`request_json` turn what goes wrong into one-line :class:`LabelStudioError` naming the
  server and the call; :func:`is_transient` and :func:`call` say which failures are worth a retry.

A key, and every token made from it, is only ever sent to the server it was given for: the token refresh follows
no redirect, and a request that is redirected to another server loses its ``Authorization`` header (httpx drops
it whenever the scheme, host or port changes, but for ``http`` to ``https`` on one host).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

from via_tools.errors import AnnotationError

log = logging.getLogger(__name__)


class LabelStudioError(AnnotationError):
    """The Label Studio server cannot be reached, refuses the key, or refuses a request; names the URL."""


class LabelStudioUnavailable(RuntimeError):
    """Label Studio (or an image host) could not be reached: a transient failure worth retrying."""


def _jwt_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT, not verified (only the server can), or None when ``token`` is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        header, claims, _ = (base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)) for part in parts)
        header, claims = json.loads(header), json.loads(claims)
    except ValueError:  # not base64 (binascii.Error) or not JSON (also in UTF-8): both are ValueErrors
        return None
    return claims if isinstance(header, dict) and isinstance(claims, dict) else None


class Credentials:
    """An API key for one Label Studio server, and the ``Authorization`` header it is sent as.

    The scheme is decided once, when the credentials are made, by the SDK's rule: a key that is a JWT is a
    personal access token (a refresh token), exchanged for an access token at the server
    (``POST <url>/api/token/refresh/``, following no redirect), which is reused until it expires and sent as
    ``Bearer <access>``; any other key is a legacy token, sent as ``Token <key>``.

    Example:
        >>> Credentials("http://localhost:8080", "0123abcd", timeout_s=20).authorization()
        'Token 0123abcd'
    """

    def __init__(self, url: str, key: str, *, timeout_s: float) -> None:
        self.url = url.rstrip("/")
        #: a personal access token (``Bearer``), else a legacy token (``Token``)
        self.personal = _jwt_claims(key) is not None
        self.key = key
        self._timeout_s = timeout_s
        self._access: tuple[str, float | None] | None = None  # the access token and when it expires
        self._lock = threading.Lock()

    def authorization(self, *, fresh: bool = False) -> str:
        """The header's value; ``fresh=True`` refreshes the access token first (the server refused it).

        Raises:
            LabelStudioError: the server refused to refresh the personal access token, or could not be reached.
        """
        if not self.personal:
            return f"Token {self.key}"
        with self._lock:
            expires = self._access[1] if self._access else None
            if fresh or self._access is None or (expires is not None and expires <= time.time()):
                self._access = self._refresh()
            return f"Bearer {self._access[0]}"

    def _refresh(self) -> tuple[str, float | None]:
        import httpx

        try:
            r = httpx.post(f"{self.url}/api/token/refresh/", json={"refresh": self.key}, timeout=self._timeout_s,
                           follow_redirects=False)
        except httpx.HTTPError as e:
            raise LabelStudioError(
                f"cannot reach Label Studio at {self.url} to refresh the personal access token ({e})") from e
        access = None
        if r.status_code == 200:
            with contextlib.suppress(ValueError):
                body = r.json()
                access = body.get("access") if isinstance(body, dict) else None
        if not isinstance(access, str) or not access:
            raise LabelStudioError(
                f"Label Studio at {self.url} refused to refresh the personal access token (HTTP {r.status_code})")
        expires = (_jwt_claims(access) or {}).get("exp")
        return access, float(expires) if isinstance(expires, int | float) else None


#: Tries after the first of a raw request that failed to connect or was answered 408, 409, 429 or 5xx (the SDK's).
RAW_RETRIES = 2


class Connection:
    """What ShoeSeg keeps of a Label Studio client it made: the server's URL, its :class:`Credentials`, and an
    HTTP client for the requests the SDK has no method for (image uploads).

    The HTTP client has the SDK client's timeout and httpx's default connection limits; it follows redirects as
    the SDK's does, the ``Authorization`` header only on the same server (see the module docstring).
    """

    def __init__(self, url: str, api_key: str, *, timeout_s: float) -> None:
        self.url = url.rstrip("/")
        self.credentials = Credentials(self.url, api_key, timeout_s=timeout_s)
        self.timeout_s = timeout_s
        self._http = None
        self._lock = threading.Lock()

    def _client(self):
        import httpx

        with self._lock:
            if self._http is None:
                self._http = httpx.Client(base_url=self.url + "/", timeout=self.timeout_s, follow_redirects=True)
            return self._http

    def request(self, path: str, *, method: str, **kw: Any):
        """An ``httpx.Response`` to ``method`` on ``<url>/<path>`` with the key, retried as the SDK retries.

        Raises:
            httpx.TransportError: the server cannot be reached (after the retries).
            LabelStudioError: a personal access token that cannot be refreshed.

        Example:
            >>> connect(URL, KEY).connection.request("api/projects/3/file-uploads", method="GET").json()  # doctest: +SKIP
            [{'id': 1, 'file': 'upload/3/1f2e3d4c-IMG_0001.jpg', 'size': 28113}]
        """
        import httpx

        for attempt in range(RAW_RETRIES + 1):
            headers = {"Authorization": self.credentials.authorization()}
            try:
                r = self._client().request(method, path, headers=headers, **kw)
            except (httpx.ConnectError, httpx.RemoteProtocolError):
                if attempt == RAW_RETRIES:
                    raise
            else:
                if attempt == RAW_RETRIES or not (r.status_code >= 500 or r.status_code in (408, 409, 429)):
                    return r
            time.sleep(min(2.0 ** attempt, 60.0) * random.uniform(0.9, 1.1))
        raise AssertionError("unreachable")  # pragma: no cover


def _connection(client: Any) -> Connection | None:
    found = getattr(client, "connection", None)
    return found if isinstance(found, Connection) else None


def base_url(client: Any) -> str:
    """The server URL a client made by :func:`connect` talks to."""
    found = _connection(client)
    return found.url if found is not None else "<unknown Label Studio URL>"


@contextlib.contextmanager
def calls(client: Any, what: str) -> Iterator[None]:
    """Turns transport and API errors into one-line :class:`LabelStudioError` naming the server and the call."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    url = base_url(client)
    try:
        yield
    except httpx.TransportError as e:
        raise LabelStudioError(f"cannot reach Label Studio at {url} ({what}): {e}") from e
    except ApiError as e:
        if e.status_code in (401, 403):
            raise LabelStudioError(
                f"Label Studio at {url} refused the API key ({e.status_code}) while trying to {what}; "
                "check the key (a legacy token or a personal access token)"
            ) from e
        body = e.body if not isinstance(e.body, dict) else (e.body.get("detail") or e.body.get("validation_errors") or e.body)
        raise LabelStudioError(f"Label Studio at {url} answered {e.status_code} to {what}: {str(body)[:300]}") from e


def request_json(client: Any, path: str, *, method: str, what: str, **kw: Any) -> Any:
    """A raw request with the client's credentials (:meth:`Connection.request`); returns the decoded JSON.

    Raises:
        LabelStudioError: the client was not made by :func:`connect`, the server cannot be reached, refuses the
            key or the request (names the URL).
    """
    import httpx

    found = _connection(client)
    if found is None:
        raise LabelStudioError(f"cannot {what}: the Label Studio client was not made by shoeseg_services.ls_api.connect")
    try:
        r = found.request(path, method=method, **kw)
    except httpx.TransportError as e:
        raise LabelStudioError(f"cannot reach Label Studio at {found.url} ({what}): {e}") from e
    if r.status_code in (401, 403):
        raise LabelStudioError(f"Label Studio at {found.url} refused the API key ({r.status_code}) while trying to {what}")
    if r.status_code >= 400:
        raise LabelStudioError(f"Label Studio at {found.url} answered {r.status_code} to {what}: {r.text[:300]}")
    return r.json() if r.content else None


def connect(url: str | None, api_key: str | None, *, timeout_s: float = 60.0) -> Any:
    """A ``label_studio_sdk.LabelStudio`` client for ``url`` with ``api_key`` (legacy token or personal access
    token), with its :class:`Connection` as ``client.connection``.

    Raises:
        LabelStudioError: either is missing.
        label_studio_sdk.core.api_error.ApiError: a personal access token that has expired (the SDK's check).

    Example:
        >>> client = connect("http://localhost:8080", "0123abcd")  # doctest: +SKIP
        >>> client.connection.url  # doctest: +SKIP
        'http://localhost:8080'
    """
    # imported here: only a process that talks to Label Studio pays for the SDK
    from label_studio_sdk import LabelStudio

    if not url or not api_key:
        raise LabelStudioError("LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are needed to read and write Label Studio")

    connection = Connection(url, api_key, timeout_s=timeout_s)
    client = LabelStudio(base_url=connection.url, api_key=connection.credentials.key, timeout=connection.timeout_s)
    client.connection = connection
    return client


_credentials: dict[tuple[str, str], Credentials] = {}
_credentials_lock = threading.Lock()
_MAX_CREDENTIALS = 256


def auth_headers(base_url: str, token: str | None, *, fresh: bool = False, timeout_s: float = 20.0) -> dict[str, str]:
    """The ``Authorization`` header for ``base_url`` (:class:`Credentials`, kept per server and token).

    A legacy token is sent as ``Token <key>``; a personal access token (a JWT refresh token) is exchanged for
    an access token at ``base_url`` (``POST /api/token/refresh/``), reused until it expires and sent as
    ``Bearer <access>``. ``fresh=True`` forgets the access token (the server refused it). The header is
    only ever made for ``base_url``: a token never goes to another server.

    Raises:
        LabelStudioError: the server refused to refresh the personal access token, or could not be reached.
    """
    if not token:
        return {}
    key = (base_url.rstrip("/"), token)
    with _credentials_lock:
        found = _credentials.get(key)
        if found is None:
            found = Credentials(key[0], token, timeout_s=timeout_s)
            if len(_credentials) >= _MAX_CREDENTIALS:
                _credentials.pop(next(iter(_credentials)))
            _credentials[key] = found
    return {"Authorization": found.authorization(fresh=fresh)}


def is_transient(exc: BaseException) -> bool:
    """True for failures a retry may cure: Label Studio or an image host unreachable, timeouts, HTTP 5xx, 429."""
    import httpx

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, LabelStudioUnavailable | httpx.TransportError | ConnectionError | TimeoutError):
            return True
        status = getattr(e, "status_code", None)
        if isinstance(status, int) and (status >= 500 or status == 429):
            return True
        e = e.__cause__ or e.__context__
    return False


def call(what: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, a transient failure raised as :class:`LabelStudioUnavailable` naming ``what``."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:
        if is_transient(e):
            raise LabelStudioUnavailable(f"{what}: Label Studio is unreachable or failing: {e}") from e
        raise
