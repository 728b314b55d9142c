"""The registry's local store: atomic versions, stale temporary data, damaged versions, file modes."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest

from shoeseg.checkpoint import load_checkpoint
from shoeseg_services.registry import ModelRegistry, RegistryError


def test_register_writes_a_complete_version_atomically(tmp_path, lineage):
    reg = ModelRegistry(tmp_path / "models")
    assert reg.versions() == [] and reg.current() is None
    v = reg.register(lineage[0], metrics={"segm_AP": 0.5}, parent=None, meta={"dataset": "shoes"})
    assert v.version == "20240101-000000-aaaaaa" and v.status == "candidate"
    assert v.checkpoint.read_bytes() == lineage[0].read_bytes()
    meta = json.loads((v.path / "meta.json").read_text())
    assert meta["metrics"] == {"segm_AP": 0.5} and meta["meta"]["dataset"] == "shoes"
    assert meta["meta"]["class_names"] == ["shoe"]
    assert [p.name for p in reg.versions_dir.iterdir()] == [v.version]  # no temporary directory left
    with pytest.raises(RegistryError, match="already registered"):
        reg.register(lineage[0], metrics={}, parent=None, meta={})


def _warnings_naming(caplog, text):
    return [r for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


def test_damaged_versions_are_skipped_and_stale_temporary_data_removed(tmp_path, lineage, caplog):
    reg = ModelRegistry(tmp_path)
    a, b, c = (reg.register(p, metrics={}, parent=None, meta={}) for p in lineage)
    reg.promote(a.version)
    meta = (b.path / "meta.json").read_text()
    (b.path / "meta.json").write_text(meta[: len(meta) // 2])  # half-written metadata
    c.checkpoint.unlink()  # a version without its checkpoint
    stale_dir = reg.versions_dir / ".tmp-20240104-000000-dddddd-1a2b3c4d"  # a register killed mid-way
    stale_dir.mkdir()
    (stale_dir / "model.pt").write_bytes(b"partial")
    stale_file = tmp_path / ".tmp-current-5e6f7a8b"  # a pointer write killed mid-way
    stale_file.write_text("20240104")

    with caplog.at_level(logging.WARNING, logger="shoeseg_services.registry"):
        reg = ModelRegistry(tmp_path)
        assert not stale_dir.exists() and not stale_file.exists()
        assert _warnings_naming(caplog, str(stale_dir)) and _warnings_naming(caplog, str(stale_file))
        assert [v.version for v in reg.versions()] == [a.version]
        assert [v.version for v in reg.versions()] == [a.version]
    assert len(_warnings_naming(caplog, f"skipping {b.path}")) == 1  # once per version, not per call
    assert len(_warnings_naming(caplog, f"skipping {c.path}")) == 1

    assert reg.current().version == a.version
    assert load_checkpoint(reg.get(a.version).checkpoint).version == a.version
    with pytest.raises(RegistryError, match=f"{b.version}.*meta.json"):
        reg.get(b.version)
    with pytest.raises(RegistryError, match=f"{c.version}.*model.pt"):
        reg.get(c.version)
    with pytest.raises(RegistryError, match=f"{b.version}.*meta.json"):
        reg.promote(b.version)
    (tmp_path / "current").write_text(b.version + "\n")  # the pointer names the damaged version
    with pytest.raises(RegistryError, match=f"points to '{b.version}'.*meta.json"):
        reg.current()
    assert [v.version for v in reg.versions()] == [a.version]


def test_temporary_data_of_a_writer_holding_the_lock_is_kept(tmp_path, lineage):
    reg = ModelRegistry(tmp_path)
    reg.register(lineage[0], metrics={}, parent=None, meta={})
    in_progress = reg.versions_dir / ".tmp-20240102-000000-bbbbbb-0badf00d"
    with reg._locked():  # another writer, in the middle of a register
        in_progress.mkdir()
        ModelRegistry(tmp_path)
        assert in_progress.is_dir()
    ModelRegistry(tmp_path)  # the writer is gone: its leftover is stale now
    assert not in_progress.exists()


def test_a_broken_history_does_not_hide_the_versions(tmp_path, lineage):
    reg = ModelRegistry(tmp_path)
    a = reg.register(lineage[0], metrics={}, parent=None, meta={})
    reg.promote(a.version)
    (tmp_path / "history.json").write_text('{"stack": ["')
    assert [v.status for v in reg.versions()] == ["promoted"] and reg.current().version == a.version
    with pytest.raises(RegistryError, match="history.json"):
        reg.promote(a.version)  # a writer does not overwrite the rollback stack it cannot read


def test_written_files_and_directories_have_the_usual_permissions(tmp_path, lineage):
    old = os.umask(0o022)
    try:
        reg = ModelRegistry(tmp_path / "models")
        v = reg.register(lineage[0], metrics={}, parent=None, meta={})
        reg.promote(v.version)
    finally:
        os.umask(old)

    def mode(p):
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(v.path) == 0o755 and mode(reg.versions_dir) == 0o755
    for f in (v.checkpoint, v.path / "meta.json", reg.pointer_path, reg.history_path):
        assert mode(f) == 0o644, f
