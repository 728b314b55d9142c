"""The ML backend as a real process (`shoeseg serve`) and a Label Studio project it pre-annotated."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from shoeseg_app.stack.service import free_port
from shoeseg_services.processes import stop_process_group
from tests.helpers import jpeg_bytes, make_checkpoint
from via_tools.labelstudio import labeling_config

BIN = Path(sys.executable).parent


@dataclass
class BackendProcess:
    url: str
    registry_root: Path
    log_path: Path
    proc: subprocess.Popen

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""


def fill_registry(reg, tmp_dir: Path):
    """Registers test-v1 (a model biased to find three shoes per image) and test-v2 (one), promotes test-v1."""
    for version, logit, n, seed in (("test-v1", 4.0, 3, 1), ("test-v2", 1.0, 1, 2)):
        ckpt = make_checkpoint(tmp_dir / f"{version}.pt", version=version, fg_logit=logit, detections=n, seed=seed)
        reg.register(ckpt, metrics={"segm_AP": 0.0}, parent=None, meta={})
    reg.promote("test-v1")
    return reg


def start_backend(tmp_dir: Path, *, registry_root: Path, env: dict | None = None) -> BackendProcess:
    """Starts `shoeseg serve` on a free port and waits until ``/health`` answers."""
    port = free_port()
    log_path = tmp_dir / f"backend-{port}.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("SHOESEG_", "LABEL_STUDIO_", "REDIS_URL"))}
    environ.update(SHOESEG_DEVICE="cpu", SHOESEG_RELOAD_INTERVAL_S="0.5", PYTHONUNBUFFERED="1", **(env or {}))
    exe = BIN / "shoeseg"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "shoeseg_app"]
    cmd += ["serve", "--host", "127.0.0.1", "--port", str(port), "--model-dir", str(registry_root)]
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, env=environ, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    backend = BackendProcess(url=f"http://127.0.0.1:{port}", registry_root=registry_root, log_path=log_path, proc=proc)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"shoeseg serve exited with {proc.returncode}:\n{backend.log_tail()}")
        try:
            if httpx.get(f"{backend.url}/health", timeout=2).status_code == 200:
                return backend
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_backend(backend)
    raise TimeoutError(f"shoeseg serve did not answer /health in 180 s:\n{backend.log_tail()}")


def stop_backend(backend: BackendProcess) -> None:
    stop_process_group(backend.proc, timeout_s=20)


@dataclass
class PreannotatedProject:
    project_id: int
    ml_backend_id: int
    task_ids: list[int]
    sizes_wh: dict[int, tuple[int, int]]


def create_preannotated_project(label_studio, backend: BackendProcess, *, title: str) -> PreannotatedProject:
    """A PolygonLabels project with an uploaded image, a local-files image and an EXIF-rotated one, connected
    to the backend, with "retrieve predictions" run on every task."""
    client = label_studio.client()
    headers = {"Authorization": f"Token {label_studio.token}"}
    project = client.projects.create(title=title, label_config=labeling_config(["shoe"]))
    # an upload: /data/upload/<project>/<hash>-shoe-upload.jpg
    r = httpx.post(f"{label_studio.url}/api/projects/{project.id}/import", headers=headers,
                   files={"file": ("shoe-upload.jpg", jpeg_bytes(128, 96, seed=7), "image/jpeg")}, timeout=60)
    r.raise_for_status()
    # local files: /data/local-files/?d=<rel>, readable once a local storage grants the folder
    folder = Path(label_studio.files_root) / f"backend-{project.id}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "local.jpg").write_bytes(jpeg_bytes(80, 120, seed=8))
    (folder / "rotated.jpg").write_bytes(jpeg_bytes(96, 64, orientation=6, seed=9))
    client.import_storage.local.create(project=project.id, path=str(folder), use_blob_urls=True,
                                       regex_filter=r".*\.jpg", title="images")
    rel = folder.relative_to(label_studio.files_root).as_posix()
    client.projects.import_tasks(id=project.id, request=[
        {"data": {"image": f"/data/local-files/?d={rel}/local.jpg"}},
        {"data": {"image": f"/data/local-files/?d={rel}/rotated.jpg"}},
    ])
    tasks = sorted(client.tasks.list(project=project.id), key=lambda t: t.id)
    assert len(tasks) == 3, [t.data for t in tasks]
    sizes = {tasks[0].id: (128, 96), tasks[1].id: (80, 120), tasks[2].id: (64, 96)}  # as displayed
    ml = client.ml.create(url=backend.url, project=project.id, title="shoeseg", is_interactive=True)
    client.actions.create(id="retrieve_tasks_predictions", project=project.id,
                          selected_items={"all": True, "excluded": []})
    return PreannotatedProject(project_id=project.id, ml_backend_id=ml.id, task_ids=[t.id for t in tasks],
                               sizes_wh=sizes)
