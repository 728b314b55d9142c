"""The on-disk model registry: atomic versions, the current pointer, promote and rollback."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest

from shoeseg.model import build_model, load_checkpoint, save_checkpoint
from shoeseg_services.registry import ModelRegistry, RegistryError


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Three checkpoints: a, b fine-tuned from a, c fine-tuned from b."""
    d = tmp_path_factory.mktemp("ckpts")
    model = build_model(num_classes=1, weights=None, min_size=64, max_size=96)
    paths, parent = [], None
    for name in "abc":
        p = d / f"{name}.pt"
        parent = save_checkpoint(p, model=model, class_names=["shoe"], metrics={"segm_AP": 0.1 * (len(paths) + 1)},
                                 parent_version=parent, version=f"2024010{len(paths) + 1}-000000-{name * 6}")
        paths.append(p)
    return paths


def test_register_writes_a_complete_version_atomically(tmp_path, checkpoints):
    reg = ModelRegistry(tmp_path / "models")
    assert reg.versions() == [] and reg.current() is None
    v = reg.register(checkpoints[0], metrics={"segm_AP": 0.5}, parent=None, meta={"dataset": "shoes"})
    assert v.version == "20240101-000000-aaaaaa" and v.status == "candidate"
    assert v.checkpoint.read_bytes() == checkpoints[0].read_bytes()
    meta = json.loads((v.path / "meta.json").read_text())
    assert meta["metrics"] == {"segm_AP": 0.5} and meta["meta"]["dataset"] == "shoes"
    assert meta["meta"]["class_names"] == ["shoe"]
    assert [p.name for p in reg.versions_dir.iterdir()] == [v.version]  # no temporary directory left
    with pytest.raises(RegistryError, match="already registered"):
        reg.register(checkpoints[0], metrics={}, parent=None, meta={})


def test_metrics_and_parent_default_to_the_checkpoints(tmp_path, checkpoints):
    reg = ModelRegistry(tmp_path)
    v = reg.register(checkpoints[1], metrics=None, parent=None, meta={})
    assert v.parent == "20240101-000000-aaaaaa" and v.metrics == {"segm_AP": pytest.approx(0.2)}


def test_promote_and_rollback_walk_the_promotion_history(tmp_path, checkpoints):
    reg = ModelRegistry(tmp_path)
    a, b, c = (reg.register(p, metrics={}, parent=None, meta={}).version for p in checkpoints)
    assert reg.promote(a).status == "promoted"
    reg.promote(b)
    reg.promote(c)
    assert reg.current().version == c
    assert reg.current_version_id() == c and (tmp_path / "current").read_text().strip() == c
    assert {v.version: v.status for v in reg.versions()} == {a: "candidate", b: "candidate", c: "promoted"}
    assert reg.rollback().version == b
    assert reg.rollback().version == a  # not back to c: rollback goes down the stack
    with pytest.raises(RegistryError, match="cannot roll back"):
        reg.rollback()
    assert reg.get(a).promoted_at is not None and reg.get(a).status == "promoted"
    events = json.loads((tmp_path / "history.json").read_text())["events"]
    assert [e["action"] for e in events] == ["promote", "promote", "promote", "rollback", "rollback"]


def test_rollback_falls_back_to_the_parent(tmp_path, checkpoints):
    reg = ModelRegistry(tmp_path)
    reg.register(checkpoints[0], metrics={}, parent=None, meta={})
    b = reg.register(checkpoints[1], metrics={}, parent=None, meta={})
    reg.promote(b.version)
    (tmp_path / "history.json").unlink()  # e.g. a registry copied without its history
    assert reg.rollback().version == "20240101-000000-aaaaaa"


def test_errors_name_the_version_and_the_root(tmp_path, checkpoints):
    reg = ModelRegistry(tmp_path)
    with pytest.raises(RegistryError, match="nothing is promoted"):
        reg.rollback()
    with pytest.raises(RegistryError, match="'v9'.*not in the registry"):
        reg.promote("v9")
    with pytest.raises(RegistryError, match="not a valid"):
        reg.get("../etc")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    with pytest.raises(RegistryError, match="junk.pt"):
        reg.register(junk, metrics={}, parent=None, meta={})
    (tmp_path / "current").write_text("ghost\n")
    with pytest.raises(RegistryError, match="ghost"):
        reg.current()


def _warnings_naming(caplog, text):
    return [r for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


def test_damaged_versions_are_skipped_and_stale_temporary_data_removed(tmp_path, checkpoints, caplog):
    reg = ModelRegistry(tmp_path)
    a, b, c = (reg.register(p, metrics={}, parent=None, meta={}) for p in checkpoints)
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


def test_temporary_data_of_a_writer_holding_the_lock_is_kept(tmp_path, checkpoints):
    reg = ModelRegistry(tmp_path)
    reg.register(checkpoints[0], metrics={}, parent=None, meta={})
    in_progress = reg.versions_dir / ".tmp-20240102-000000-bbbbbb-0badf00d"
    with reg._locked():  # another writer, in the middle of a register
        in_progress.mkdir()
        ModelRegistry(tmp_path)
        assert in_progress.is_dir()
    ModelRegistry(tmp_path)  # the writer is gone: its leftover is stale now
    assert not in_progress.exists()


def test_a_broken_history_does_not_hide_the_versions(tmp_path, checkpoints):
    reg = ModelRegistry(tmp_path)
    a = reg.register(checkpoints[0], metrics={}, parent=None, meta={})
    reg.promote(a.version)
    (tmp_path / "history.json").write_text('{"stack": ["')
    assert [v.status for v in reg.versions()] == ["promoted"] and reg.current().version == a.version
    with pytest.raises(RegistryError, match="history.json"):
        reg.promote(a.version)  # a writer does not overwrite the rollback stack it cannot read


def test_written_files_and_directories_have_the_usual_permissions(tmp_path, checkpoints):
    old = os.umask(0o022)
    try:
        reg = ModelRegistry(tmp_path / "models")
        v = reg.register(checkpoints[0], metrics={}, parent=None, meta={})
        reg.promote(v.version)
    finally:
        os.umask(old)

    def mode(p):
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(v.path) == 0o755 and mode(reg.versions_dir) == 0o755
    for f in (v.checkpoint, v.path / "meta.json", reg.pointer_path, reg.history_path):
        assert mode(f) == 0o644, f


def test_root_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOESEG_MODEL_DIR", str(tmp_path / "env-models"))
    assert ModelRegistry().root == tmp_path / "env-models"
