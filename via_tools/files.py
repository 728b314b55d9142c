"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

Every function here writes to a new temporary file in the target's own directory and then renames it
over the target with :func:`os.replace` (atomic on POSIX file systems). What that guarantees:

* **Whole or nothing.** If the write fails (an exception, a full disk, a killed process), the target keeps
  its old content (or stays absent) and the temporary file is removed (a killed process leaves it behind).
* **The usual file mode.** The new file gets the mode :func:`open` would give it: ``0o666`` less the
  process umask (e.g. ``0o644``), not :func:`tempfile.mkstemp`'s ``0o600``, so another user (a backend
  reading what a worker wrote) can read it. The kernel applies the umask when the file is created, so the
  umask is never read or changed here (no race with other threads). ``mode=`` sets an exact mode instead
  (e.g. ``0o600`` for credentials), before any data is written.
* **Durability on request.** With ``fsync=True`` the data is flushed to disk before the rename and the
  directory after it (and the directories created for the file too), so the new content survives a power
  loss; without it the write is atomic for readers but may be lost on a crash (it is much cheaper).
* **Recognisable leftovers.** Temporary files are named ``.tmp-<name>-<random>.tmp`` (hidden, never ending
  in the target's extension, so ``*.json`` or ``*.png`` globs never pick one up); a clean-up of files a
  killed process left can match :data:`TEMP_PREFIX` and :data:`TEMP_SUFFIX`.

Missing parent directories are created (``0o777`` less the umask). A symlink at the target is replaced by
the new file, not followed.

Example:
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> atomic_write_text(d / "out" / "run.json", '{"ok": true}\\n').read_text()
    '{"ok": true}\\n'
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["TEMP_PREFIX", "TEMP_SUFFIX", "atomic_path", "atomic_write_bytes", "atomic_write_text", "fsync_dir"]

#: Start of the name of every temporary file written here.
TEMP_PREFIX = ".tmp-"
#: End of the name of every temporary file written here.
TEMP_SUFFIX = ".tmp"

# The target's name is cut to this many bytes in the temporary name, which then stays within the usual
# 255-byte limit of a file name (prefix, "-", 16 random hex digits and the suffix take 26 more).
_NAME_BYTES = 200
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def _temp_name(name: str) -> str:
    raw = os.fsencode(name)
    if len(raw) > _NAME_BYTES:
        name = os.fsdecode(raw[:_NAME_BYTES])  # a cut UTF-8 sequence round-trips (surrogateescape)
    return f"{TEMP_PREFIX}{name}-{secrets.token_hex(8)}{TEMP_SUFFIX}"


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Makes the entries of ``directory`` (files created, renamed or replaced in it) durable.

    For a writer that creates, renames or replaces entries itself (e.g. a whole directory renamed into place).
    """
    if os.name == "nt":  # pragma: no cover - directories cannot be opened there; NTFS journals renames
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_parents(directory: Path, *, fsync: bool) -> None:
    if directory.is_dir():
        return
    missing = []
    d = directory
    while not d.exists() and d != d.parent:
        missing.append(d)
        d = d.parent
    directory.mkdir(parents=True, exist_ok=True)
    if fsync:
        for created in reversed(missing):
            fsync_dir(created.parent)


def _create_temp(target: Path, mode: int | None) -> tuple[Path, int]:
    """Creates a new empty temporary file next to ``target``; returns its path and a descriptor open for writing."""
    for _ in range(8):  # 64 random bits: a clash is next to impossible, a leftover of an old run even less
        tmp = target.with_name(_temp_name(target.name))
        try:
            fd = os.open(tmp, _CREATE_FLAGS, 0o666 if mode is None else 0o600)
        except FileExistsError:
            continue
        if mode is not None:
            try:
                if hasattr(os, "fchmod"):
                    os.fchmod(fd, mode)
                else:  # pragma: no cover - Windows before Python 3.13
                    os.chmod(tmp, mode)
            except BaseException:
                os.close(fd)
                _discard(tmp)
                raise
        return tmp, fd
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(target.parent))  # pragma: no cover


def _discard(tmp: Path) -> None:
    with contextlib.suppress(OSError):  # never hide the error that made the write fail
        tmp.unlink()


def _commit(tmp: Path, target: Path, *, fsync: bool) -> None:
    try:
        os.replace(tmp, target)
    except BaseException:
        _discard(tmp)
        raise
    if fsync:
        fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | bytearray | memoryview, *,
                       fsync: bool = False, mode: int | None = None) -> Path:
    """Replaces the file ``path`` with ``data`` atomically (temporary file in the same directory, then rename).

    Args:
        path: the file to write; missing parent directories are created.
        data: the new content.
        fsync: make the new content durable (fsync of the file before the rename, of the directory after).
        mode: exact permission bits of the new file; ``None`` gives ``0o666`` less the umask, like :func:`open`.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OSError: the directory cannot be created or written, the disk is full...; the old file is then
            left as it was and no temporary file remains.

    Example:
        >>> import tempfile
        >>> p = atomic_write_bytes(Path(tempfile.mkdtemp()) / "mask.png", b"\\x89PNG...")
        >>> p.read_bytes()[:4]
        b'\\x89PNG'
    """
    target = Path(path)
    _make_parents(target.parent, fsync=fsync)
    tmp, fd = _create_temp(target, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        _discard(tmp)
        raise
    _commit(tmp, target, fsync=fsync)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8",
                      fsync: bool = False, mode: int | None = None) -> Path:
    """Replaces the file ``path`` with ``text`` atomically; see :func:`atomic_write_bytes`.

    The text is written as it is: no newline translation (``"\\n"`` stays ``"\\n"``, as with ``newline=""``).

    Args:
        path: the file to write; missing parent directories are created.
        text: the new content.
        encoding: how the text is encoded; a character it cannot encode raises before anything is written.
        fsync: make the new content durable (fsync of the file before the rename, of the directory after).
        mode: exact permission bits of the new file; ``None`` gives ``0o666`` less the umask, like :func:`open`.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Example:
        >>> import json, tempfile
        >>> p = atomic_write_text(Path(tempfile.mkdtemp()) / "eval.json", json.dumps({"segm_AP": 0.41}))
        >>> json.loads(p.read_text())
        {'segm_AP': 0.41}
    """
    return atomic_write_bytes(path, text.encode(encoding), fsync=fsync, mode=mode)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = False, mode: int | None = None) -> Iterator[Path]:
    """Yields a temporary path to write the new content of ``path`` to; renamed over ``path`` on success.

    For writers that want a file name or open the file themselves (:func:`torch.save`, matplotlib's
    ``savefig``, ``PIL.Image.save``, :func:`json.dump` into ``open(tmp, "w")``...). The temporary file
    already exists, empty, with the final mode; the writer must write to exactly that path (not add an
    extension to it, as :func:`numpy.save` does) and close it before the ``with`` block ends. Its name ends
    in ``.tmp``, so a writer that picks the format from the extension must be told the format.

    If the block raises, the temporary file is removed, ``path`` keeps its old content and the exception
    goes on. If it ends normally, the temporary file (written or not) replaces ``path``.

    Args:
        path: the file to write; missing parent directories are created.
        fsync: make the new content durable (fsync of the file before the rename, of the directory after).
        mode: exact permission bits of the new file; ``None`` gives ``0o666`` less the umask, like :func:`open`.

    Yields:
        The temporary file's path, in the same directory as ``path``.

    Example:
        >>> import json, tempfile
        >>> target = Path(tempfile.mkdtemp()) / "history.json"
        >>> with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8") as f:
        ...     json.dump({"stack": []}, f)
        >>> target.read_text()
        '{"stack": []}'
    """
    target = Path(path)
    _make_parents(target.parent, fsync=fsync)
    tmp, fd = _create_temp(target, mode)
    os.close(fd)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except BaseException:
        _discard(tmp)
        raise
    _commit(tmp, target, fsync=fsync)
