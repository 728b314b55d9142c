"""The registry's S3 store: a bucket prefix, written by conditional creates, its checkpoints cached locally.

``SHOESEG_MODEL_DIR=s3://bucket/prefix``; endpoint and credentials from the standard AWS variables,
``AWS_ENDPOINT_URL`` for an S3-compatible store (the client and its errors: :mod:`shoeseg_services.s3`)::

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
* **Readers see promotions without a restart.** :meth:`S3Store.current_id` lists ``current/`` after the
  highest key it has seen (one small LIST request; pointer objects are immutable, so what was read once need
  not be read again).
* **Checkpoints are downloaded once per machine.** :meth:`S3Store.local_checkpoint` gives a local file:
  ``<cache_dir>/models/<sha256>.pt``, downloaded when absent, its sha256 checked against ``version.json``
  before it is renamed into place (a mismatch raises and keeps nothing). The registering machine puts its own
  copy there. Only :meth:`ModelRegistry.get <shoeseg_services.registry.rules.ModelRegistry.get>` and
  :meth:`~shoeseg_services.registry.rules.ModelRegistry.current` download; what ``versions``, ``promote``,
  ``rollback`` and ``register`` give as ``checkpoint`` is where the file will be.
"""

from __future__ import annotations

import contextlib
import copy
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
from pathlib import Path
from typing import Any

from shoeseg_services.registry.store import (
    CHECKPOINT_NAME,
    NotCommitted,
    RegistryError,
    empty_history,
    now,
    temp_path,
    warn_once,
)

log = logging.getLogger(__name__)

#: The commit marker and metadata of a version on S3.
S3_META_NAME = "version.json"

#: A promotion that loses the race for the next pointer object tries again, this many times in all.
S3_PROMOTE_ATTEMPTS = 50

_POINTER_RE = re.compile(r"^(\d{12})\.json$")


class S3Store:
    """A bucket prefix (layout and guarantees in the module docstring); a :class:`~.store.Store`."""

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
        from shoeseg_services.s3 import client_errors, is_missing

        c = self._client()
        try:
            body = c.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except client_errors() as e:
            if is_missing(e):
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
            raise NotCommitted(f"version {version!r} is not in the registry at {self.location} "
                               f"(no {self.uri(key)}: never registered, or its upload did not finish)")
        return data

    def check_checkpoint(self, version: str, record: dict[str, Any]) -> Path:
        from shoeseg_services.s3 import client_errors, is_missing

        key = self.key("versions", version, CHECKPOINT_NAME)
        sha, size = record.get("sha256"), record.get("bytes")
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise RegistryError(f"version {version!r} is damaged: {self.uri(self.key('versions', version, S3_META_NAME))} "
                                "records no sha256 of the checkpoint")
        try:
            head = self._client().head_object(Bucket=self.bucket, Key=key)
        except client_errors() as e:
            if is_missing(e):
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
        tmp = temp_path(path.parent, path.name)
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
        from shoeseg_services.s3 import client_errors, is_taken

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
            if is_taken(e):
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
            tmp = temp_path(path.parent, path.name)
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
        return copy.deepcopy(data["history"]) if data else empty_history()

    def update(self, change: Callable[[str | None, dict[str, Any]], str], action: str) -> str:
        from shoeseg_services.s3 import client_errors, is_taken

        c = self._client()
        for attempt in range(S3_PROMOTE_ATTEMPTS):
            seq, data = self.latest()
            history = copy.deepcopy(data["history"]) if data else empty_history()
            version = change(data["version"] if data else None, history)
            history.setdefault("events", []).append({"action": action, "version": version, "at": now()})
            seq += 1
            key = self._pointer_prefix() + f"{seq:012d}.json"
            record = {"seq": seq, "version": version, "action": action, "at": now(), "history": history}
            try:
                c.put_object(Bucket=self.bucket, Key=key, Body=json.dumps(record).encode(),
                             ContentType="application/json", IfNoneMatch="*")
            except client_errors() as e:
                if is_taken(e):
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
            warn_once(self.key(*parts), str(e))
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
