"""A writer SIGKILLed at the worst moments leaves the registry serving the version promoted before.

Each test runs a real child process that registers and/or promotes a version and kills itself with
SIGKILL at one point of the write (the kill is set up by the child script, not by the registry); the
parent then opens the registry as the backend or the next worker job would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from shoeseg.checkpoint import load_checkpoint, save_checkpoint
from shoeseg.model import build_model
from shoeseg_services.registry import ModelRegistry

REPO = Path(__file__).resolve().parents[3]

#: argv: registry root, checkpoint, version, mode. The child exits with 3 if it was not killed.
CHILD = r"""
import os, signal, sys
from pathlib import Path

from shoeseg_services.registry import ModelRegistry

root, checkpoint, version, mode = sys.argv[1:5]


def kill_on(name, when):
    real = getattr(os, name)

    def wrapper(*args, **kwargs):
        if when(*args):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    setattr(os, name, wrapper)


if mode == "after-checkpoint-copy":  # the first fsync is the checkpoint's: its bytes are written, no meta.json
    kill_on("fsync", lambda fd: True)
elif mode == "before-version-rename":  # the version is whole in its temporary directory
    kill_on("rename", lambda src, dst: Path(src).name.startswith(".tmp-"))
elif mode == "before-pointer-write":  # history.json already records the promotion
    kill_on("replace", lambda src, dst: Path(dst).name == "current")

reg = ModelRegistry(root)
if mode != "before-pointer-write":
    reg.register(checkpoint, metrics={}, parent=None, meta={})
if mode == "between-register-and-promote":
    os.kill(os.getpid(), signal.SIGKILL)
reg.promote(version)
sys.exit(3)
"""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Three tiny-input checkpoints: (version, path) of a, b and c."""
    d = tmp_path_factory.mktemp("ckpts")
    model = build_model(num_classes=1, weights=None, min_size=64, max_size=96)
    out = []
    for i, name in enumerate("abc", start=1):
        p = d / f"{name}.pt"
        out.append((save_checkpoint(p, model=model, class_names=["shoe"], version=f"2024010{i}-000000-{name * 6}"), p))
    return out


def _kill_child_during(mode: str, root: Path, version: str, checkpoint: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root), str(checkpoint), version, mode],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"the child was not killed ({proc.returncode}): {proc.stderr}"


def _stale(root: Path) -> list[str]:
    """Temporary data in the registry, looked at without opening it (opening cleans it)."""
    return sorted(p.name for d in (root, root / "versions") for p in d.iterdir() if p.name.startswith(".tmp-"))


def _assert_serves(reg: ModelRegistry, version: str) -> None:
    cur = reg.current()
    assert cur.version == version and cur.status == "promoted"
    assert load_checkpoint(cur.checkpoint).version == version


@pytest.fixture
def registry_with_a(tmp_path, checkpoints):
    """A registry whose current version is a."""
    reg = ModelRegistry(tmp_path / "models")
    reg.promote(reg.register(checkpoints[0][1], metrics={}, parent=None, meta={}).version)
    return reg


@pytest.mark.parametrize("mode", ["after-checkpoint-copy", "before-version-rename"])
def test_killed_during_register_leaves_the_previous_version_and_a_cleaned_registry(mode, registry_with_a,
                                                                                   checkpoints):
    (a, _), (b, b_path) = checkpoints[:2]
    root = registry_with_a.root
    _kill_child_during(mode, root, b, b_path)
    assert _stale(root) and _stale(root)[0].startswith(f".tmp-{b}-")  # the half-made version is left over

    reg = ModelRegistry(root)  # e.g. the next worker job
    assert _stale(root) == []
    _assert_serves(reg, a)
    assert [v.version for v in reg.versions()] == [a]
    assert reg.register(b_path, metrics={}, parent=None, meta={}).version == b  # the retry goes through
    assert [v.version for v in reg.versions()] == [a, b]


def test_killed_between_register_and_promote_keeps_the_new_version_as_a_candidate(registry_with_a, checkpoints):
    (a, _), (b, b_path) = checkpoints[:2]
    root = registry_with_a.root
    _kill_child_during("between-register-and-promote", root, b, b_path)

    reg = ModelRegistry(root)
    _assert_serves(reg, a)
    assert {v.version: v.status for v in reg.versions()} == {a: "promoted", b: "candidate"}
    assert load_checkpoint(reg.get(b).checkpoint).version == b  # whole: it can be promoted later
    assert _stale(root) == []


def test_killed_before_the_pointer_write_keeps_the_previous_version_and_a_usable_history(registry_with_a,
                                                                                        checkpoints):
    (a, _), (b, b_path), (c, c_path) = checkpoints
    reg = registry_with_a
    reg.register(b_path, metrics={}, parent=None, meta={})
    reg.register(c_path, metrics={}, parent=None, meta={})
    _kill_child_during("before-pointer-write", reg.root, b, b_path)
    assert json.loads(reg.history_path.read_text())["stack"] == [a, b]  # written first: stale now
    assert _stale(reg.root)[0].startswith(".tmp-current-")

    reg = ModelRegistry(reg.root)
    assert _stale(reg.root) == []
    _assert_serves(reg, a)
    assert {v.version: v.status for v in reg.versions()} == {a: "promoted", b: "candidate", c: "candidate"}
    reg.promote(c)
    assert reg.rollback().version == a  # not b, whose promotion never took effect
