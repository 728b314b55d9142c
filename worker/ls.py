"""Label Studio helpers of the jobs: the client, task images on disk, and pushing predictions back."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from via_tools.labelstudio import file_name_from_ls_url
from worker.settings import LoopSettings

log = logging.getLogger(__name__)


class LabelStudioUnavailable(RuntimeError):
    """Label Studio (or an image host) could not be reached: a transient failure worth retrying."""


def client_from_settings(settings: LoopSettings):
    """A ``label_studio_sdk.LabelStudio`` client for ``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY``.

    Raises:
        ValueError: either variable is unset.
    """
    from label_studio_sdk import LabelStudio

    if not settings.label_studio_url or not settings.label_studio_api_key:
        raise ValueError("the worker needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to read and write Label Studio")
    return LabelStudio(base_url=settings.label_studio_url.rstrip("/"), api_key=settings.label_studio_api_key)


def polygon_control(project: Any) -> tuple[str, str, list[str]]:
    """``(from_name, to_name, labels)`` of the project's first ``PolygonLabels`` control.

    Raises:
        ValueError: the labeling config has no ``PolygonLabels``.
    """
    parsed = getattr(project, "parsed_label_config", None) or {}
    for name, control in parsed.items():
        if isinstance(control, dict) and str(control.get("type", "")).lower() == "polygonlabels":
            return name, (control.get("to_name") or ["image"])[0], list(control.get("labels") or [])
    raise ValueError(f"project {getattr(project, 'id', '?')}: the labeling config has no PolygonLabels control")


def is_transient(exc: BaseException) -> bool:
    """True for failures a retry may cure: Label Studio or an image host unreachable, timeouts, HTTP 5xx."""
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


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class TaskImages:
    """Task images fetched once (with the Label Studio token) and kept under ``<cache>/images/<project>/``.

    A file is named by the task id and a hash of its URL, so a task whose image changes gets a new file.

    Example:
        >>> images = TaskImages(LoopSettings.from_env(), project_id=3)  # doctest: +SKIP
        >>> images.path(task_id=17, url="/data/upload/3/0a1b2c3d-a.jpg")  # doctest: +SKIP
        PosixPath('.cache/shoeseg/images/3/17-5c2e...-a.jpg')
    """

    def __init__(self, settings: LoopSettings, *, project_id: int):
        self.settings = settings
        self.dir = settings.cache_dir / "images" / str(project_id)
        self._fetcher = None

    def _fetch_bytes(self, url: str, *, task_id) -> bytes:
        from backend.images import ImageFetcher, LabelStudioAccess
        from backend.settings import Settings

        if self._fetcher is None:
            self._fetcher = ImageFetcher(Settings.from_env())
        access = LabelStudioAccess(self.settings.label_studio_url, self.settings.label_studio_api_key)
        try:
            return self._fetcher.fetch(url, task_id=task_id, access=access).data
        except Exception as e:
            if is_transient(e):
                raise LabelStudioUnavailable(f"task {task_id}: image {url!r} could not be fetched: {e}") from e
            raise

    def file_name(self, *, task_id, url: str) -> str:
        digest = hashlib.sha256(url.encode()).hexdigest()[:16]
        base = Path(file_name_from_ls_url(url)).name or "image"
        return f"{task_id}-{digest}-{base}"[:200]

    def path(self, *, task_id, url: str) -> Path:
        """The image file of a task, downloaded when not cached yet."""
        path = self.dir / self.file_name(task_id=task_id, url=url)
        if not path.is_file():
            _atomic_write(path, self._fetch_bytes(url, task_id=task_id))
        return path

    def close(self) -> None:
        if self._fetcher is not None:
            self._fetcher.close()


def push_predictions(client, project_id: int, items: Iterable[dict], *, model_version: str) -> int:
    """Stores predictions (``{"task", "result", "score"}`` dicts) in Label Studio in one request.

    Falls back to one request per task when the bulk route is refused. Returns how many were stored.
    """
    from label_studio_sdk.core.api_error import ApiError

    items = [dict(item, model_version=model_version) for item in items]
    if not items:
        return 0
    try:
        client.projects.import_predictions(id=project_id, request=items)
    except ApiError as e:
        if e.status_code not in (404, 405):
            raise
        log.info("bulk prediction import refused (%s): one request per task", e.status_code)
        for item in items:
            client.predictions.create(task=item["task"], result=item["result"], score=item["score"],
                                      model_version=model_version)
    return len(items)


def set_model_version(client, project_id: int, model_version: str) -> None:
    """Makes ``model_version`` the project's: Label Studio orders by the scores of its predictions only."""
    client.projects.update(id=project_id, model_version=model_version)
