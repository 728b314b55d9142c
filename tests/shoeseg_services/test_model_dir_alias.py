"""MODEL_DIR, the name label-studio-ml-backend's examples use, is read as an alias of SHOESEG_MODEL_DIR."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from shoeseg_services import settings as settings_module
from shoeseg_services.registry import ModelRegistry
from shoeseg_services.settings import Settings, SettingsError


@pytest.fixture(autouse=True)
def _fresh_warnings():
    settings_module._model_dir_warned.clear()
    yield
    settings_module._model_dir_warned.clear()


def test_model_dir_alone_names_the_registry():
    assert Settings.from_env({"MODEL_DIR": "/data/models"}).model_dir == Path("/data/models")
    assert Settings.from_env({"MODEL_DIR": "s3://shoes/models/"}).model_dir == "s3://shoes/models"


def test_shoeseg_model_dir_wins_with_one_warning(caplog):
    env = {"SHOESEG_MODEL_DIR": "/srv/ours", "MODEL_DIR": "/srv/theirs"}
    with caplog.at_level(logging.WARNING, logger="shoeseg_services.settings"):
        first = Settings.from_env(env)
        second = Settings.from_env(env)
    assert first.model_dir == second.model_dir == Path("/srv/ours")
    warnings = [r.getMessage() for r in caplog.records if "MODEL_DIR" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "SHOESEG_MODEL_DIR=/srv/ours" in warnings[0] and "MODEL_DIR=/srv/theirs" in warnings[0]


def test_neither_set_is_the_default_and_no_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="shoeseg_services.settings"):
        assert Settings.from_env({}).model_dir == Path("models")
        assert Settings.from_env({"SHOESEG_MODEL_DIR": "/srv/ours"}).model_dir == Path("/srv/ours")
    assert not caplog.records


def test_a_bad_alias_is_refused_naming_model_dir():
    with pytest.raises(SettingsError, match=r"MODEL_DIR='s3:/nobucket'"):
        Settings.from_env({"MODEL_DIR": "s3:/nobucket"})


def test_the_registry_and_the_cli_read_the_alias(tmp_path, monkeypatch):
    monkeypatch.delenv("SHOESEG_MODEL_DIR", raising=False)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "aliased"))
    assert ModelRegistry().root == tmp_path / "aliased"
    monkeypatch.setenv("SHOESEG_MODEL_DIR", str(tmp_path / "ours"))
    assert ModelRegistry().root == tmp_path / "ours"
