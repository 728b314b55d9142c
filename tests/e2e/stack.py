"""The end-to-end tests' processes: a tiny recipe, real `shoeseg serve` / `shoeseg worker` subprocesses and a
project's loop around them (imported by the e2e tests; not a test module)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from shoeseg_app.stack.service import free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FIXTURES = REPO / "tests" / "fixtures"
N_TASKS = 8
# least_confidence (one pass), not the default flip_consistency: test_loop recomputes the stored task scores from the
# registered model, which a one-pass score allows to 5e-4; the default runs in tests/worker
TINY = {
    "SHOESEG_TRAIN_ITERS": "2", "SHOESEG_MIN_SIZE": "64", "SHOESEG_MAX_SIZE": "96", "SHOESEG_ROI_BATCH": "32",
    "SHOESEG_INIT_WEIGHTS": "none", "SHOESEG_DEVICE": "cpu", "SHOESEG_PROMOTE_TOLERANCE": "1.0",
    "SHOESEG_MIN_NEW_ANNOTATIONS": "3", "SHOESEG_AL_STRATEGY": "least_confidence", "SHOESEG_PREDICT_BATCH": "4",
    "SHOESEG_RETRY_MAX": "2", "SHOESEG_RETRY_INTERVALS": "1,2", "SHOESEG_LEASE_TTL": "4", "SHOESEG_IDLE_TRAINING": "false",
    "OMP_NUM_THREADS": "2",
}


def wait_for(what: str, condition, *, timeout_s: float, every_s: float = 0.5, logs: tuple = ()):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    tails = "\n".join(f"--- {p}:\n{Path(p).read_text(errors='replace')[-3000:]}" for p in logs if Path(p).exists())
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{tails}")


class Process:
    """A subprocess in its own session (so that SIGKILL takes its children too), logging to a file."""

    def __init__(self, name: str, args: list[str], *, env: dict, log_dir: Path):
        self.name = name
        self.log = log_dir / f"{name}.log"
        self._out = open(self.log, "ab")
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def kill(self, sig=signal.SIGKILL) -> None:
        """Sends ``sig`` to the process and every descendant (rq's work horse runs in a session of its own)."""
        for pid in [self.proc.pid, *descendants(self.proc.pid)]:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # rq: warm shutdown; uvicorn: graceful
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._out.close()


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class Loop:
    def __init__(self, *, ls, client, redis_server, root: Path, db: int = 13):
        self.ls, self.client, self.root = ls, client, root
        self.db = db
        self.redis_url = f"redis://127.0.0.1:{redis_server.port}/{self.db}"
        self.conn = redis.Redis.from_url(self.redis_url)
        self.conn.flushdb()
        self.model_dir = root / "models"
        self.processes: list[Process] = []
        self.backend_port = free_port()
        self.backend_url = f"http://127.0.0.1:{self.backend_port}"
        self.env = {
            **os.environ, **TINY,
            "REDIS_URL": self.redis_url, "SHOESEG_MODEL_DIR": str(self.model_dir),
            "SHOESEG_CACHE_DIR": str(root / "cache"), "LABEL_STUDIO_URL": ls.url,
            "LABEL_STUDIO_API_KEY": ls.token, "PYTHONUNBUFFERED": "1",
        }

    def start(self, name: str, args: list[str], **env) -> Process:
        p = Process(name, args, env={**self.env, **env}, log_dir=self.root)
        self.processes.append(p)
        return p

    def start_worker(self, name: str = "worker", **env) -> Process:
        return self.start(name, [str(BIN / "shoeseg"), "worker", "--name", f"{name}-{time.time_ns()}"], **env)

    def start_backend(self, *, port: int | None = None, name: str = "backend", **env) -> Process:
        port = port or self.backend_port
        p = self.start(name, [str(BIN / "shoeseg"), "serve", "--port", str(port)], **env)
        wait_for(f"{name} /health", lambda: health(f"http://127.0.0.1:{port}"), timeout_s=90, logs=(p.log,))
        return p

    def logs(self) -> tuple:
        return tuple(p.log for p in self.processes)

    def close(self) -> None:
        for p in reversed(self.processes):
            p.stop()


def health(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def need_chromium():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian's chromium and chromium-driver are needed (apt-get install chromium chromium-driver)")
    return pytest.importorskip("selenium.webdriver")
