"""`shoeseg up` (what `make up` runs) as a real subprocess: Redis, Label Studio, backend, worker, project, import.

It starts its own Label Studio (that is what is under test), with its data in a temporary folder, and
with ``REDIS_URL`` unset so that it starts a Redis of its own. A second run on the same folder must
find the same project, backend connection and tasks. Ctrl-C (SIGINT) must leave no process behind.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shoeseg_app.stack.labelstudio import find_label_studio
from shoeseg_app.stack.service import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
UP_TIMEOUT_S = 300  # a cold Label Studio start (migrations) on a busy 2-core machine


def tiny_via(tmp_path: Path, n: int = 3) -> tuple[Path, Path]:
    """A VIA 2 project of ``n`` small images with one polygon "shoe" each."""
    images = tmp_path / "images"
    images.mkdir()
    meta = {}
    rng = np.random.default_rng(1)
    for i in range(n):
        name = f"shoe{i}.jpg"
        arr = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(arr).save(images / name, quality=90)
        size = (images / name).stat().st_size
        meta[f"{name}{size}"] = {
            "filename": name, "size": size, "file_attributes": {},
            "regions": [{
                "shape_attributes": {"name": "polygon", "all_points_x": [5, 40, 40, 5 + i],
                                     "all_points_y": [5, 5, 30, 30]},
                "region_attributes": {"label": "shoe"},
            }],
        }
    via = tmp_path / "via_region_data.json"
    via.write_text(json.dumps(meta))
    return via, images


def _reader(proc: subprocess.Popen, lines: queue.Queue, transcript: list[str]) -> None:
    for line in proc.stdout:
        transcript.append(line)
        lines.put(line)


def start_up(args: list[str], env: dict) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoeseg_app", "up", *args], env=env, cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    lines: queue.Queue = queue.Queue()
    transcript: list[str] = []
    threading.Thread(target=_reader, args=(proc, lines, transcript), daemon=True).start()
    deadline = time.monotonic() + UP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        if "press Ctrl-C to stop everything" in line:  # the banner's last line: the whole banner is read
            return proc, transcript
    _interrupt(proc)
    pytest.fail("shoeseg up did not come up:\n" + "".join(transcript[-60:]))


def _interrupt(proc: subprocess.Popen, timeout_s: float = 120) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def _gone(pid: int) -> bool:
    """True when neither the process nor anything in its process group is left."""
    try:
        os.killpg(pid, 0)
        return False
    except ProcessLookupError:
        pass
    try:
        os.kill(pid, 0)
        return False
    except ProcessLookupError:
        return True


def test_up_runs_everything_reuses_the_project_and_stops_cleanly(tmp_path):
    try:
        find_label_studio()
    except FileNotFoundError as e:
        pytest.skip(f"{e} (`make test` installs it)")
    from label_studio_sdk import LabelStudio

    via, images = tiny_via(tmp_path)
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY")}
    env.update(SHOESEG_MODEL_DIR=str(tmp_path / "models"), SHOESEG_DEVICE="cpu", PYTHONUNBUFFERED="1")
    ls_port, backend_port, dashboard_port = free_port(), free_port(), free_port()
    args = ["--via", str(via), "--images", str(images), "--port", str(ls_port), "--backend-port", str(backend_port),
            "--dashboard-port", str(dashboard_port), "--state-dir", str(state), "--title", "up-e2e"]

    # first run: everything starts, the project is created and the dataset imported
    proc, out = start_up(args, env)
    text = "".join(out)
    assert "Redis: started redis://127.0.0.1:" in text
    assert "created ('up-e2e')" in text
    creds = json.loads((state / "credentials.json").read_text())
    assert oct((state / "credentials.json").stat().st_mode & 0o777) == "0o600"
    assert f"log in as {creds['username']} / {creds['password']}" in text
    children = json.loads((state / "processes.json").read_text())["children"]
    assert set(children) == {"redis", "label-studio", "backend", "worker", "dashboard"}
    assert all(not _gone(pid) for pid in children.values())
    # the labelled import asks for the first model on its own; rq-dashboard shows the queues
    # (the backend's /setup may have queued it a moment before: then the import's request is that job's follow-up)
    assert any(f"First model: {a} train-" in text for a in ("queued", "already_queued", "follow_up")), text
    assert f"rq-dashboard: http://127.0.0.1:{dashboard_port}" in text
    import httpx

    page = httpx.get(f"http://127.0.0.1:{dashboard_port}/", timeout=10, follow_redirects=True)
    assert page.status_code == 200 and "RQ" in page.text
    queues = httpx.get(f"http://127.0.0.1:{dashboard_port}/0/data/queues.json", timeout=10).json()
    assert {"shoeseg-train"} <= {q["name"] for q in queues["queues"]}

    client = LabelStudio(base_url=f"http://127.0.0.1:{ls_port}", api_key=creds["token"])
    projects = [p for p in client.projects.list(title="up-e2e") if p.title == "up-e2e"]
    assert len(projects) == 1
    pid = projects[0].id
    assert "PolygonLabels" in client.projects.get(id=pid).label_config
    backends = client.ml.list(project=pid)
    assert [b.url for b in backends] == [f"http://127.0.0.1:{backend_port}"]
    assert backends[0].state == "CO"  # Label Studio reached the backend: connected
    tasks = list(client.tasks.list(project=pid, fields="all"))
    assert len(tasks) == 3
    assert all(len(t.annotations) == 1 for t in tasks)

    assert _interrupt(proc) == 0
    assert "stopped" in "".join(out)
    for name, child in children.items():
        assert _gone(child), f"{name} (pid {child}) is still running after Ctrl-C"
    assert not (state / "processes.json").exists()

    # second run on the same state: same project, same backend, no duplicated tasks
    proc, out = start_up(args, env)
    try:
        text = "".join(out)
        assert f"Project: {pid} reused" in text
        assert "0 task(s) created" in text or "already there" in text
        client = LabelStudio(base_url=f"http://127.0.0.1:{ls_port}", api_key=creds["token"])
        assert len([p for p in client.projects.list(title="up-e2e") if p.title == "up-e2e"]) == 1
        assert len(client.ml.list(project=pid)) == 1
        assert len(list(client.tasks.list(project=pid))) == 3
        children = json.loads((state / "processes.json").read_text())["children"]
    finally:
        code = _interrupt(proc)
    assert code == 0
    for name, child in children.items():
        assert _gone(child), f"{name} (pid {child}) is still running after Ctrl-C"
