"""Stopping a child process together with everything it started in its own session."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_process_group(proc: subprocess.Popen, *, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> None:
    """Sends ``sig`` to ``proc``'s process group (a child started with ``start_new_session=True``), waits up
    to ``timeout_s`` and then kills the group; a process that has already exited is left alone.

    Example:
        >>> p = subprocess.Popen(["sleep", "60"], start_new_session=True)
        >>> stop_process_group(p, timeout_s=5)
        >>> p.returncode
        -15
    """
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
    except ProcessLookupError:  # gone between poll() and killpg()
        proc.wait(timeout=10)
