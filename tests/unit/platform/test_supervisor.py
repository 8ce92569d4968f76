"""The stack's supervisor on small real processes: restart with backoff, exit reasons, nothing left behind."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from rtml.platform import supervisor

# A leader with one child in its process group and one that escapes into a session of its own,
# like uvicorn workers and task runners; both print their pid to files so the test can find them.
FAMILY = """
import os, subprocess, sys, time
out = sys.argv[1]
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
escaped = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
open(out, "w").write(f"{os.getpid()} {child.pid} {escaped.pid}")
time.sleep(600)
"""


def _until(cond, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def home(tmp_path: Path):
    supervisor.start_supervisor(tmp_path)
    yield tmp_path
    supervisor.stop_supervisor(tmp_path)


def _program(home: Path, name: str, code: str, *args: str) -> None:
    supervisor.write_program(
        home, name, [sys.executable, "-c", code, *args], dict(os.environ), home / f"{name}.log", home
    )


def _pids(path: Path) -> list[int]:
    text = _until(lambda: path.exists() and path.read_text().strip(), what=f"{path}")
    return [int(x) for x in text.split()]


def test_sigkilled_program_is_restarted_and_its_family_is_gone(home: Path):
    out = home / "family.txt"
    _program(home, "family", FAMILY, str(out))
    leader, child, escaped = _pids(out)
    out.unlink()

    os.kill(leader, signal.SIGKILL)
    new_leader = _pids(out)[0]
    assert new_leader != leader
    state = supervisor.read_state(home)["programs"]["family"]
    assert state["pid"] == new_leader and state["state"] == "running"
    assert state["restarts"] == 1
    assert state["last_exit"]["reason"] == "killed by SIGKILL" and state["last_exit"]["pid"] == leader
    # The dead leader's group member and its escaped child (re-parented to the supervisor) are gone.
    _until(lambda: not _alive(child) and not _alive(escaped), what="the old family to be killed")


def test_a_program_that_keeps_failing_backs_off_exponentially(home: Path):
    _program(home, "crashy", "import sys; sys.exit(3)")
    state = _until(
        lambda: (p := supervisor.read_state(home).get("programs", {}).get("crashy")) and len(p["exits"]) >= 4 and p,
        timeout=30,
        what="four exits",
    )
    assert state["last_exit"]["reason"] == "exited with code 3"
    times = [e["at"] for e in state["exits"]]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # 1 s, 2 s, 4 s between starts (plus the start-up time of Python itself).
    assert gaps[0] >= 1.0 and gaps[1] >= 2.0 and gaps[2] >= 4.0, gaps
    assert gaps[1] > gaps[0] and gaps[2] > gaps[1]


def test_removing_a_program_stops_its_group_and_stopping_the_supervisor_stops_all(home: Path):
    out_a, out_b = home / "a.txt", home / "b.txt"
    _program(home, "a", FAMILY, str(out_a))
    _program(home, "b", FAMILY, str(out_b))
    family_a, family_b = _pids(out_a), _pids(out_b)

    assert supervisor.remove_program(home, "a")
    _until(lambda: not any(_alive(p) for p in family_a), what="program a's family to stop")
    _until(lambda: "a" not in supervisor.read_state(home)["programs"], what="a to leave the state")
    assert all(_alive(p) for p in family_b)

    sup = supervisor.supervisor_pid(home)
    assert supervisor.stop_supervisor(home)
    assert not _alive(sup)
    assert not any(_alive(p) for p in family_b)
    assert supervisor.read_state(home) == {}


def test_a_program_ignoring_sigterm_is_killed_after_the_grace_period(home: Path, monkeypatch):
    out = home / "stubborn.txt"
    code = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
        "time.sleep(600)\n"
    )
    _program(home, "stubborn", code, str(out))
    (pid,) = _pids(out)
    supervisor.remove_program(home, "stubborn")
    time.sleep(1.0)
    assert _alive(pid)  # SIGTERM ignored: still there within the grace period
    _until(lambda: not _alive(pid), timeout=supervisor.GRACE + 10, what="SIGKILL after the grace period")


def test_exit_reason_reads_like_a_person_would_say_it():
    assert supervisor.exit_reason(9) == "killed by SIGKILL"
    assert supervisor.exit_reason(3 << 8) == "exited with code 3"
    assert supervisor.exit_reason(0) == "exited with code 0"


def test_one_supervisor_per_folder(home: Path):
    first = supervisor.supervisor_pid(home)
    assert supervisor.start_supervisor(home) == first
    assert supervisor.main([str(home)]) == 1  # the lock is held by the running one
