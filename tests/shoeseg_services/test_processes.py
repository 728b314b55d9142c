import os
import signal
import subprocess
import sys
import time

from shoeseg_services.processes import stop_process_group
from tests.helpers import skip_without_session_groups


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


def _in_own_session(code: str) -> str:
    """Runs ``code`` in a fresh session (its own scheduling group), so the test's own session is not touched."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         start_new_session=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_a_session_lowers_its_nice_and_sets_it_back():
    skip_without_session_groups()
    printed = _in_own_session(
        "from shoeseg_services.processes import session_nice, set_session_nice\n"
        "before = session_nice()\n"
        "up = set_session_nice(7)\n"
        "during = session_nice()\n"
        "down = set_session_nice(before)\n"
        "print(before, up, during, down, session_nice())")
    assert printed == "0 True 7 True 0"


def test_without_session_groups_nothing_is_set(monkeypatch, tmp_path):
    from shoeseg_services import processes

    monkeypatch.setattr(processes, "AUTOGROUP", str(tmp_path / "missing" / "autogroup"))
    assert processes.session_nice() is None
    assert processes.set_session_nice(10) is False
