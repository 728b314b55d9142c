"""A model registry: versions with their metadata and metrics, and a ``current`` pointer.

One implementation of the versioning (register, promote, rollback, the promotion history) over one of two
stores, picked from the root: a local folder (the default) or an S3 bucket prefix (``s3://bucket/prefix``).
Both give the same guarantees: a version appears whole or not at all, the ``current`` pointer changes
atomically, every reader (each backend replica polls it) sees a promotion without a restart, and a damaged
version is skipped, not fatal.

**The local folder** (any path that is not ``s3://``)::

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

**An S3 bucket prefix** (``SHOESEG_MODEL_DIR=s3://bucket/prefix``; endpoint and credentials from the standard
AWS variables, ``AWS_ENDPOINT_URL`` for an S3-compatible store, see :mod:`shoeseg_services.s3`)::

    <prefix>/versions/<version>/model.pt        the checkpoint, uploaded first
    <prefix>/versions/<version>/version.json    its metadata with the checkpoint's sha256 and size: the
                                                commit marker, created last (and only once, IfNoneMatch)
    <prefix>/current/<seq:012d>.json            the pointer, one immutable object per promotion or rollback:
                                                {"seq", "version", "action", "at", "history"}; the highest
                                                seq is current

* **A version appears whole or not at all.** Readers ignore a version without ``version.json`` (an upload
  in progress, or one whose writer died). ``version.json`` is created with ``IfNoneMatch="*"``, so two
  registrations of one version id cannot both succeed.
* **The pointer is a versioned pointer object, changed by conditional create.** A promotion reads the
  highest pointer object (seq *n*), computes the new state from it, and creates ``current/<n+1>.json``
  with ``IfNoneMatch="*"``: S3 creates an object only if no object has that key, atomically. When another
  writer got there first the create fails (412 Precondition Failed, or 409 while both are in flight), and
  the promotion starts again from the new highest object. So the pointer objects form one chain, each
  computed from the one before it: concurrent promotions from any number of machines are serialised and
  none is lost or half applied. This was chosen over one ``current`` object replaced with ``If-Match``
  because conditional *create* is supported by more S3-compatible stores, and because each object holding
  the promotion history beside the version makes pointer and history one write (no stale history.json).
  Pointer objects are never deleted or overwritten (a deleted key could be created again).
* **Readers see promotions without a restart.** :meth:`ModelRegistry.current_version_id` lists
  ``current/`` after the highest key it has seen (one small LIST request; pointer objects are immutable, so
  what was read once need not be read again).
* **Checkpoints are downloaded once per machine.** :meth:`ModelRegistry.get` and
  :meth:`ModelRegistry.current` give a local checkpoint file: ``<cache_dir>/models/<sha256>.pt``, downloaded
  when absent, its sha256 checked against ``version.json`` before it is renamed into place (a mismatch
  raises and keeps nothing). The registering machine puts its own copy there. On S3,
  :meth:`ModelRegistry.versions`, :meth:`promote`, :meth:`rollback` and :meth:`register` download nothing:
  their ``checkpoint`` is where :meth:`get` puts the file.

In both stores, **a damaged version is skipped, not fatal.** :meth:`ModelRegistry.versions` leaves out a
version whose metadata is missing or invalid or whose checkpoint is missing or empty (with one warning per
version per process; an S3 version without its commit marker silently); :meth:`ModelRegistry.get` of it
raises :class:`RegistryError` naming the version and the file; :meth:`ModelRegistry.current` raises when
the pointer names such a version (the backend then keeps serving the model it holds).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from via_tools.files import TEMP_PREFIX, atomic_write_text

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "model.pt"
META_NAME = "meta.json"
#: The commit marker and metadata of a version on S3.
S3_META_NAME = "version.json"

#: Prefix of every temporary file or directory the registry writes (that of :mod:`via_tools.files`' temporary
#: files, which write ``current``, history.json and meta.json).
TMP_PREFIX = TEMP_PREFIX

#: Problems already logged by :meth:`ModelRegistry.versions` (path, message), to warn once per process.
_reported: set[tuple[str, str]] = set()

#: A promotion that loses the race for the next pointer object tries again, this many times in all.
S3_PROMOTE_ATTEMPTS = 50


class RegistryError(RuntimeError):
    """A registry operation that cannot be done; the message names the version and the root."""


class _NotCommitted(RegistryError):
    """An S3 version without its commit marker: an upload in progress or abandoned (skipped quietly)."""


@dataclass
class ModelVersion:
    """One registered model version.

    Args:
        version: version id (the checkpoint's).
        path: the version's directory (a ``Path``), or its ``s3://`` prefix.
        checkpoint: the checkpoint file inside it (on S3: the local copy, see the module docstring).
        created_at: ISO time of registration.
        metrics: evaluation metrics (e.g. ``segm_AP``).
        parent: the version it was fine-tuned from, if any.
        meta: anything else (class names, training config, dataset size...).
        status: ``"promoted"`` for the current version, ``"candidate"`` otherwise.
        promoted_at: when it was last promoted, if ever.
        sha256: the checkpoint's content hash recorded at registration (``None`` for older local versions).
    """

    version: str
    path: Path | str
    checkpoint: Path
    created_at: str
    metrics: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    status: str = "candidate"
    promoted_at: str | None = None
    sha256: str | None = None

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


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def _annotation_key(annotation_id: Any) -> str:
    text = str(annotation_id).strip()
    if isinstance(annotation_id, bool) or not text.isdigit() or int(text) < 1:
        raise RegistryError(f"annotation id {annotation_id!r} is not a positive integer")
    return str(int(text))


def _empty_history() -> dict[str, Any]:
    return {"stack": [], "events": []}


def is_s3_root(root: str | os.PathLike[str]) -> bool:
    """Whether a registry root names an S3 bucket prefix (``s3://...``; also ``s3:/...``, what ``Path`` makes of it).

    Example:
        >>> is_s3_root("s3://shoes/models"), is_s3_root(Path("s3://shoes/models")), is_s3_root("models")
        (True, True, False)
    """
    return str(root).startswith("s3:/")


def _s3_root_text(root: str | os.PathLike[str]) -> str:
    text = str(root)
    return text if text.startswith("s3://") else "s3://" + text[len("s3:/"):]


# -- stores ------------------------------------------------------------------------------------------
#
# A store keeps versions and the pointer; the registry above it keeps the versioning logic. A store's
# ``update(change, action)`` runs ``change(current, history) -> new current`` on the latest state and
# writes the new pointer and history atomically with respect to every other writer.


class _LocalStore:
    """The registry folder (layout and crash safety in the module docstring)."""

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
            _fsync_dir(self.root)

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
            return _empty_history()
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            problem = f"{self.history_path}: broken promotion history ({e})"
        else:
            if isinstance(data, dict):
                return data
            problem = f"{self.history_path}: broken promotion history (not a JSON object)"
        if strict:
            raise RegistryError(problem)
        _warn_once(str(self.history_path), f"{problem}; ignored (the `current` pointer decides what is served)")
        return _empty_history()

    def update(self, change: Callable[[str | None, dict[str, Any]], str], action: str) -> str:
        with self.locked():
            history = self.history(strict=True)
            version = change(self.current_id(), history)
            # History first, pointer last: the pointer write is the promotion (see the module docstring).
            history.setdefault("events", []).append({"action": action, "version": version, "at": _now()})
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
            _warn_once(str(self.root.joinpath(*parts)), f"model registry: {self.root.joinpath(*parts)} is damaged ({e})")
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


_POINTER_RE = re.compile(r"^(\d{12})\.json$")


class _S3Store:
    """A bucket prefix (layout and guarantees in the module docstring)."""

    def __init__(self, uri: str, cache_dir: Path) -> None:
        from shoeseg_services.s3 import parse_s3_uri

        try:
            self.bucket, prefix = parse_s3_uri(uri)
        except ValueError as e:
            raise RegistryError(f"model registry {uri!r}: {e}") from e
        self.prefix = prefix.strip("/")
        self.location = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.cache_dir = Path(cache_dir) / "models"
        self._lock = threading.Lock()
        self._latest: tuple[str, dict[str, Any]] | None = None  # (key, object) of the highest pointer seen

    def key(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts]) if self.prefix else "/".join(parts)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _client(self):
        from shoeseg_services.s3 import client, client_errors, explain

        try:
            return client()
        except client_errors() as e:  # e.g. half the credentials in the environment
            raise RegistryError(f"model registry {self.location}: "
                                f"{explain(e, bucket=self.bucket, action='connect to')}") from e

    def _fail(self, e: BaseException, key: str | None, action: str) -> RegistryError:
        from shoeseg_services.s3 import explain

        return RegistryError(f"model registry {self.location}: {explain(e, bucket=self.bucket, key=key, action=action)}")

    def _get_json(self, key: str, *, what: str) -> dict[str, Any] | None:
        """The JSON object at ``key``; None when there is no such key."""
        from shoeseg_services.s3 import client_errors, error_code

        c = self._client()
        try:
            body = c.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except client_errors() as e:
            if error_code(e) in ("NoSuchKey", "404"):
                return None
            raise self._fail(e, key, "read") from e
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RegistryError(f"{what} is damaged: {self.uri(key)} is not valid JSON ({e})") from e
        if not isinstance(data, dict):
            raise RegistryError(f"{what} is damaged: {self.uri(key)} is not a JSON object")
        return data

    def _list(self, prefix: str, *, delimiter: str | None = None, start_after: str | None = None):
        """(keys, common prefixes) under ``prefix``, every page."""
        from shoeseg_services.s3 import client_errors

        c = self._client()
        keys, prefixes = [], []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if start_after:
            kwargs["StartAfter"] = start_after
        try:
            for page in c.get_paginator("list_objects_v2").paginate(**kwargs):
                keys += [o["Key"] for o in page.get("Contents", [])]
                prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        except client_errors() as e:
            raise self._fail(e, prefix, "list") from e
        return keys, prefixes

    # versions
    def version_ids(self) -> list[str]:
        base = self.key("versions") + "/"
        _, prefixes = self._list(base, delimiter="/")
        return [p[len(base):].rstrip("/") for p in prefixes if not p[len(base):].startswith(".")]

    def version_path(self, version: str) -> str:
        return self.uri(self.key("versions", version))

    def read_record(self, version: str) -> dict[str, Any]:
        key = self.key("versions", version, S3_META_NAME)
        data = self._get_json(key, what=f"version {version!r}")
        if data is None:
            raise _NotCommitted(f"version {version!r} is not in the registry at {self.location} "
                                f"(no {self.uri(key)}: never registered, or its upload did not finish)")
        return data

    def check_checkpoint(self, version: str, record: dict[str, Any]) -> Path:
        from shoeseg_services.s3 import client_errors, error_code

        key = self.key("versions", version, CHECKPOINT_NAME)
        sha, size = record.get("sha256"), record.get("bytes")
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise RegistryError(f"version {version!r} is damaged: {self.uri(self.key('versions', version, S3_META_NAME))} "
                                "records no sha256 of the checkpoint")
        try:
            head = self._client().head_object(Bucket=self.bucket, Key=key)
        except client_errors() as e:
            if error_code(e) in ("404", "NoSuchKey", "NotFound"):
                raise RegistryError(f"version {version!r} is incomplete: {self.uri(key)} is missing") from e
            raise self._fail(e, key, "read") from e
        found = int(head.get("ContentLength") or 0)
        if found == 0 or (isinstance(size, int) and found != size):
            raise RegistryError(f"version {version!r} is damaged: {self.uri(key)} is {found} bytes, "
                                f"{S3_META_NAME} records {size}")
        return self.cache_dir / f"{sha}.pt"

    def local_checkpoint(self, version: str, record: dict[str, Any]) -> Path:
        """The checkpoint in the local cache, downloaded (and its sha256 checked) when absent."""
        from shoeseg_services.s3 import client_errors

        path = self.check_checkpoint(version, record)
        if path.is_file() and path.stat().st_size == record.get("bytes", path.stat().st_size):
            return path
        key = self.key("versions", version, CHECKPOINT_NAME)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_path(path.parent, path.name)
        started = time.perf_counter()
        try:
            h = hashlib.sha256()
            try:
                body = self._client().get_object(Bucket=self.bucket, Key=key)["Body"]
                with open(tmp, "xb") as f:
                    for chunk in body.iter_chunks(1 << 20):
                        h.update(chunk)
                        f.write(chunk)
            except client_errors() as e:
                raise self._fail(e, key, "download") from e
            if h.hexdigest() != record["sha256"]:
                raise RegistryError(f"version {version!r} is damaged: {self.uri(key)} has sha256 {h.hexdigest()}, "
                                    f"{S3_META_NAME} records {record['sha256']}")
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        log.info("downloaded model version %s from %s to %s in %.1f s", version, self.uri(key), path,
                 time.perf_counter() - started)
        return path

    def add_version(self, version: str, src: Path, record: dict[str, Any]) -> None:
        from shoeseg_services.s3 import client_errors, error_code

        c = self._client()
        meta_key = self.key("versions", version, S3_META_NAME)
        ckpt_key = self.key("versions", version, CHECKPOINT_NAME)
        if self._get_json(meta_key, what=f"version {version!r}") is not None:
            raise RegistryError(f"version {version!r} is already registered at {self.version_path(version)}")
        try:
            c.upload_file(str(src), self.bucket, ckpt_key)
        except client_errors() as e:
            raise self._fail(e, ckpt_key, "upload") from e
        # The commit marker, last: readers see the version from here on.
        try:
            c.put_object(Bucket=self.bucket, Key=meta_key, Body=json.dumps(record, indent=2, default=str).encode(),
                         ContentType="application/json", IfNoneMatch="*")
        except client_errors() as e:
            if error_code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                raise RegistryError(f"version {version!r} is already registered at {self.version_path(version)} "
                                    "(registered by another writer at the same time)") from e
            raise self._fail(e, meta_key, "write") from e
        self._seed_cache(src, record["sha256"])

    def _seed_cache(self, src: Path, sha: str) -> None:
        """Keeps the registering machine's copy in the cache, so that it never downloads what it uploaded."""
        path = self.cache_dir / f"{sha}.pt"
        if path.is_file():
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _temp_path(path.parent, path.name)
            shutil.copyfile(src, tmp)
            os.replace(tmp, path)
        except OSError as e:
            log.warning("model registry %s: the checkpoint is not kept in the cache %s (%s)", self.location,
                        self.cache_dir, e)

    # pointer and history
    def _pointer_prefix(self) -> str:
        return self.key("current") + "/"

    def latest(self) -> tuple[int, dict[str, Any] | None]:
        """(seq, object) of the highest pointer object; (0, None) when nothing was ever promoted."""
        base = self._pointer_prefix()
        with self._lock:
            known = self._latest
        keys, _ = self._list(base, start_after=known[0] if known else None)
        newer = sorted(k for k in keys if _POINTER_RE.match(k[len(base):]))
        if newer:
            key = newer[-1]
            data = self._get_json(key, what="the `current` pointer")
            if data is None:  # listed but gone: pointer objects are never deleted
                raise RegistryError(f"model registry {self.location}: pointer object {self.uri(key)} disappeared "
                                    "(pointer objects must never be deleted)")
            if not isinstance(data.get("version"), str) or not isinstance(data.get("history"), dict):
                raise RegistryError(f"the `current` pointer is damaged: {self.uri(key)} has no version or history")
            with self._lock:
                if self._latest is None or key > self._latest[0]:
                    self._latest = (key, data)
                known = self._latest
        if known is None:
            return 0, None
        return int(_POINTER_RE.match(known[0][len(base):]).group(1)), known[1]

    def current_id(self) -> str | None:
        data = self.latest()[1]
        return data["version"] if data else None

    def history(self, *, strict: bool) -> dict[str, Any]:
        data = self.latest()[1]
        return copy.deepcopy(data["history"]) if data else _empty_history()

    def update(self, change: Callable[[str | None, dict[str, Any]], str], action: str) -> str:
        from shoeseg_services.s3 import client_errors, error_code

        c = self._client()
        for attempt in range(S3_PROMOTE_ATTEMPTS):
            seq, data = self.latest()
            history = copy.deepcopy(data["history"]) if data else _empty_history()
            version = change(data["version"] if data else None, history)
            history.setdefault("events", []).append({"action": action, "version": version, "at": _now()})
            seq += 1
            key = self._pointer_prefix() + f"{seq:012d}.json"
            record = {"seq": seq, "version": version, "action": action, "at": _now(), "history": history}
            try:
                c.put_object(Bucket=self.bucket, Key=key, Body=json.dumps(record).encode(),
                             ContentType="application/json", IfNoneMatch="*")
            except client_errors() as e:
                if error_code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                    log.info("model registry %s: %s lost the race for %s to another writer; trying again",
                             self.location, action, self.uri(key))
                    time.sleep(min(0.05 * (attempt + 1), 0.5) * (0.5 + secrets.randbelow(100) / 100))
                    continue
                raise self._fail(e, key, "write") from e
            with self._lock:
                if self._latest is None or key > self._latest[0]:
                    self._latest = (key, record)
            return version
        raise RegistryError(f"model registry {self.location}: {action} gave up after {S3_PROMOTE_ATTEMPTS} attempts, "
                            "each lost to another writer")

    def pointer_name(self) -> str:
        return self.uri(self._pointer_prefix())

    # small JSON documents beside the versions (live acceptance); S3 has no lock (see record_acceptance)
    def put_doc(self, parts: tuple[str, ...], data: dict[str, Any]) -> None:
        from shoeseg_services.s3 import client_errors

        key = self.key(*parts)
        try:
            self._client().put_object(Bucket=self.bucket, Key=key, Body=json.dumps(data, default=str).encode(),
                                      ContentType="application/json")
        except client_errors() as e:
            raise self._fail(e, key, "write") from e

    def get_doc(self, parts: tuple[str, ...]) -> dict[str, Any] | None:
        try:
            return self._get_json(self.key(*parts), what="a live acceptance record")
        except RegistryError as e:
            _warn_once(self.key(*parts), str(e))
            return None

    def list_docs(self, parts: tuple[str, ...]) -> list[dict[str, Any]]:
        keys, _ = self._list(self.key(*parts) + "/")
        names = sorted(k.rsplit("/", 1)[1] for k in keys if k.endswith(".json"))
        return [d for d in (self.get_doc((*parts, n)) for n in names) if d is not None]

    def delete_doc(self, parts: tuple[str, ...]) -> None:
        from shoeseg_services.s3 import client_errors

        key = self.key(*parts)
        try:
            self._client().delete_object(Bucket=self.bucket, Key=key)
        except client_errors() as e:
            raise self._fail(e, key, "delete") from e

    def docs_lock(self):
        return contextlib.nullcontext(True)


def _warn_once(where: str, message: str) -> None:
    key = (where, message)
    if key not in _reported:
        _reported.add(key)
        log.warning("%s", message)


class ModelRegistry:
    """Model versions with a promoted ``current`` one, in a local folder or an S3 bucket prefix.

    Opening a local registry removes temporary data left by a killed writer (see the module docstring).

    Args:
        root: the registry directory (created when missing) or ``s3://bucket/prefix``; ``None`` reads
            ``SHOESEG_MODEL_DIR`` (or its alias ``MODEL_DIR``; default ``./models``).
        cache_dir: where checkpoints downloaded from S3 are kept (``<cache_dir>/models/<sha256>.pt``); ``None``
            reads ``SHOESEG_CACHE_DIR`` (default ``.cache/shoeseg``). A local registry does not use it.

    Example:
        >>> reg = ModelRegistry("models")  # doctest: +SKIP
        >>> v = reg.register("runs/shoes/model.pt", metrics={"segm_AP": 0.41}, parent=None, meta={})  # doctest: +SKIP
        >>> reg.promote(v.version).status  # doctest: +SKIP
        'promoted'
        >>> ModelRegistry("s3://shoes/models").current().checkpoint  # doctest: +SKIP
        PosixPath('.cache/shoeseg/models/9f2c...e1.pt')
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, *, cache_dir: str | os.PathLike[str] | None = None
                 ) -> None:
        if root is None:
            from shoeseg_services.settings import model_dir_text

            root = model_dir_text() or "models"
        self.versions_dir: Path | None = None
        self.pointer_path: Path | None = None
        self.history_path: Path | None = None
        if is_s3_root(root):
            if cache_dir is None:
                cache_dir = os.environ.get("SHOESEG_CACHE_DIR") or ".cache/shoeseg"
            self._store: _LocalStore | _S3Store = _S3Store(_s3_root_text(root), Path(cache_dir))
            self.root: Path | str = self._store.location
        else:
            local = _LocalStore(Path(root))
            self._store = local
            self.root = local.root
            self.versions_dir, self.pointer_path, self.history_path = (
                local.versions_dir, local.pointer_path, local.history_path)

    @property
    def is_s3(self) -> bool:
        return isinstance(self._store, _S3Store)

    def _locked(self, *, wait: bool = True):
        """The local writers' lock (a local registry only)."""
        if not isinstance(self._store, _LocalStore):
            raise RegistryError(f"{self.root}: an S3 registry has no lock (its writes are conditional)")
        return self._store.locked(wait=wait)

    # -- reading -----------------------------------------------------------------------------------

    def current_version_id(self) -> str | None:
        """The promoted version id from the pointer (cheap: one small read, or one small LIST on S3), or None.

        Raises:
            RegistryError: the S3 registry cannot be read (the message names the bucket and what to fix).
        """
        return self._store.current_id()

    def _read(self, version: str, current: str | None, history: dict[str, Any], *, fetch: bool) -> ModelVersion:
        data = self._store.read_record(version)
        checkpoint = (self._store.local_checkpoint if fetch else self._store.check_checkpoint)(version, data)
        promoted_at = None
        for ev in history.get("events", []):
            if ev.get("version") == version:
                promoted_at = ev.get("at")
        return ModelVersion(
            version=version,
            path=self._store.version_path(version),
            checkpoint=checkpoint,
            created_at=data.get("created_at", ""),
            metrics=data.get("metrics", {}),
            parent=data.get("parent"),
            meta=data.get("meta", {}),
            status="promoted" if version == current else "candidate",
            promoted_at=promoted_at,
            sha256=data.get("sha256"),
        )

    def _is_whole(self, version: str) -> bool:
        try:
            self._read(version, None, {}, fetch=False)
        except RegistryError:
            return False
        return True

    def _history(self, *, strict: bool = True) -> dict[str, Any]:
        return self._store.history(strict=strict)

    def versions(self) -> list[ModelVersion]:
        """Every readable version, oldest first; a damaged one is left out with a warning naming it."""
        ids = self._store.version_ids()
        if not ids:
            return []
        current, history = self.current_version_id(), self._history(strict=False)
        out = []
        for version in ids:
            try:
                out.append(self._read(version, current, history, fetch=False))
            except _NotCommitted as e:
                log.debug("model registry: skipping %s: %s", version, e)
            except RegistryError as e:
                _warn_once(str(self._store.version_path(version)),
                           f"model registry: skipping {self._store.version_path(version)}: {e}")
        return sorted(out, key=lambda v: (v.created_at, v.version))

    def has_version(self, version: str) -> bool:
        """Whether ``version`` is registered and whole (nothing is downloaded)."""
        return _valid_version_id(version) and self._is_whole(version)

    def get(self, version: str) -> ModelVersion:
        """One version by id, its checkpoint a local file (on S3 downloaded once, see the module docstring).

        Raises:
            RegistryError: it is not registered, or it is damaged (the message names the file).
        """
        if not _valid_version_id(version):
            raise RegistryError(f"{version!r} is not a valid version id")
        return self._read(version, self.current_version_id(), self._history(strict=False), fetch=True)

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
            raise RegistryError(f"{self._store.pointer_name()} points to {v!r}, which cannot be used: {e}") from e

    def _described(self, version: str) -> ModelVersion:
        """A version's record without downloading its checkpoint."""
        return self._read(version, self.current_version_id(), self._history(strict=False), fetch=False)

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

        The version id is the checkpoint's own; its sha256 and size are recorded. A local version directory
        is assembled under a temporary name, fsynced and renamed into place; an S3 version is committed by
        its ``version.json``, written last. Either way it appears complete or not at all.

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
            "sha256": _sha256_file(src),
            "bytes": src.stat().st_size,
        }
        self._store.add_version(version, src, record)
        log.info("registered model version %s in %s", version, self.root)
        return self._described(version)

    def promote(self, version: str) -> ModelVersion:
        """Makes ``version`` the current one (one atomic pointer change; see the module docstring).

        Raises:
            RegistryError: the version is not registered or is damaged.
        """
        if not _valid_version_id(version):
            raise RegistryError(f"{version!r} is not a valid version id")

        def change(current: str | None, history: dict[str, Any]) -> str:
            self._read(version, None, {}, fetch=False)  # raises when unknown or damaged
            stack = history.setdefault("stack", [])
            _drop_unapplied(stack, current)
            if not stack or stack[-1] != version:
                stack.append(version)
            return version

        self._store.update(change, "promote")
        log.info("promoted model version %s in %s", version, self.root)
        return self._described(version)

    # -- live acceptance (shoeseg.acceptance) ------------------------------------------------------
    #
    # <root>/acceptance/<version>/annotations/<annotation id>.json   one record per annotation
    # <root>/acceptance/<version>/summary.json                       their sum (shoeseg.acceptance.summarize)
    # <root>/acceptance/.index/<annotation id>.json                  {"version": the version it is recorded under}

    def record_acceptance(self, version: str, annotation_id: int, record: dict[str, Any]) -> dict[str, Any]:
        """Records what an annotation did to ``version``'s pre-label, replacing the annotation's earlier record
        (under any version), and returns the version's new live acceptance (:func:`shoeseg.acceptance.summarize`).

        Records are kept beside the versions, so they outlive the services and Redis. A local registry writes
        them under its writers' lock, so the summary is exact; on S3 two writers at the same instant may leave
        the summary one record behind until the next record (each record itself is never lost or doubled).

        Raises:
            RegistryError: the version is not registered, or the annotation id is not a positive integer.
        """
        if not self.has_version(version):
            raise RegistryError(f"version {version!r} is not in the registry at {self.root}")
        annotation = _annotation_key(annotation_id)
        with self._store.docs_lock():
            index = self._store.get_doc(("acceptance", ".index", f"{annotation}.json")) or {}
            before = index.get("version")
            if isinstance(before, str) and before != version and _valid_version_id(before):
                self._store.delete_doc(("acceptance", before, "annotations", f"{annotation}.json"))
                self._write_acceptance_summary(before)
            self._store.put_doc(("acceptance", version, "annotations", f"{annotation}.json"),
                                {**record, "annotation": int(annotation), "version": version})
            self._store.put_doc(("acceptance", ".index", f"{annotation}.json"), {"version": version})
            return self._write_acceptance_summary(version)

    def forget_acceptance(self, annotation_id: int) -> str | None:
        """Removes an annotation's record (a deleted or cancelled annotation); returns the version it was under."""
        annotation = _annotation_key(annotation_id)
        with self._store.docs_lock():
            before = (self._store.get_doc(("acceptance", ".index", f"{annotation}.json")) or {}).get("version")
            if not isinstance(before, str) or not _valid_version_id(before):
                return None
            self._store.delete_doc(("acceptance", before, "annotations", f"{annotation}.json"))
            self._store.delete_doc(("acceptance", ".index", f"{annotation}.json"))
            self._write_acceptance_summary(before)
            return before

    def _write_acceptance_summary(self, version: str) -> dict[str, Any]:
        from shoeseg.acceptance import summarize

        summary = summarize(self._store.list_docs(("acceptance", version, "annotations")))
        self._store.put_doc(("acceptance", version, "summary.json"), summary)
        return summary

    def acceptance(self, version: str) -> dict[str, Any] | None:
        """A version's live acceptance as last summed (one small read), or None before its first annotation."""
        if not _valid_version_id(version):
            return None
        summary = self._store.get_doc(("acceptance", version, "summary.json"))
        return summary if summary and summary.get("annotations") else None

    def acceptance_records(self, version: str) -> list[dict[str, Any]]:
        """A version's acceptance records, one per annotation (for checks and exports)."""
        if not _valid_version_id(version):
            return []
        return self._store.list_docs(("acceptance", version, "annotations"))

    def rollback(self) -> ModelVersion:
        """Returns to the version promoted before the current one (else the current one's parent).

        Raises:
            RegistryError: nothing is promoted, or there is nothing to go back to.
        """
        came_from: list[str] = []

        def change(current: str | None, history: dict[str, Any]) -> str:
            if current is None:
                raise RegistryError(f"nothing is promoted in {self.root}: there is nothing to roll back")
            came_from[:] = [current]
            stack = history.setdefault("stack", [])
            _drop_unapplied(stack, current)
            if stack and stack[-1] == current:
                stack.pop()
            while stack and not self._is_whole(stack[-1]):
                stack.pop()  # a version removed or damaged by hand
            if stack:
                return stack[-1]
            parent = self._store.read_record(current).get("parent")
            if not parent or not self._is_whole(parent):
                raise RegistryError(
                    f"cannot roll back from {current!r}: no earlier promoted version and no registered parent"
                )
            stack.append(parent)
            return parent

        target = self._store.update(change, "rollback")
        log.info("rolled back from %s to %s in %s", came_from[0], target, self.root)
        return self._described(target)
