"""Settings of the ML backend, read from the environment (the same names everywhere in ShoeSeg)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path


def _split_hosts(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(h.strip().lower() for h in value.split(",") if h.strip())


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from e


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
        label_studio_url / label_studio_api_key: fallback server and key for image downloads when
            ``/setup`` has not told the backend (``LABEL_STUDIO_URL``, ``LABEL_STUDIO_API_KEY``).
        image_root: local directory the backend may read images from (``SHOESEG_IMAGE_ROOT``).
        allowed_hosts: hosts plain http(s) image URLs may point at (``SHOESEG_ALLOWED_HOSTS``);
            Label Studio's own host is always allowed.
        cache_dir: where downloaded Label Studio uploads are kept (``SHOESEG_CACHE_DIR``); ``None``: no disk cache.
        device: ``auto``, ``cpu`` or ``cuda`` (``SHOESEG_DEVICE``).
        basic_auth_user / basic_auth_pass: require HTTP basic auth when both are set.
        min_new_annotations: new annotations that start a retraining (``SHOESEG_MIN_NEW_ANNOTATIONS``,
            or ``MIN_NEW_ANNOTATIONS``).
        score_thresh: detections below this score are not returned (``SHOESEG_SCORE_THRESH``).
        max_image_bytes / max_image_pixels / fetch_timeout_s: limits on each image download.
        max_request_bytes: larger request bodies are refused with 413.
        result_cache_size: predictions kept in memory, per (image, model version, labeling config).
        reload_interval_s: how often the registry's ``current`` pointer is checked for a new version.
        batch_size: images per forward pass.
        fetch_workers: parallel image downloads per request.

    Example:
        >>> s = Settings.from_env({"SHOESEG_MODEL_DIR": "/srv/models", "SHOESEG_ALLOWED_HOSTS": "a.org, b.org"})
        >>> s.allowed_hosts
        ('a.org', 'b.org')
    """

    model_dir: Path = Path("models")
    redis_url: str | None = None
    label_studio_url: str | None = None
    label_studio_api_key: str | None = None
    image_root: Path | None = None
    allowed_hosts: tuple[str, ...] = ()
    cache_dir: Path | None = None
    device: str = "auto"
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    min_new_annotations: int = 10
    score_thresh: float = 0.5
    max_image_bytes: int = 30 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    fetch_timeout_s: float = 20.0
    max_request_bytes: int = 20 * 1024 * 1024
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
            label_studio_url=(env.get("LABEL_STUDIO_URL") or None),
            label_studio_api_key=env.get("LABEL_STUDIO_API_KEY") or None,
            image_root=Path(image_root) if image_root else None,
            allowed_hosts=_split_hosts(env.get("SHOESEG_ALLOWED_HOSTS")),
            cache_dir=Path(cache_dir) if cache_dir else None,
            device=env.get("SHOESEG_DEVICE") or "auto",
            basic_auth_user=env.get("BASIC_AUTH_USER") or None,
            basic_auth_pass=env.get("BASIC_AUTH_PASS"),
            min_new_annotations=_int(
                env, "SHOESEG_MIN_NEW_ANNOTATIONS" if env.get("SHOESEG_MIN_NEW_ANNOTATIONS") else "MIN_NEW_ANNOTATIONS", 10
            ),
            score_thresh=_float(env, "SHOESEG_SCORE_THRESH", 0.5),
            max_image_bytes=_int(env, "SHOESEG_MAX_IMAGE_BYTES", 30 * 1024 * 1024),
            max_image_pixels=_int(env, "SHOESEG_MAX_IMAGE_PIXELS", 50_000_000),
            fetch_timeout_s=_float(env, "SHOESEG_FETCH_TIMEOUT_S", 20.0),
            max_request_bytes=_int(env, "SHOESEG_MAX_REQUEST_BYTES", 20 * 1024 * 1024),
            result_cache_size=_int(env, "SHOESEG_RESULT_CACHE_SIZE", 2048),
            reload_interval_s=_float(env, "SHOESEG_RELOAD_INTERVAL_S", 1.0),
            batch_size=_int(env, "SHOESEG_BATCH_SIZE", 4),
            fetch_workers=_int(env, "SHOESEG_FETCH_WORKERS", 8),
        )
