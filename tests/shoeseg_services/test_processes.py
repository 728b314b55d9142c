import os
import signal
import subprocess
import sys
import time

from shoeseg_services.processes import stop_process_group


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_sigterm_stops_the_child_and_its_group():
    # the child starts a grandchild in its session: both must go
    proc = subprocess.Popen([sys.executable, "-c", "import subprocess, time; subprocess.Popen(['sleep', '60']); "
                             "time.sleep(60)"], start_new_session=True)
    time.sleep(0.5)
    stop_process_group(proc, timeout_s=10)
    assert proc.returncode == -signal.SIGTERM
    deadline = time.monotonic() + 5
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _group_alive(proc.pid)


def test_a_child_that_ignores_sigterm_is_killed_after_the_timeout():
    proc = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                             "print('ready', flush=True); time.sleep(60)"], start_new_session=True,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    stop_process_group(proc, timeout_s=0.5)
    assert proc.returncode == -signal.SIGKILL
    assert time.monotonic() - t0 < 8


def test_an_exited_process_is_left_alone():
    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    proc.wait(timeout=30)
    stop_process_group(proc)  # no error, nothing signalled
    assert proc.returncode == 0
