"""Atomic writes: content, the umask's file mode, parents, durability and what a failed write leaves."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
from pathlib import Path

import pytest

from via_tools import files
from via_tools.files import TEMP_PREFIX, TEMP_SUFFIX, atomic_path, atomic_write_bytes, atomic_write_text


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _write_bytes(p: Path) -> None:
    atomic_write_bytes(p, b"new")


def _write_text(p: Path) -> None:
    atomic_write_text(p, "new")


def _write_via_path(p: Path) -> None:
    with atomic_path(p) as tmp, open(tmp, "wb") as f:
        f.write(b"new")


WRITERS = [_write_bytes, _write_text, _write_via_path]


@pytest.mark.parametrize("write", WRITERS)
def test_each_variant_writes_the_content_creates_the_parents_and_leaves_no_temporary_file(tmp_path, write):
    target = tmp_path / "a" / "b" / "out.bin"
    write(target)
    assert target.read_bytes() == b"new"
    assert os.listdir(target.parent) == ["out.bin"]
    write(target)  # replacing an existing file
    assert target.read_bytes() == b"new" and os.listdir(target.parent) == ["out.bin"]


def test_returns_the_path_and_takes_strings(tmp_path):
    assert atomic_write_bytes(str(tmp_path / "x.bin"), b"\x00\x01") == tmp_path / "x.bin"
    assert atomic_write_text(str(tmp_path / "y.txt"), "é\r\n") == tmp_path / "y.txt"
    assert (tmp_path / "y.txt").read_bytes() == "é\r\n".encode()  # no newline translation
    atomic_write_text(tmp_path / "z.txt", "é", encoding="latin-1")
    assert (tmp_path / "z.txt").read_bytes() == b"\xe9"
    atomic_write_bytes(tmp_path / "m.bin", memoryview(bytearray(b"abc")))
    assert (tmp_path / "m.bin").read_bytes() == b"abc"


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002, 0o027])
@pytest.mark.parametrize("write", WRITERS)
def test_the_file_gets_the_mode_the_umask_gives(tmp_path, write, mask):
    target = tmp_path / "out.bin"
    with umask(mask):
        write(target)  # new file
        assert _mode(target) == 0o666 & ~mask
        target.chmod(0o600)
        write(target)  # the replacement gets the umask's mode again, not the old file's
        assert _mode(target) == 0o666 & ~mask


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_an_explicit_mode_is_exact_whatever_the_umask(tmp_path, mask):
    with umask(mask):
        assert _mode(atomic_write_text(tmp_path / "creds.json", "{}", mode=0o600)) == 0o600
        assert _mode(atomic_write_bytes(tmp_path / "shared.bin", b"", mode=0o640)) == 0o640
        with atomic_path(tmp_path / "p.bin", mode=0o600) as tmp:
            assert _mode(tmp) == 0o600  # before anything is written to it
        assert _mode(tmp_path / "p.bin") == 0o600


def test_atomic_path_yields_a_temporary_file_beside_the_target(tmp_path):
    target = tmp_path / "history.json"
    target.write_text("old")
    with umask(0o022), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        assert tmp.name.startswith(TEMP_PREFIX + "history.json-") and tmp.name.endswith(TEMP_SUFFIX)
        assert tmp.is_file() and tmp.stat().st_size == 0 and _mode(tmp) == 0o644
        assert target.read_text() == "old"  # readers still see the old file
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"stack": ["a"]}, f)
    assert json.loads(target.read_text()) == {"stack": ["a"]} and not tmp.exists()


def test_atomic_path_with_nothing_written_leaves_an_empty_file(tmp_path):
    with atomic_path(tmp_path / "empty"):
        pass
    assert (tmp_path / "empty").read_bytes() == b""


def test_an_exception_inside_atomic_path_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="writer failed"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.pt"]


def test_a_writer_that_removes_the_temporary_file_fails_loudly(tmp_path):
    target = tmp_path / "a.npy"
    target.write_bytes(b"old")
    with pytest.raises(FileNotFoundError), atomic_path(target) as tmp:
        tmp.unlink()  # e.g. a writer that adds its own extension and writes elsewhere
    assert target.read_bytes() == b"old"


def test_failing_writes_keep_the_old_content_and_leave_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(target, "snow ☃", encoding="ascii")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, 12345)  # fails while writing, after the temporary file is made
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    for write in WRITERS:
        with pytest.raises(OSError, match="No space"):
            write(target)
        assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


def test_a_missing_target_stays_missing_when_the_write_fails(tmp_path):
    with pytest.raises(TypeError):
        atomic_write_bytes(tmp_path / "new.bin", object())
    assert os.listdir(tmp_path) == []


def _write_bytes_durably(p: Path) -> None:
    atomic_write_bytes(p, b"x", fsync=True)


def _write_text_durably(p: Path) -> None:
    atomic_write_text(p, "x", fsync=True)


def _write_via_path_durably(p: Path) -> None:
    with atomic_path(p, fsync=True) as tmp:
        tmp.write_bytes(b"x")


@pytest.mark.parametrize("write", [_write_bytes_durably, _write_text_durably, _write_via_path_durably])
def test_fsync_flushes_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch, write):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "current"
    write(target)
    assert events == ["fsync file", "replace", "fsync dir"]
    assert target.read_bytes() == b"x"


def test_fsync_also_makes_the_created_directories_durable(tmp_path, monkeypatch):
    dirs = []
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            dirs.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write_text(tmp_path / "a" / "b" / "c.txt", "x", fsync=True)
    inodes = [p.stat().st_ino for p in (tmp_path, tmp_path / "a", tmp_path / "a" / "b")]
    assert dirs == inodes  # each new entry's directory, the file's own directory last


def test_without_fsync_nothing_is_fsynced(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "fsync", calls.append)
    atomic_write_text(tmp_path / "a" / "x.txt", "x")
    with atomic_path(tmp_path / "y") as tmp:
        tmp.write_text("y")
    assert calls == []


def test_a_long_file_name_still_fits(tmp_path):
    name = "é" * 120 + ".json"  # 245 bytes: the temporary name is cut, the target keeps its name
    assert atomic_write_text(tmp_path / name, "{}").read_text() == "{}"
    assert os.listdir(tmp_path) == [name]


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("untouched")
    link = tmp_path / "link.txt"
    link.symlink_to(elsewhere)
    atomic_write_text(link, "new")
    assert not link.is_symlink() and link.read_text() == "new" and elsewhere.read_text() == "untouched"


def test_concurrent_writers_never_leave_a_mixed_or_half_file(tmp_path):
    target = tmp_path / "state.json"
    payloads = [json.dumps({"writer": i, "data": "x" * 50_000}) for i in range(8)]
    seen = []

    def writer(text):
        for _ in range(5):
            atomic_write_text(target, text)
            seen.append(target.read_text())

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(s in payloads for s in seen)
    assert os.listdir(tmp_path) == ["state.json"]


def test_the_module_needs_nothing_beyond_the_standard_library():
    import ast

    tree = ast.parse(Path(files.__file__).read_text(encoding="utf-8"))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "contextlib", "errno", "os", "secrets", "collections", "pathlib"}
