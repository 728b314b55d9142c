"""What a registry store does for the rules, and the few pieces both stores share.

A store keeps the versions (a checkpoint and its record each), the ``current`` pointer and the promotion
history; the rules above it (:mod:`shoeseg_services.registry.rules`) decide what a version is, what is current
and what a promotion or a rollback changes. :class:`Store` is the whole interface between the two; its
implementations are the local folder (:mod:`shoeseg_services.registry.local_store`) and the S3 bucket prefix
(:mod:`shoeseg_services.registry.s3_store`).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from via_tools.files import TEMP_PREFIX

log = logging.getLogger(__name__)

#: The checkpoint file of a version, in either store.
CHECKPOINT_NAME = "model.pt"

#: Prefix of every temporary file or directory the registry writes (that of :mod:`via_tools.files`' temporary
#: files, which write ``current``, history.json and meta.json).
TMP_PREFIX = TEMP_PREFIX

#: Problems already logged by :func:`warn_once` (where, message), to warn once per process.
_reported: set[tuple[str, str]] = set()


class RegistryError(RuntimeError):
    """A registry operation that cannot be done; the message names the version and the root."""


class NotCommitted(RegistryError):
    """An S3 version without its commit marker: an upload in progress or abandoned (skipped quietly)."""


class Store(Protocol):
    """Where versions, the pointer and the history are kept; every write is whole or not at all.

    ``location`` names the store in messages (a folder, or ``s3://bucket/prefix``).
    """

    location: str

    # versions
    def version_ids(self) -> list[str]:
        """The ids of every version directory or prefix, whole or not (hidden names left out)."""

    def version_path(self, version: str) -> Path | str:
        """The version's directory, or its ``s3://`` prefix."""

    def read_record(self, version: str) -> dict[str, Any]:
        """The version's record (created_at, metrics, parent, meta, sha256, bytes).

        Raises:
            RegistryError: it is not registered, or its record is missing or damaged (:class:`NotCommitted` on
                S3 when its commit marker is not there yet).
        """

    def check_checkpoint(self, version: str, record: dict[str, Any]) -> Path:
        """Where the version's checkpoint is (or will be) locally, after checking it is there and not empty;
        nothing is downloaded."""

    def local_checkpoint(self, version: str, record: dict[str, Any]) -> Path:
        """The version's checkpoint as a local file (downloaded once when the store is remote)."""

    def add_version(self, version: str, src: Path, record: dict[str, Any]) -> None:
        """Adds the checkpoint ``src`` with its record as ``version``, appearing whole or not at all.

        Raises:
            RegistryError: the version is already registered.
        """

    # pointer and history
    def current_id(self) -> str | None:
        """The version the pointer names, or None."""

    def history(self, *, strict: bool) -> dict[str, Any]:
        """The promotion history ``{"stack": [...], "events": [...]}``; a broken one raises (``strict``, for
        writers) or reads as empty."""

    def update(self, change: Callable[[str | None, dict[str, Any]], str], action: str) -> str:
        """Runs ``change(current, history) -> new current`` on the latest state (``change`` may edit the
        history), logs ``action`` in the history's events and writes pointer and history, atomically with
        respect to every other writer; returns the new current version."""

    def pointer_name(self) -> str:
        """The pointer's file or prefix, for messages."""

    # small JSON documents beside the versions (live acceptance)
    def put_doc(self, parts: tuple[str, ...], data: dict[str, Any]) -> None:
        """Writes the document at ``parts`` (path components under the root)."""

    def get_doc(self, parts: tuple[str, ...]) -> dict[str, Any] | None:
        """The document at ``parts``; None when absent or damaged (damage is warned about)."""

    def list_docs(self, parts: tuple[str, ...]) -> list[dict[str, Any]]:
        """Every readable ``.json`` document in the folder ``parts``, by name."""

    def delete_doc(self, parts: tuple[str, ...]) -> None:
        """Removes the document at ``parts``; one already gone is no error."""

    def docs_lock(self) -> AbstractContextManager[bool]:
        """Held while a document and the summary made from it are written (a no-op where there is no lock)."""


def now() -> str:
    """The time now, as the registry records it (UTC, ISO 8601, seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def temp_path(directory: Path, name: str) -> Path:
    """A new temporary name for ``name`` in ``directory`` (removed as stale when a writer dies with it)."""
    return directory / f"{TMP_PREFIX}{name}-{secrets.token_hex(4)}"


def empty_history() -> dict[str, Any]:
    return {"stack": [], "events": []}


def warn_once(where: str, message: str) -> None:
    """Logs ``message`` as a warning the first time this process sees it for ``where``."""
    key = (where, message)
    if key not in _reported:
        _reported.add(key)
        log.warning("%s", message)
