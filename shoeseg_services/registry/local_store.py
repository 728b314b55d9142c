"""The registry's local store: a folder, written with fsync'd atomic writes under one writers' lock.

The layout (any registry root that is not ``s3://``)::

    <root>/versions/<version>/model.pt      the checkpoint
    <root>/versions/<version>/meta.json     version, created_at, metrics, parent, meta, sha256, bytes
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

Files are created with the usual mode (``0o666`` less the umask, e.g. ``0644``) and directories with
``0o777`` less the umask, so a backend running as another user can read what the worker wrote.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoeseg_services.registry.store import (
    CHECKPOINT_NAME,
    TMP_PREFIX,
    RegistryError,
    empty_history,
    now,
    temp_path,
    warn_once,
)
from via_tools.files import atomic_write_text, fsync_dir

log = logging.getLogger(__name__)

#: The metadata of a version in the folder.
META_NAME = "meta.json"


def _copy_durably(src: Path, dst: Path) -> None:
    """Copies ``src`` to the new file ``dst`` and fsyncs it (the caller fsyncs the directory)."""
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())


def _is_temp_name(name: str) -> bool:
    # ".tmp-*" now; ".<name>.<random>.tmp" is what earlier releases wrote for `current` and history.json.
    return name.startswith(TMP_PREFIX) or (name.startswith(".") and name.endswith(".tmp"))


class LocalStore:
    """The registry folder (layout and crash safety in the module docstring); a :class:`~.store.Store`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions_dir = root / "versions"
        self.pointer_path = root / "current"
        self.history_path = root / "history.json"
        self.location = str(root)
        self._remove_stale_temp()

    def _ensure(self) -> None:
        if not self.versions_dir.is_dir():
            self.versions_dir.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.root)

    @contextlib.contextmanager
    def locked(self, *, wait: bool = True):
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
            with self.locked(wait=False) as held:
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

    # versions
    def version_ids(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        return [p.name for p in self.versions_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]

    def version_path(self, version: str) -> Path:
        return self.versions_dir / version

    def read_record(self, version: str) -> dict[str, Any]:
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
        return data

    def check_checkpoint(self, version: str, record: dict[str, Any]) -> Path:
        checkpoint = self.versions_dir / version / CHECKPOINT_NAME
        try:
            size = checkpoint.stat().st_size
        except FileNotFoundError as e:
            raise RegistryError(f"version {version!r} is incomplete: {checkpoint} is missing") from e
        if size == 0:
            raise RegistryError(f"version {version!r} is damaged: {checkpoint} is empty")
        return checkpoint

    def local_checkpoint(self, version: str, record: dict[str, Any]) -> Path:
        return self.check_checkpoint(version, record)

    def add_version(self, version: str, src: Path, record: dict[str, Any]) -> None:
        text = json.dumps(record, indent=2, default=str)
        with self.locked():
            final = self.versions_dir / version
            if final.exists():
                raise RegistryError(f"version {version!r} is already registered at {final}")
            tmp = temp_path(self.versions_dir, version)
            tmp.mkdir()
            try:
                _copy_durably(src, tmp / CHECKPOINT_NAME)
                atomic_write_text(tmp / META_NAME, text, fsync=True)  # also fsyncs tmp, so the checkpoint's entry too
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            fsync_dir(self.versions_dir)

    # pointer and history
    def current_id(self) -> str | None:
        try:
            text = self.pointer_path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return text or None

    def history(self, *, strict: bool) -> dict[str, Any]:
        """The promotion history; a broken file raises (``strict``, for writers) or reads as empty."""
        try:
            data = json.loads(self.history_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return empty_history()
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            problem = f"{self.history_path}: broken promotion history ({e})"
        else:
            if isinstance(data, dict):
                return data
            problem = f"{self.history_path}: broken promotion history (not a JSON object)"
        if strict:
            raise RegistryError(problem)
        warn_once(str(self.history_path), f"{problem}; ignored (the `current` pointer decides what is served)")
        return empty_history()

    def update(self, change: Callable[[str | None, dict[str, Any]], str], action: str) -> str:
        with self.locked():
            history = self.history(strict=True)
            version = change(self.current_id(), history)
            # History first, pointer last: the pointer write is the promotion (see the module docstring).
            history.setdefault("events", []).append({"action": action, "version": version, "at": now()})
            atomic_write_text(self.history_path, json.dumps(history, indent=2), fsync=True)
            atomic_write_text(self.pointer_path, version + "\n", fsync=True)
        return version

    def pointer_name(self) -> str:
        return str(self.pointer_path)

    # small JSON documents beside the versions (live acceptance), written under the writers' lock
    def put_doc(self, parts: tuple[str, ...], data: dict[str, Any]) -> None:
        path = self.root.joinpath(*parts)
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(data, default=str), fsync=True)

    def get_doc(self, parts: tuple[str, ...]) -> dict[str, Any] | None:
        try:
            data = json.loads(self.root.joinpath(*parts).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            warn_once(str(self.root.joinpath(*parts)), f"model registry: {self.root.joinpath(*parts)} is damaged ({e})")
            return None
        return data if isinstance(data, dict) else None

    def list_docs(self, parts: tuple[str, ...]) -> list[dict[str, Any]]:
        folder = self.root.joinpath(*parts)
        if not folder.is_dir():
            return []
        names = sorted(p.name for p in folder.iterdir() if p.suffix == ".json" and not _is_temp_name(p.name))
        return [d for d in (self.get_doc((*parts, n)) for n in names) if d is not None]

    def delete_doc(self, parts: tuple[str, ...]) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.root.joinpath(*parts).unlink()

    def docs_lock(self):
        return self.locked()
