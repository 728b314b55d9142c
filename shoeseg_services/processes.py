"""Stopping a child process together with everything it started in its own session, and a session's share of
the CPU."""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import time

log = logging.getLogger(__name__)

AUTOGROUP = "/proc/self/autogroup"


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


def session_nice() -> int | None:
    """The nice value of this process's session as Linux's scheduler weighs it against other sessions, or None
    where the kernel has no session groups (autogroup: ``/proc/self/autogroup`` reads ``/autogroup-N nice K``).

    With autogroup on (``/proc/sys/kernel/sched_autogroup_enabled``, the default of many distributions) and the
    processes outside any CPU cgroup, the CPU is shared between sessions first and by each process's own nice only
    within its session: a training at nice 10 in the worker's session still takes half of a 2-core machine from a
    backend started in another session (``shoeseg up`` starts each service in its own).

    Example:
        >>> session_nice()  # doctest: +SKIP
        0
    """
    try:
        with open(AUTOGROUP, encoding="ascii") as f:
            return int(f.read().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def set_session_nice(nice: int) -> bool:
    """Sets the nice value of this process's session (every process in it; see :func:`session_nice`). Raising it
    needs no privilege; the kernel refuses unprivileged changes closer than 0.1 s to the last one anywhere
    (retried once). Returns False where there are no session groups or the kernel refuses (logged).

    Example:
        >>> set_session_nice(10)  # doctest: +SKIP
        True
    """
    for attempt in range(2):
        try:
            with open(AUTOGROUP, "w", encoding="ascii") as f:
                f.write(str(int(nice)))
            return True
        except FileNotFoundError:
            return False
        except OSError as e:
            if e.errno == errno.EAGAIN and attempt == 0:
                time.sleep(0.11)
                continue
            log.warning("could not set this session's nice to %s: %s", nice, e)
            return False
    return False
