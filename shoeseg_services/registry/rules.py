"""The registry's rules: version ids and records, what is current and what came before it, over either store.

:class:`ModelRegistry` is the one implementation of the versioning: a version's id is its checkpoint's own, its
record keeps the metrics, the parent and the checkpoint's sha256 and size; ``register`` adds a candidate,
``promote`` makes one current, ``rollback`` goes back down the promotion stack (else to the current version's
parent), ``versions`` lists every whole version, and each version's live acceptance records are kept beside
it. Where all this is written is the store's business (:class:`~shoeseg_services.registry.store.Store`): the
local folder (:mod:`~shoeseg_services.registry.local_store`, the default) or an S3 bucket prefix
(:mod:`~shoeseg_services.registry.s3_store`, ``s3://bucket/prefix``), picked from the root.

The promotion history is a stack of the versions promoted, and an event log. A promotion pushes its version
(unless it is on top already); a rollback pops the current one and returns to the version below it, skipping
versions removed or damaged since. What the stack holds after the last entry of the current version is a
promotion whose pointer write never happened (a writer killed between the two), and is dropped.

**A damaged version is skipped, not fatal.** :meth:`ModelRegistry.versions` leaves out a version whose
metadata is missing or invalid or whose checkpoint is missing or empty (with one warning per version per
process; an S3 version without its commit marker silently); :meth:`ModelRegistry.get` of it raises
:class:`RegistryError` naming the version and the file; :meth:`ModelRegistry.current` raises when the pointer
names such a version (the backend then keeps serving the model it holds).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoeseg_services.registry.local_store import LocalStore
from shoeseg_services.registry.s3_store import S3Store
from shoeseg_services.registry.store import NotCommitted, RegistryError, Store, now, warn_once

log = logging.getLogger(__name__)


@dataclass
class ModelVersion:
    """One registered model version.

    Args:
        version: version id (the checkpoint's).
        path: the version's directory (a ``Path``), or its ``s3://`` prefix.
        checkpoint: the checkpoint file inside it (on S3: the local copy, see
            :mod:`~shoeseg_services.registry.s3_store`).
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

    def recorded(self, key: str) -> dict[str, Any] | None:
        """A record kept in ``meta`` (``"gate"``: the worker's gate decision; ``"annotator"``: the annotator's
        numbers on the training's validation images, copied from the checkpoint at registration), or ``None``
        when there is none or it is not a mapping (a checkpoint trained without validation images, a version
        registered before the record existed)."""
        value = (self.meta or {}).get(key)
        return value if isinstance(value, dict) else None

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


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


class ModelRegistry:
    """Model versions with a promoted ``current`` one, in a local folder or an S3 bucket prefix.

    Opening a local registry removes temporary data left by a killed writer (see
    :mod:`~shoeseg_services.registry.local_store`).

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
            self._store: Store = S3Store(_s3_root_text(root), Path(cache_dir))
            self.root: Path | str = self._store.location
        else:
            local = LocalStore(Path(root))
            self._store = local
            self.root = local.root
            self.versions_dir, self.pointer_path, self.history_path = (
                local.versions_dir, local.pointer_path, local.history_path)

    @property
    def is_s3(self) -> bool:
        return isinstance(self._store, S3Store)

    def _locked(self, *, wait: bool = True):
        """The local writers' lock (a local registry only)."""
        if not isinstance(self._store, LocalStore):
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
            except NotCommitted as e:
                log.debug("model registry: skipping %s: %s", version, e)
            except RegistryError as e:
                warn_once(str(self._store.version_path(version)),
                           f"model registry: skipping {self._store.version_path(version)}: {e}")
        return sorted(out, key=lambda v: (v.created_at, v.version))

    def has_version(self, version: str) -> bool:
        """Whether ``version`` is registered and whole (nothing is downloaded)."""
        return _valid_version_id(version) and self._is_whole(version)

    def get(self, version: str) -> ModelVersion:
        """One version by id, its checkpoint a local file (on S3 downloaded once, see
        :mod:`~shoeseg_services.registry.s3_store`).

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
        from shoeseg.checkpoint import read_checkpoint_meta

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
        # what an annotator would edit on the training's validation images, at its serving threshold (shoeseg.edits)
        meta.setdefault("annotator", (cmeta.get("metrics") or {}).get("annotator"))
        record = {
            "version": version,
            "created_at": now(),
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
        """Makes ``version`` the current one (one atomic pointer change: how each store makes it one is in
        its module docstring).

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
