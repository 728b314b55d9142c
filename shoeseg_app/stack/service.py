"""What a local server process of the stack shares: a data folder, a port, start/stop as a context."""

from __future__ import annotations

import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from shoeseg_services.processes import stop_process_group


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalServer:
    """A server process on 127.0.0.1 that lives as long as this object (``with`` starts and stops it).

    Args:
        data_dir: the server's data folder; created when it starts.
        port: TCP port; a free one when 0.
    """

    data_dir: Path
    port: int = 0
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    #: Seconds a stopping server is given after SIGTERM before it is killed.
    stop_timeout_s = 10.0

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        if not self.port:
            self.port = free_port()

    def start(self) -> LocalServer:  # pragma: no cover - each server says how it starts
        raise NotImplementedError

    def stop(self) -> None:
        """Stops the process and its children (SIGTERM, then SIGKILL after :attr:`stop_timeout_s`)."""
        if self.running:
            stop_process_group(self._proc, timeout_s=self.stop_timeout_s)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
