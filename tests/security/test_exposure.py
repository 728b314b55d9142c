"""Serving off loopback without basic auth is refused unless the operator says so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shoeseg_app.cli.serve import exposure_problem
from shoeseg_services.settings import Settings

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(("host", "settings", "refused"), [
    ("127.0.0.1", Settings(), False),
    ("localhost", Settings(), False),
    ("::1", Settings(), False),
    ("0.0.0.0", Settings(), True),
    ("192.168.1.5", Settings(), True),
    ("::", Settings(), True),
    ("0.0.0.0", Settings(basic_auth_user="ls", basic_auth_pass="pw"), False),
    ("0.0.0.0", Settings(basic_auth_user="ls", basic_auth_pass=None), True),
    ("0.0.0.0", Settings(insecure=True), False),
])
def test_exposure_rule(host, settings, refused):
    assert (exposure_problem(host, settings) is not None) == refused


def test_serve_refuses_every_interface_without_basic_auth(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOESEG_", "BASIC_AUTH", "LABEL_STUDIO_"))}
    exe = BIN / "shoeseg"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "shoeseg_app"]
    res = subprocess.run([*cmd, "serve", "--host", "0.0.0.0", "--port", "1", "--model-dir", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode != 0
    message = " ".join(res.stderr.split())
    assert "without basic auth" in message and "BASIC_AUTH_USER" in message and "--insecure" in message
