"""S3 access shared by the model registry and the image fetcher: one client per process, readable errors.

boto3 is imported here only, and only when an ``s3://`` location is used. The endpoint and the credentials come
from boto3's default chain: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (/ ``AWS_SESSION_TOKEN``),
``AWS_PROFILE`` and ``~/.aws``, or an instance role; ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) points
at an S3-compatible store (MinIO, Ceph, moto), ``AWS_DEFAULT_REGION`` picks the region. Those credentials go
only to that endpoint: nothing here sends them anywhere else.

Every failure is an :class:`S3Error` whose message names the bucket (and the key) and says what to fix: a
missing bucket or key, no credentials, credentials refused, an endpoint that cannot be reached.

Example:
    >>> parse_s3_uri("s3://shoes/models/prod")
    ('shoes', 'models/prod')
    >>> parse_s3_uri("s3://shoes")
    ('shoes', '')
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

log = logging.getLogger(__name__)

#: Seconds to wait for a connection to the endpoint (then a clear "cannot reach" error, not a hang).
CONNECT_TIMEOUT_S = 5.0

_clients: dict[tuple, Any] = {}
_clients_lock = threading.Lock()


class S3Error(RuntimeError):
    """An S3 request that failed; the message names the bucket and the key, and what to check."""

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        #: the S3 error code (``NoSuchKey``, ``NoSuchBucket``, ``PreconditionFailed``...), or a kind of our own
        #: (``NoCredentials``, ``Unreachable``)
        self.code = code


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")``.

    Raises:
        ValueError: not an ``s3://`` URI, or no bucket in it.
    """
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket or bucket in (".", "..") or any(c in bucket for c in "\\?#@ "):
        raise ValueError(f"{uri!r} names no valid bucket (expected s3://bucket/key)")
    return bucket, key


def s3_uri(bucket: str, key: str = "") -> str:
    return f"s3://{bucket}/{key}" if key else f"s3://{bucket}"


def client(*, read_timeout_s: float = 60.0):
    """The process's S3 client for the current ``AWS_*`` environment (made once per process and environment).

    Clients are thread-safe; a forked process (rq's work horse) makes its own.
    """
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    key = (os.getpid(), env, read_timeout_s)
    with _clients_lock:
        found = _clients.get(key)
        if found is not None:
            return found
        try:
            import boto3
            from botocore.config import Config
        except ImportError as e:
            raise RuntimeError("s3:// registries and images need boto3: pip install 'shoeseg[s3]'") from e

        config = Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=read_timeout_s,
                        retries={"max_attempts": 3, "mode": "standard"})
        made = boto3.session.Session().client("s3", config=config)
        _clients[key] = made
        log.debug("S3 client for %s", made.meta.endpoint_url)
        return made


def endpoint(c=None) -> str:
    """The endpoint URL requests go to (for messages)."""
    try:
        return (c or client()).meta.endpoint_url
    except Exception:  # noqa: BLE001 - only for a message
        return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"


def error_code(exc: BaseException) -> str | None:
    """The S3 error code of a botocore ``ClientError`` (``NoSuchKey``, ``404``, ``PreconditionFailed``...)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
    return None


#: The codes of an absent key: ``NoSuchKey`` (GET), a bare ``404`` (HEAD has no error body), ``NotFound``.
MISSING_CODES = ("404", "NoSuchKey", "NotFound")
#: The codes of a conditional create (``IfNoneMatch="*"``) that found its key taken: 412 when the object exists,
#: 409 while another conditional write of that key is in flight.
TAKEN_CODES = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


def is_missing(exc: BaseException) -> bool:
    """Whether ``exc`` says that the key does not exist (see :data:`MISSING_CODES`)."""
    return error_code(exc) in MISSING_CODES


def is_taken(exc: BaseException) -> bool:
    """Whether ``exc`` is a conditional create refused because the key exists (see :data:`TAKEN_CODES`)."""
    return error_code(exc) in TAKEN_CODES


def explain(exc: BaseException, *, bucket: str, key: str | None = None, action: str = "read", c=None) -> S3Error:
    """An :class:`S3Error` saying, in words, why ``action`` on ``s3://bucket/key`` failed with ``exc``.

    A bare 404 (a HEAD request has no error body) is told apart by asking whether the bucket exists.
    """
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    where = s3_uri(bucket, key or "")
    url = endpoint(c)
    if isinstance(exc, S3Error):
        return exc
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return S3Error(
            f"cannot {action} {where}: no AWS credentials ({exc}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE, or run with an instance role)", code="NoCredentials")
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError | ConnectionClosedError):
        return S3Error(f"cannot {action} {where}: the S3 endpoint {url} cannot be reached ({exc}); check "
                       "AWS_ENDPOINT_URL", code="Unreachable")
    if isinstance(exc, ReadTimeoutError):
        return S3Error(f"cannot {action} {where}: the S3 endpoint {url} did not answer in time ({exc})",
                       code="Timeout")
    if isinstance(exc, ClientError):
        code = error_code(exc) or "?"
        if code in MISSING_CODES and key:
            if not bucket_exists(bucket, c=c):
                code = "NoSuchBucket"
            else:
                return S3Error(f"cannot {action} {where}: there is no such key in bucket {bucket!r}", code="NoSuchKey")
        if code == "NoSuchBucket" or (code in ("404", "NotFound") and not key):
            return S3Error(f"cannot {action} {where}: bucket {bucket!r} does not exist at {url}", code="NoSuchBucket")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
            return S3Error(f"cannot {action} {where}: {url} refused the credentials ({code}); check "
                           "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY", code=code)
        if code in ("403", "AccessDenied", "Forbidden"):
            return S3Error(f"cannot {action} {where}: access denied by {url} (the credentials may not {action} it)",
                           code="AccessDenied")
        message = exc.response.get("Error", {}).get("Message") or str(exc)
        return S3Error(f"cannot {action} {where}: {code} ({message})", code=code)
    return S3Error(f"cannot {action} {where}: {type(exc).__name__}: {exc}")


def bucket_exists(bucket: str, *, c=None) -> bool:
    """Whether ``bucket`` exists (``True`` when that cannot be told, e.g. HEAD refused)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        (c or client()).head_bucket(Bucket=bucket)
    except ClientError as e:
        return error_code(e) not in ("404", "NoSuchBucket", "NotFound")
    except BotoCoreError:
        return True
    return True


def client_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a boto3 call raises (to catch them without importing botocore at module level)."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (ClientError, BotoCoreError)


def read_object(bucket: str, key: str, *, max_bytes: int, timeout_s: float) -> bytes:
    """The bytes of ``s3://bucket/key``, refused before reading when over ``max_bytes`` (and never read past it).

    Raises:
        S3Error: the object is missing or too large, or S3 cannot be reached (the message names the URI).

    Example:
        >>> read_object("shoes", "images/1.jpg", max_bytes=30 << 20, timeout_s=20)[:3]  # doctest: +SKIP
        b'\\xff\\xd8\\xff'
    """
    where = s3_uri(bucket, key)
    if not key or key.endswith("/"):
        raise S3Error(f"{where} names no object (a key is needed after the bucket)", code="NoKey")
    c = None
    try:
        c = client(read_timeout_s=timeout_s)
        head = c.head_object(Bucket=bucket, Key=key)
        size = int(head.get("ContentLength") or 0)
        if size > max_bytes:
            raise S3Error(f"{where} is {size} bytes, over the {max_bytes} byte limit", code="TooLarge")
        if size == 0:
            return b""  # a range of an empty object is refused (416); the decoder says it is no image
        obj = c.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{max_bytes}")  # at most one byte too many
        body = obj["Body"]
        try:
            chunks, total = [], 0
            for chunk in body.iter_chunks(1 << 16):
                total += len(chunk)
                if total > max_bytes:
                    raise S3Error(f"{where} is over the {max_bytes} byte limit", code="TooLarge")
                chunks.append(chunk)
        finally:
            body.close()
    except client_errors() as e:
        raise explain(e, bucket=bucket, key=key, c=c) from e
    return b"".join(chunks)
