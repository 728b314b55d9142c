"""The registry's rules, on the local store: version records, the current pointer, promote and rollback."""

from __future__ import annotations

import json

import pytest

from shoeseg_services.registry import ModelRegistry, RegistryError


def test_metrics_and_parent_default_to_the_checkpoints(tmp_path, lineage):
    reg = ModelRegistry(tmp_path)
    v = reg.register(lineage[1], metrics=None, parent=None, meta={})
    assert v.parent == "20240101-000000-aaaaaa" and v.metrics == {"segm_AP": pytest.approx(0.2)}


def test_promote_and_rollback_walk_the_promotion_history(tmp_path, lineage):
    reg = ModelRegistry(tmp_path)
    a, b, c = (reg.register(p, metrics={}, parent=None, meta={}).version for p in lineage)
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


def test_rollback_falls_back_to_the_parent(tmp_path, lineage):
    reg = ModelRegistry(tmp_path)
    reg.register(lineage[0], metrics={}, parent=None, meta={})
    b = reg.register(lineage[1], metrics={}, parent=None, meta={})
    reg.promote(b.version)
    (tmp_path / "history.json").unlink()  # e.g. a registry copied without its history
    assert reg.rollback().version == "20240101-000000-aaaaaa"


def test_errors_name_the_version_and_the_root(tmp_path, lineage):
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


def test_root_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOESEG_MODEL_DIR", str(tmp_path / "env-models"))
    assert ModelRegistry().root == tmp_path / "env-models"
