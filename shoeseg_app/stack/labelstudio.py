"""Starts and stops a real Label Studio server from its own virtual environment.

Used by `shoeseg up` and by the end-to-end test fixture. Label Studio pins old redis/rq and Django,
so it never shares the project's environment: ``SHOESEG_LS_VENV`` (or ``.ls-venv``) holds it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from shoeseg_app.stack.service import LocalServer

log = logging.getLogger(__name__)

DEFAULT_LS_VENV = Path(".ls-venv")


def find_label_studio(venv: str | os.PathLike | None = None) -> Path:
    """Returns the path of the ``label-studio`` executable, raising ``FileNotFoundError`` with a hint.

    Example:
        >>> find_label_studio(".ls-venv")  # doctest: +SKIP
        PosixPath('.ls-venv/bin/label-studio')
    """
    candidates = []
    if venv is not None:
        candidates.append(Path(venv) / "bin" / "label-studio")
    env = os.environ.get("SHOESEG_LS_VENV")
    if env:
        candidates.append(Path(env) / "bin" / "label-studio")
    candidates.append(DEFAULT_LS_VENV / "bin" / "label-studio")
    for c in candidates:
        if c.exists():
            return c.resolve()
    found = shutil.which("label-studio")
    if found:
        return Path(found)
    raise FileNotFoundError(
        "label-studio is not installed: run `make ls-env` (it creates .ls-venv) or set SHOESEG_LS_VENV; "
        f"looked at {', '.join(map(str, candidates))}"
    )


@dataclass
class LabelStudioServer(LocalServer):
    """A Label Studio process bound to 127.0.0.1 with a known admin and legacy API token.

    Args:
        data_dir: Label Studio's data directory (database, uploads); created when missing.
        port: TCP port; a free one when 0.
        username / password / token: the admin created on first start (``token`` is its legacy API token).
        files_root: directory served as local files (``/data/local-files/?d=...``), ``None`` for none.
        venv: Label Studio's virtual environment.

    Example:
        >>> with LabelStudioServer(data_dir="/tmp/ls") as ls:  # doctest: +SKIP
        ...     print(ls.url, ls.token)
    """

    username: str = "admin@shoeseg.local"
    password: str = "shoeseg-admin"
    token: str = "shoeseg-dev-token-0123456789"
    files_root: Path | None = None
    venv: Path | None = None
    startup_timeout_s: float = 180.0
    log_file: Path | None = None
    stop_timeout_s = 20.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        home = self.data_dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "LABEL_STUDIO"))}
        env.update(
            HOME=str(home),
            LABEL_STUDIO_BASE_DATA_DIR=str(self.data_dir),
            LABEL_STUDIO_USERNAME=self.username,
            LABEL_STUDIO_PASSWORD=self.password,
            LABEL_STUDIO_USER_TOKEN=self.token,
            LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
            ML_BLOCK_LOCAL_IP="false",
            SSRF_PROTECTION_ENABLED="false",
            LATEST_VERSION_CHECK="false",
            COLLECT_ANALYTICS="false",
            SENTRY_DSN="",
            FRONTEND_SENTRY_DSN="",
            PYTHONUNBUFFERED="1",
        )
        if self.files_root is not None:
            Path(self.files_root).mkdir(parents=True, exist_ok=True)
            env.update(
                LOCAL_FILES_SERVING_ENABLED="true",
                LOCAL_FILES_DOCUMENT_ROOT=str(Path(self.files_root).resolve()),
            )
        return env

    def start(self) -> LabelStudioServer:
        exe = find_label_studio(self.venv)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_file or self.data_dir / "label-studio.log"
        cmd = [
            str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1",
            "--port", str(self.port), "--data-dir", str(self.data_dir), "--host", self.url,
        ]
        log.info("starting Label Studio on %s (log %s)", self.url, log_path)
        with open(log_path, "ab") as out:
            self._proc = subprocess.Popen(
                cmd, env=self.environment(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"Label Studio exited with code {self._proc.returncode}; see {self.data_dir}/label-studio.log")
            try:
                r = httpx.get(f"{self.url}/health", timeout=2)
                if r.status_code == 200 and r.json().get("status") == "UP":
                    log.info("Label Studio is up at %s", self.url)
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"Label Studio did not answer /health within {self.startup_timeout_s:.0f} s")

    def stop(self) -> None:
        if self.running:
            log.info("stopping Label Studio (pid %d)", self._proc.pid)
        super().stop()

    def client(self):
        """A ``label_studio_sdk.LabelStudio`` client logged in with the admin's token."""
        from shoeseg_services.ls_api import connect

        return connect(self.url, self.token)
