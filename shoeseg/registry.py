"""A model registry on disk: versions with their metadata and metrics, and a ``current`` pointer.

Layout::

    <root>/versions/<version>/model.pt      the checkpoint
    <root>/versions/<version>/meta.json     version, created_at, metrics, parent, meta
    <root>/current                          the promoted version id (one line)
    <root>/history.json                     promotion stack and event log (for rollback)

A version appears all at once (written in a temporary directory, then renamed); ``current`` and
``history.json`` are replaced atomically (temporary file, then :func:`os.replace`), so a reader (the
backend polling ``current`` for hot reload) never sees a half-written state. Writers take a lock file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "model.pt"
META_NAME = "meta.json"


class RegistryError(RuntimeError):
    """A registry operation that cannot be done; the message names the version and the root."""


@dataclass
class ModelVersion:
    """One registered model version.

    Args:
        version: version id (the checkpoint's).
        path: the version's directory.
        checkpoint: the checkpoint file inside it.
        created_at: ISO time of registration.
        metrics: evaluation metrics (e.g. ``segm_AP``).
        parent: the version it was fine-tuned from, if any.
        meta: anything else (class names, training config, dataset size...).
        status: ``"promoted"`` for the current version, ``"candidate"`` otherwise.
        promoted_at: when it was last promoted, if ever.
    """

    version: str
    path: Path
    checkpoint: Path
    created_at: str
    metrics: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    status: str = "candidate"
    promoted_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "path": str(self.path),
            "checkpoint": str(self.checkpoint),
            "created_at": self.created_at,
            "metrics": self.metrics,
            "parent": self.parent,
            "meta": self.meta,
            "status": self.status,
            "promoted_at": self.promoted_at,
        }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _valid_version_id(version: str) -> bool:
    return bool(version) and "/" not in version and "\\" not in version and not version.startswith(".")


class ModelRegistry:
    """Model versions on disk with a promoted ``current`` one.

    Args:
        root: the registry directory (created when missing); ``None`` reads ``SHOESEG_MODEL_DIR``
            (default ``./models``).

    Example:
        >>> reg = ModelRegistry("models")  # doctest: +SKIP
        >>> v = reg.register("runs/shoes/model.pt", metrics={"segm_AP": 0.41}, parent=None, meta={})  # doctest: +SKIP
        >>> reg.promote(v.version).status  # doctest: +SKIP
        'promoted'
    """

    def __init__(self, root: str | Path | None = None) -> None:
        if root is None:
            root = os.environ.get("SHOESEG_MODEL_DIR") or "models"
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.pointer_path = self.root / "current"
        self.history_path = self.root / "history.json"

    def _ensure(self) -> None:
        self.versions_dir.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _locked(self):
        self._ensure()
        with open(self.root / ".lock", "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # -- reading -----------------------------------------------------------------------------------

    def current_version_id(self) -> str | None:
        """The promoted version id from the pointer file (cheap: one small read), or None."""
        try:
            text = self.pointer_path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return text or None

    def _read(self, version: str, current: str | None, history: dict[str, Any]) -> ModelVersion:
        vdir = self.versions_dir / version
        meta_path = vdir / META_NAME
        try:
            data = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise RegistryError(f"version {version!r} is not in the registry at {self.root}") from e
        except json.JSONDecodeError as e:
            raise RegistryError(f"{meta_path}: broken metadata ({e})") from e
        promoted_at = None
        for ev in history.get("events", []):
            if ev.get("version") == version:
                promoted_at = ev.get("at")
        return ModelVersion(
            version=version,
            path=vdir,
            checkpoint=vdir / CHECKPOINT_NAME,
            created_at=data.get("created_at", ""),
            metrics=data.get("metrics", {}),
            parent=data.get("parent"),
            meta=data.get("meta", {}),
            status="promoted" if version == current else "candidate",
            promoted_at=promoted_at,
        )

    def _history(self) -> dict[str, Any]:
        try:
            return json.loads(self.history_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"stack": [], "events": []}
        except json.JSONDecodeError as e:
            raise RegistryError(f"{self.history_path}: broken promotion history ({e})") from e

    def versions(self) -> list[ModelVersion]:
        """Every registered version, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        current, history = self.current_version_id(), self._history()
        out = [
            self._read(p.name, current, history)
            for p in self.versions_dir.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / META_NAME).is_file()
        ]
        return sorted(out, key=lambda v: (v.created_at, v.version))

    def get(self, version: str) -> ModelVersion:
        """One version by id; :class:`RegistryError` when it is not registered."""
        if not _valid_version_id(version):
            raise RegistryError(f"{version!r} is not a valid version id")
        return self._read(version, self.current_version_id(), self._history())

    def current(self) -> ModelVersion | None:
        """The promoted version, or None when nothing has been promoted yet."""
        v = self.current_version_id()
        if v is None:
            return None
        try:
            return self.get(v)
        except RegistryError as e:
            raise RegistryError(f"{self.pointer_path} points to {v!r}, which is not registered") from e

    # -- writing -----------------------------------------------------------------------------------

    def register(
        self,
        checkpoint_path: str | Path,
        *,
        metrics: dict[str, Any] | None = None,
        parent: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Adds a checkpoint as a new candidate version (not promoted).

        The version id is the checkpoint's own. The version directory is assembled under a temporary name
        and renamed into place, so it appears complete or not at all.

        Raises:
            RegistryError: the file is not a checkpoint, or its version is already registered.
        """
        from shoeseg.model import read_checkpoint_meta

        src = Path(checkpoint_path)
        try:
            cmeta = read_checkpoint_meta(src)
        except (FileNotFoundError, ValueError) as e:
            raise RegistryError(f"cannot register {src}: {e}") from e
        version = cmeta["version"]
        if not _valid_version_id(version):
            raise RegistryError(f"{src}: checkpoint version {version!r} is not a valid id")
        meta = dict(meta or {})
        meta.setdefault("class_names", cmeta.get("class_names"))
        meta.setdefault("model_config", cmeta.get("model_config"))
        record = {
            "version": version,
            "created_at": _now(),
            "metrics": metrics if metrics is not None else cmeta.get("metrics", {}),
            "parent": parent if parent is not None else cmeta.get("parent_version"),
            "meta": meta,
        }
        text = json.dumps(record, indent=2, default=str)
        with self._locked():
            final = self.versions_dir / version
            if final.exists():
                raise RegistryError(f"version {version!r} is already registered at {final}")
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=self.versions_dir))
            try:
                shutil.copyfile(src, tmp / CHECKPOINT_NAME)
                (tmp / META_NAME).write_text(text, encoding="utf-8")
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        log.info("registered model version %s in %s", version, self.root)
        return self.get(version)

    def _set_current(self, version: str, history: dict[str, Any], action: str) -> None:
        history.setdefault("events", []).append({"action": action, "version": version, "at": _now()})
        _write_atomic(self.history_path, json.dumps(history, indent=2))
        _write_atomic(self.pointer_path, version + "\n")

    def promote(self, version: str) -> ModelVersion:
        """Makes ``version`` the current one (atomic pointer swap).

        Raises:
            RegistryError: the version is not registered.
        """
        with self._locked():
            self.get(version)  # raises when unknown
            history = self._history()
            stack = history.setdefault("stack", [])
            if not stack or stack[-1] != version:
                stack.append(version)
            self._set_current(version, history, "promote")
        log.info("promoted model version %s", version)
        return self.get(version)

    def rollback(self) -> ModelVersion:
        """Returns to the version promoted before the current one (else the current one's parent).

        Raises:
            RegistryError: nothing is promoted, or there is nothing to go back to.
        """
        with self._locked():
            current = self.current_version_id()
            if current is None:
                raise RegistryError(f"nothing is promoted in {self.root}: there is nothing to roll back")
            history = self._history()
            stack = history.setdefault("stack", [])
            if stack and stack[-1] == current:
                stack.pop()
            while stack and not (self.versions_dir / stack[-1] / META_NAME).is_file():
                stack.pop()  # a version removed by hand
            if stack:
                target = stack[-1]
            else:
                parent = self.get(current).parent
                if not parent or not (self.versions_dir / parent / META_NAME).is_file():
                    raise RegistryError(
                        f"cannot roll back from {current!r}: no earlier promoted version and no registered parent"
                    )
                target = parent
                stack.append(target)
            self._set_current(target, history, "rollback")
        log.info("rolled back from %s to %s", current, target)
        return self.get(target)
