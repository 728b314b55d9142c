"""A model registry on disk: versions with their metadata and metrics, and a ``current`` pointer.

Layout::

    <root>/versions/<version>/model.pt      the checkpoint
    <root>/versions/<version>/meta.json     version, created_at, metrics, parent, meta
    <root>/current                          the promoted version id (one line)
    <root>/history.json                     promotion stack and event log (for rollback)
    <root>/.lock                            taken (flock) by every writer

Crash safety (a worker can be killed at any point, the machine can lose power):

* **A version appears whole or not at all.** It is assembled in ``versions/.tmp-<version>-<random>``
  (checkpoint and ``meta.json`` each fsynced, then the directory itself), renamed into place, and
  ``versions/`` is fsynced after the rename. Only then can a promotion point to it.
* **The ``current`` file is the truth.** Promotion and rollback are one atomic, durable pointer write
  (temporary file in the same directory, fsync, :func:`os.replace`, fsync of the directory), so a reader
  (the backend polling ``current`` for hot reload) sees the old version or the new one, never a half state.
* **history.json is written first and may be stale.** It is replaced just as durably, *before* the pointer.
  A crash between the two leaves a history that records a promotion the pointer never took; whatever the
  stack holds after the last entry of the current version is such a leftover and is dropped at the next
  promote or rollback. ``promoted_at`` comes from the event log and is informative only; ``status``
  comes from the pointer. A broken history.json is ignored (with a warning) by readers; writers refuse
  to overwrite it.
* **Stale temporary data is removed when the registry is opened**, under the writers' lock: every
  writer creates its temporary files and directories (names starting with ``.tmp-``) only while
  holding the lock, and the kernel releases a flock when its holder dies, so anything found while
  holding the lock was left by a killed process. Opening does not wait: when a writer holds the lock,
  the clean-up is left to a later open. Each removal is logged as a warning.
* **A damaged version is skipped, not fatal.** :meth:`ModelRegistry.versions` leaves out a version whose
  ``meta.json`` is missing or invalid or whose checkpoint is missing or empty (with one warning per version
  per process); :meth:`ModelRegistry.get` of it raises :class:`RegistryError` naming the version and the
  file; :meth:`ModelRegistry.current` raises when the pointer names such a version (the backend then
  keeps serving the model it holds).

Files are created with the usual mode (``0o666`` less the umask, e.g. ``0644``) and directories with
``0o777`` less the umask, so a backend running as another user can read what the worker wrote.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from via_tools.files import TEMP_PREFIX, atomic_write_text

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "model.pt"
META_NAME = "meta.json"

#: Prefix of every temporary file or directory the registry writes (that of :mod:`via_tools.files`' temporary
#: files, which write ``current``, history.json and meta.json).
TMP_PREFIX = TEMP_PREFIX

#: Problems already logged by :meth:`ModelRegistry.versions` (path, message), to warn once per process.
_reported: set[tuple[str, str]] = set()


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


def _fsync_dir(path: Path) -> None:
    """Makes the entries of directory ``path`` (files created, renamed or replaced in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_path(directory: Path, name: str) -> Path:
    return directory / f"{TMP_PREFIX}{name}-{secrets.token_hex(4)}"


def _copy_durably(src: Path, dst: Path) -> None:
    """Copies ``src`` to the new file ``dst`` and fsyncs it (the caller fsyncs the directory)."""
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())


def _is_temp_name(name: str) -> bool:
    # ".tmp-*" now; ".<name>.<random>.tmp" is what earlier releases wrote for `current` and history.json.
    return name.startswith(TMP_PREFIX) or (name.startswith(".") and name.endswith(".tmp"))


def _valid_version_id(version: str) -> bool:
    return bool(version) and "/" not in version and "\\" not in version and not version.startswith(".")


def _drop_unapplied(stack: list[str], current: str | None) -> None:
    """Drops what ``stack`` holds after the last entry of ``current``: promotions whose pointer write did
    not happen (history.json is written before the pointer)."""
    if current in stack:
        last = len(stack) - 1 - stack[::-1].index(current)
        del stack[last + 1:]


class ModelRegistry:
    """Model versions on disk with a promoted ``current`` one.

    Opening a registry removes temporary data left by a killed writer (see the module docstring).

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
        self._remove_stale_temp()

    def _ensure(self) -> None:
        if not self.versions_dir.is_dir():
            self.versions_dir.mkdir(parents=True, exist_ok=True)
            _fsync_dir(self.root)

    @contextlib.contextmanager
    def _locked(self, *, wait: bool = True):
        """Holds the writers' lock; with ``wait=False`` yields False at once when another process holds it."""
        self._ensure()
        with open(self.root / ".lock", "a+") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
            except BlockingIOError:
                held = False
            try:
                yield held
            finally:
                if held:
                    fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _remove_stale_temp(self) -> None:
        """Removes ``.tmp-*`` files and directories in the root and ``versions/`` left by a killed writer.

        Done only while holding the writers' lock (they create temporary data only under it), and skipped
        when another writer holds it or the registry cannot be written (e.g. a read-only mount).
        """
        if not self.versions_dir.is_dir():
            return
        try:
            with self._locked(wait=False) as held:
                if not held:
                    log.debug("registry %s is being written: stale temporary data left for later", self.root)
                    return
                stale = [p for d in (self.root, self.versions_dir) for p in d.iterdir() if _is_temp_name(p.name)]
                for p in stale:
                    try:
                        if p.is_dir() and not p.is_symlink():
                            shutil.rmtree(p)
                        else:
                            p.unlink()
                    except OSError as e:
                        log.warning("model registry %s: cannot remove %s, left by an interrupted write: %s",
                                    self.root, p, e)
                    else:
                        log.warning("model registry %s: removed %s, left by an interrupted write", self.root, p)
        except OSError as e:  # e.g. a read-only mount: the lock file cannot be opened
            log.debug("registry %s: stale temporary data not cleaned (%s)", self.root, e)

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
        if not vdir.is_dir():
            raise RegistryError(f"version {version!r} is not in the registry at {self.root}")
        meta_path = vdir / META_NAME
        try:
            data = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise RegistryError(f"version {version!r} is incomplete: {meta_path} is missing") from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RegistryError(f"version {version!r} is damaged: {meta_path} is not valid JSON ({e})") from e
        if not isinstance(data, dict):
            raise RegistryError(f"version {version!r} is damaged: {meta_path} is not a JSON object")
        checkpoint = vdir / CHECKPOINT_NAME
        try:
            size = checkpoint.stat().st_size
        except FileNotFoundError as e:
            raise RegistryError(f"version {version!r} is incomplete: {checkpoint} is missing") from e
        if size == 0:
            raise RegistryError(f"version {version!r} is damaged: {checkpoint} is empty")
        promoted_at = None
        for ev in history.get("events", []):
            if ev.get("version") == version:
                promoted_at = ev.get("at")
        return ModelVersion(
            version=version,
            path=vdir,
            checkpoint=checkpoint,
            created_at=data.get("created_at", ""),
            metrics=data.get("metrics", {}),
            parent=data.get("parent"),
            meta=data.get("meta", {}),
            status="promoted" if version == current else "candidate",
            promoted_at=promoted_at,
        )

    def _is_whole(self, version: str) -> bool:
        try:
            self._read(version, None, {})
        except RegistryError:
            return False
        return True

    def _history(self, *, strict: bool = True) -> dict[str, Any]:
        """The promotion history; a broken file raises (``strict``, for writers) or reads as empty."""
        try:
            data = json.loads(self.history_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"stack": [], "events": []}
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            problem = f"{self.history_path}: broken promotion history ({e})"
        else:
            if isinstance(data, dict):
                return data
            problem = f"{self.history_path}: broken promotion history (not a JSON object)"
        if strict:
            raise RegistryError(problem)
        self._warn_once(self.history_path, f"{problem}; ignored (the `current` pointer decides what is served)")
        return {"stack": [], "events": []}

    @staticmethod
    def _warn_once(path: Path, message: str) -> None:
        key = (str(path), message)
        if key not in _reported:
            _reported.add(key)
            log.warning("%s", message)

    def versions(self) -> list[ModelVersion]:
        """Every readable version, oldest first; a damaged one is left out with a warning naming it."""
        if not self.versions_dir.is_dir():
            return []
        current, history = self.current_version_id(), self._history(strict=False)
        out = []
        for p in self.versions_dir.iterdir():
            if not p.is_dir() or p.name.startswith("."):
                continue
            try:
                out.append(self._read(p.name, current, history))
            except RegistryError as e:
                self._warn_once(p, f"model registry: skipping {p}: {e}")
        return sorted(out, key=lambda v: (v.created_at, v.version))

    def get(self, version: str) -> ModelVersion:
        """One version by id.

        Raises:
            RegistryError: it is not registered, or it is damaged (the message names the file).
        """
        if not _valid_version_id(version):
            raise RegistryError(f"{version!r} is not a valid version id")
        return self._read(version, self.current_version_id(), self._history(strict=False))

    def current(self) -> ModelVersion | None:
        """The promoted version, or None when nothing has been promoted yet.

        Raises:
            RegistryError: the pointer names a version that is not registered or is damaged.
        """
        v = self.current_version_id()
        if v is None:
            return None
        try:
            return self.get(v)
        except RegistryError as e:
            raise RegistryError(f"{self.pointer_path} points to {v!r}, which cannot be used: {e}") from e

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

        The version id is the checkpoint's own. The version directory is assembled under a temporary name,
        fsynced and renamed into place, so it appears complete or not at all, and stays so after a crash.

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
            tmp = _temp_path(self.versions_dir, version)
            tmp.mkdir()
            try:
                _copy_durably(src, tmp / CHECKPOINT_NAME)
                atomic_write_text(tmp / META_NAME, text, fsync=True)  # also fsyncs tmp, so the checkpoint's entry too
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            _fsync_dir(self.versions_dir)
        log.info("registered model version %s in %s", version, self.root)
        return self.get(version)

    def _set_current(self, version: str, history: dict[str, Any], action: str) -> None:
        # History first, pointer last: the pointer write is the promotion (see the module docstring).
        history.setdefault("events", []).append({"action": action, "version": version, "at": _now()})
        atomic_write_text(self.history_path, json.dumps(history, indent=2), fsync=True)
        atomic_write_text(self.pointer_path, version + "\n", fsync=True)

    def promote(self, version: str) -> ModelVersion:
        """Makes ``version`` the current one (one atomic, durable pointer write).

        Raises:
            RegistryError: the version is not registered or is damaged.
        """
        with self._locked():
            self.get(version)  # raises when unknown or damaged
            history = self._history()
            stack = history.setdefault("stack", [])
            _drop_unapplied(stack, self.current_version_id())
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
            _drop_unapplied(stack, current)
            if stack and stack[-1] == current:
                stack.pop()
            while stack and not self._is_whole(stack[-1]):
                stack.pop()  # a version removed or damaged by hand
            if stack:
                target = stack[-1]
            else:
                parent = self.get(current).parent
                if not parent or not self._is_whole(parent):
                    raise RegistryError(
                        f"cannot roll back from {current!r}: no earlier promoted version and no registered parent"
                    )
                target = parent
                stack.append(target)
            self._set_current(target, history, "rollback")
        log.info("rolled back from %s to %s", current, target)
        return self.get(target)
