"""Settings of the ML backend, read from the environment (the same names everywhere in ShoeSeg)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit


def _split_hosts(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    hosts = tuple(h.strip().lower() for h in value.split(",") if h.strip())
    for h in hosts:
        if "/" in h or "@" in h or h.count(":") > 1 and not h.startswith("["):
            raise ValueError(
                f"environment variable SHOESEG_ALLOWED_HOSTS has {h!r}: expected host, host:port, *.domain or "
                "*.domain:port (no scheme, path or user)"
            )
    return hosts


def _url(env: Mapping[str, str], name: str) -> str | None:
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"environment variable {name}={raw!r} is not an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"environment variable {name} must not hold a user or password in the URL")
    return raw.rstrip("/")


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"environment variable {name}={raw!r} is not a boolean (true/false)")


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from e
    if minimum is not None and value < minimum:
        raise ValueError(f"environment variable {name}={raw!r} must be at least {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={raw!r} is not a number") from e


@dataclass(frozen=True)
class Settings:
    """Everything the backend can be configured with.

    Args:
        model_dir: root of the model registry (``SHOESEG_MODEL_DIR``).
        redis_url: Redis for the training queue (``REDIS_URL``); ``None``: training events answer 503.
        label_studio_url / label_studio_api_key: the one Label Studio server this backend trusts
            (``LABEL_STUDIO_URL``) and its key (``LABEL_STUDIO_API_KEY``). The key is only ever sent to that
            URL; with no URL set it is sent nowhere.
        label_studio_host: the public URL that server announces in ``/setup`` when it differs from
            ``LABEL_STUDIO_URL`` (``LABEL_STUDIO_HOST``, as Label Studio itself calls it; e.g. compose, where
            the browser says ``localhost:8080`` and the backend reaches ``label-studio:8080``).
        image_root: local directory the backend may read images from (``SHOESEG_IMAGE_ROOT``).
        allowed_hosts: hosts that plain http(s) image URLs may point at, and other Label Studio servers
            ``/setup`` may name (``SHOESEG_ALLOWED_HOSTS``): ``host`` (ports 80 and 443 only), ``host:port``,
            ``*.domain`` or ``*.domain:port``.
        cache_dir: where downloaded Label Studio uploads are kept (``SHOESEG_CACHE_DIR``); ``None``: no disk cache.
        device: ``auto``, ``cpu`` or ``cuda`` (``SHOESEG_DEVICE``).
        basic_auth_user / basic_auth_pass: require HTTP basic auth when both are set.
        insecure: allow serving on a non-loopback address without basic auth (``SHOESEG_INSECURE``).
        min_new_annotations: new annotations that start a retraining (``SHOESEG_MIN_NEW_ANNOTATIONS``,
            or ``MIN_NEW_ANNOTATIONS``; at least 1).
        score_thresh: detections below this score are not returned (``SHOESEG_SCORE_THRESH``).
        max_image_bytes / max_image_pixels / fetch_timeout_s: limits on each image download.
        max_request_bytes: larger request bodies are refused with 413.
        max_tasks_per_request: ``/predict`` requests with more tasks answer 413
            (``SHOESEG_MAX_TASKS_PER_REQUEST``). Label Studio 1.23's "Retrieve predictions" sends every
            selected task in one request; its own prediction jobs use pages of 100.
        max_request_pixels: the images of one ``/predict`` request may hold at most this many pixels in all
            (``SHOESEG_MAX_REQUEST_PIXELS``, counted at their full size); more answers 413.
        decode_workers: images decoded at once in the whole process (``SHOESEG_DECODE_WORKERS``); bounds the
            memory of full-size decodes under concurrent requests.
        result_cache_size: predictions kept in memory, per (image, model version, labeling config).
        reload_interval_s: how often the registry's ``current`` pointer is checked for a new version.
        batch_size: images fetched, decoded and inferred together in a request (``SHOESEG_BATCH_SIZE``).
        fetch_workers: parallel image downloads per batch.

    Example:
        >>> s = Settings.from_env({"SHOESEG_MODEL_DIR": "/srv/models", "SHOESEG_ALLOWED_HOSTS": "a.org, b.org"})
        >>> s.allowed_hosts
        ('a.org', 'b.org')
    """

    model_dir: Path = Path("models")
    redis_url: str | None = None
    label_studio_url: str | None = None
    label_studio_api_key: str | None = None
    label_studio_host: str | None = None
    image_root: Path | None = None
    allowed_hosts: tuple[str, ...] = ()
    cache_dir: Path | None = None
    device: str = "auto"
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    insecure: bool = False
    min_new_annotations: int = 10
    score_thresh: float = 0.5
    max_image_bytes: int = 30 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    fetch_timeout_s: float = 20.0
    max_request_bytes: int = 20 * 1024 * 1024
    max_tasks_per_request: int = 100
    max_request_pixels: int = 2_000_000_000
    decode_workers: int = 2
    result_cache_size: int = 2048
    reload_interval_s: float = 1.0
    batch_size: int = 4
    fetch_workers: int = 8

    @property
    def auth_enabled(self) -> bool:
        return bool(self.basic_auth_user) and self.basic_auth_pass is not None

    def with_(self, **changes) -> Settings:
        """A copy with some fields changed (``Settings`` is frozen)."""
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Reads the settings from ``env`` (default: ``os.environ``), raising ``ValueError`` naming a bad variable."""
        env = os.environ if env is None else env
        image_root = env.get("SHOESEG_IMAGE_ROOT") or None
        cache_dir = env.get("SHOESEG_CACHE_DIR") or None
        return cls(
            model_dir=Path(env.get("SHOESEG_MODEL_DIR") or "models"),
            redis_url=env.get("REDIS_URL") or None,
            label_studio_url=_url(env, "LABEL_STUDIO_URL"),
            label_studio_host=_url(env, "LABEL_STUDIO_HOST"),
            label_studio_api_key=env.get("LABEL_STUDIO_API_KEY") or None,
            image_root=Path(image_root) if image_root else None,
            allowed_hosts=_split_hosts(env.get("SHOESEG_ALLOWED_HOSTS")),
            cache_dir=Path(cache_dir) if cache_dir else None,
            device=env.get("SHOESEG_DEVICE") or "auto",
            basic_auth_user=env.get("BASIC_AUTH_USER") or None,
            basic_auth_pass=env.get("BASIC_AUTH_PASS") or None,
            insecure=_bool(env, "SHOESEG_INSECURE", False),
            min_new_annotations=_int(
                env, "SHOESEG_MIN_NEW_ANNOTATIONS" if env.get("SHOESEG_MIN_NEW_ANNOTATIONS") else "MIN_NEW_ANNOTATIONS", 10,
                minimum=1,
            ),
            score_thresh=_float(env, "SHOESEG_SCORE_THRESH", 0.5),
            max_image_bytes=_int(env, "SHOESEG_MAX_IMAGE_BYTES", 30 * 1024 * 1024),
            max_image_pixels=_int(env, "SHOESEG_MAX_IMAGE_PIXELS", 50_000_000),
            fetch_timeout_s=_float(env, "SHOESEG_FETCH_TIMEOUT_S", 20.0),
            max_request_bytes=_int(env, "SHOESEG_MAX_REQUEST_BYTES", 20 * 1024 * 1024, minimum=1),
            max_tasks_per_request=_int(env, "SHOESEG_MAX_TASKS_PER_REQUEST", 100, minimum=1),
            max_request_pixels=_int(env, "SHOESEG_MAX_REQUEST_PIXELS", 2_000_000_000, minimum=1),
            decode_workers=_int(env, "SHOESEG_DECODE_WORKERS", 2, minimum=1),
            result_cache_size=_int(env, "SHOESEG_RESULT_CACHE_SIZE", 2048),
            reload_interval_s=_float(env, "SHOESEG_RELOAD_INTERVAL_S", 1.0),
            batch_size=_int(env, "SHOESEG_BATCH_SIZE", 4, minimum=1),
            fetch_workers=_int(env, "SHOESEG_FETCH_WORKERS", 8, minimum=1),
        )
