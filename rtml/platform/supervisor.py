"""A small process supervisor for the local stack: restarts what dies, with backoff, and leaves nothing behind.

``rtml stack up`` starts one supervisor per state folder (``python -m rtml.platform.supervisor HOME``, detached
in its own session) and hands it *programs*: one JSON file per process under
``HOME/supervisor/programs/`` (command, environment, log file; mode 0600, since the environment
carries secrets). The supervisor keeps every program running:

- each program runs in its own process group, so a restart or a stop signals the whole group
  (MLflow's uvicorn workers, the scheduler's LocalExecutor workers);
- it is Linux's *child subreaper* for everything below it, so a process orphaned by a dead component
  (one that left its group) is re-parented to the supervisor and killed, never left holding a port;
- a program that exits is restarted after an exponential backoff (1 s, 2 s, 4 s ... capped at 30 s;
  back to 1 s once it ran for a minute), and its exit (code or signal), time and restart count are
  recorded in ``HOME/supervisor/state.json``, which ``rtml stack status`` shows;
- deleting a program's file stops it (SIGTERM to the group, SIGKILL after the grace period);
  SIGTERM to the supervisor stops every program the same way and then exits.

Why our own loop rather than supervisord: supervisord restarts a process that had started
successfully at once and forever (its backoff applies only to failed starts), keeps no restart count,
and reports an exit's signal only in its log; it would also be a second daemon with its own config
format to render. This loop is the standard library plus psutil, ~250 lines, and tested by killing
each component with SIGKILL (tests/integration/test_stack.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POLL = 0.2  # seconds between checks
BACKOFF_FIRST, BACKOFF_MAX, STABLE_AFTER = 1.0, 30.0, 60.0
GRACE = 10.0  # SIGTERM -> SIGKILL


def supervisor_dir(home: Path) -> Path:
    return Path(home) / "supervisor"


def state_path(home: Path) -> Path:
    return supervisor_dir(home) / "state.json"


def programs_dir(home: Path) -> Path:
    return supervisor_dir(home) / "programs"


def exit_reason(status: int) -> str:
    """A wait status as people read it: ``exited with code 1``, ``killed by SIGKILL``."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"killed by {name}"
    if os.WIFEXITED(status):
        return f"exited with code {os.WEXITSTATUS(status)}"
    return f"wait status {status}"


def _atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_program(home: Path, name: str, cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> None:
    """Ask the supervisor of ``home`` to run ``cmd`` as ``name`` (it starts it within a poll)."""
    d = programs_dir(home)
    d.mkdir(parents=True, exist_ok=True)
    spec = {"name": name, "cmd": cmd, "env": env, "log": str(log), "cwd": str(cwd)}
    _atomic_write(d / f"{name}.json", json.dumps(spec), mode=0o600)


def remove_program(home: Path, name: str) -> bool:
    try:
        (programs_dir(home) / f"{name}.json").unlink()
        return True
    except FileNotFoundError:
        return False


def read_state(home: Path) -> dict[str, Any]:
    """The supervisor's last written state (``{}`` when none runs); ``pid`` is the supervisor's."""
    try:
        state = json.loads(state_path(home).read_text())
    except (OSError, ValueError):
        return {}
    pid = state.get("pid")
    if not pid or not _alive(int(pid)):
        return {}
    return state


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def supervisor_pid(home: Path) -> int | None:
    pid = read_state(home).get("pid")
    return int(pid) if pid else None


def start_supervisor(home: Path, env: dict[str, str] | None = None, timeout: float = 15) -> int:
    """Start the supervisor of ``home`` unless it runs; returns its pid."""
    pid = supervisor_pid(home)
    if pid:
        return pid
    d = supervisor_dir(home)
    d.mkdir(parents=True, exist_ok=True)
    (Path(home) / "logs").mkdir(parents=True, exist_ok=True)
    with open(Path(home) / "logs" / "supervisor.log", "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "rtml.platform.supervisor", str(home)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=env, cwd=str(home), start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = supervisor_pid(home)
        if pid:
            return pid
        if child.poll() is not None:
            # Lost a race with another `up` that started one first: use that one.
            pid = supervisor_pid(home)
            if pid:
                return pid
            raise RuntimeError(f"the supervisor exited with code {child.returncode}; see {home}/logs/supervisor.log")
        time.sleep(0.1)
    raise RuntimeError(f"the supervisor did not start within {timeout:.0f}s; see {home}/logs/supervisor.log")


def stop_supervisor(home: Path, timeout: float = GRACE + 20) -> bool:
    """SIGTERM the supervisor (it stops every program) and wait until it is gone."""
    pid = supervisor_pid(home)
    if not pid:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return True


# --- the supervisor process ----------------------------------------------------------------------
@dataclass
class Program:
    name: str
    spec: dict[str, Any]
    mtime: float = 0.0
    pid: int | None = None
    state: str = "starting"  # running | backoff | stopping
    started_at: float | None = None
    restarts: int = 0
    failures: int = 0  # consecutive quick exits, for the backoff
    next_start: float = 0.0
    last_exit: dict[str, Any] | None = None
    stop_deadline: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class Supervisor:
    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.programs: dict[str, Program] = {}
        self.stopping = False
        self.dirty = True

    # -- program files
    def _desired(self) -> dict[str, tuple[float, dict[str, Any]]]:
        out = {}
        for path in programs_dir(self.home).glob("*.json"):
            try:
                out[path.stem] = (path.stat().st_mtime, json.loads(path.read_text()))
            except (OSError, ValueError):
                continue  # being written: next poll
        return out

    def _spawn(self, prog: Program) -> None:
        spec = prog.spec
        log_path = Path(spec["log"])
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(spec['cmd'])}\n".encode())
            log.flush()
            try:
                child = subprocess.Popen(
                    spec["cmd"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=spec["env"], cwd=spec["cwd"], start_new_session=True,
                )
            except OSError as err:
                self._exited(prog, None, f"could not start: {err}")
                return
        prog.pid, prog.state, prog.started_at = child.pid, "running", time.time()
        # Children are reaped with os.waitpid in _reap; a returncode keeps subprocess's own
        # cleanup of dropped Popen objects from reaping (and hiding) our child's exit first.
        child.returncode = 0
        self.dirty = True

    def _exited(self, prog: Program, status: int | None, reason: str | None = None) -> None:
        now = time.time()
        ran = now - (prog.started_at or now)
        reason = reason or exit_reason(status or 0)
        if prog.pid:
            self._kill_group(prog.pid, signal.SIGKILL)  # what the dead leader left in its group
        prog.last_exit = {"at": now, "reason": reason, "ran_seconds": round(ran, 1), "pid": prog.pid}
        prog.history = [*prog.history[-9:], prog.last_exit]
        prog.pid = None
        if prog.state == "stopping":
            prog.state = "stopped"
        else:
            prog.failures = 0 if ran >= STABLE_AFTER else prog.failures + 1
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, prog.failures - 1))
            prog.restarts += 1
            prog.state, prog.next_start = "backoff", time.monotonic() + delay
            print(f"{time.strftime('%H:%M:%S')} {prog.name}: {reason} after {ran:.1f}s; restart in {delay:.0f}s",
                  flush=True)
        self.dirty = True

    @staticmethod
    def _kill_group(pgid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    def _reap(self) -> None:
        by_pid = {p.pid: p for p in self.programs.values() if p.pid}
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            prog = by_pid.get(pid)
            if prog is not None:
                self._exited(prog, status)
            # else: an orphan re-parented to us (subreaper) has been reaped: nothing to record

    def _kill_orphans(self) -> None:
        """Kill direct children that are no program's leader: orphans of a component that died."""
        import psutil

        leaders = {p.pid for p in self.programs.values() if p.pid}
        try:
            children = psutil.Process().children()
        except psutil.Error:
            return
        for child in children:
            if child.pid not in leaders:
                with contextlib.suppress(psutil.Error):
                    child.kill()

    def _begin_stop(self, prog: Program) -> None:
        if prog.pid and prog.state != "stopping":
            prog.state, prog.stop_deadline = "stopping", time.monotonic() + GRACE
            self._kill_group(prog.pid, signal.SIGTERM)
            self.dirty = True
        elif not prog.pid:
            prog.state = "stopped"

    def _tick(self) -> None:
        self._reap()
        desired = {} if self.stopping else self._desired()
        now = time.monotonic()
        for name, (mtime, spec) in desired.items():
            prog = self.programs.get(name)
            if prog is None:
                self.programs[name] = Program(name, spec, mtime, next_start=now)
            elif mtime != prog.mtime:  # changed command or environment: restart with the new one
                prog.spec, prog.mtime = spec, mtime
                self._begin_stop(prog)
        for name, prog in list(self.programs.items()):
            if name not in desired:
                self._begin_stop(prog)
            if prog.state == "stopping" and prog.pid and prog.stop_deadline and now > prog.stop_deadline:
                self._kill_group(prog.pid, signal.SIGKILL)
            if prog.state == "stopped":
                if name in desired:  # stopped for a change of its program file: start again at once
                    prog.state, prog.next_start = "backoff", now
                else:
                    del self.programs[name]
                    self.dirty = True
                    continue
            if prog.state in ("starting", "backoff") and now >= prog.next_start and name in desired:
                self._spawn(prog)
        self._kill_orphans()
        if self.dirty:
            self._write_state()

    def _write_state(self) -> None:
        programs = {
            p.name: {
                "pid": p.pid,
                "state": p.state,
                "restarts": p.restarts,
                "started_at": p.started_at,
                "last_exit": p.last_exit,
                "exits": p.history,
                "cmd": p.spec.get("cmd", []),
            }
            for p in self.programs.values()
        }
        _atomic_write(state_path(self.home), json.dumps({"pid": os.getpid(), "programs": programs}, indent=1))
        self.dirty = False

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        while True:
            self._tick()
            if self.stopping and not any(p.pid for p in self.programs.values()):
                break
            time.sleep(POLL)
        self._kill_orphans()
        self._reap()
        state_path(self.home).unlink(missing_ok=True)

    def _on_term(self, signum: int, frame: Any) -> None:
        self.stopping = True
        for prog in self.programs.values():
            self._begin_stop(prog)


def _set_child_subreaper() -> None:
    """Orphans of our descendants come to us, not to init, so none of them outlives the stack."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m rtml.platform.supervisor HOME", file=sys.stderr)
        return 2
    home = Path(args[0])
    d = supervisor_dir(home)
    d.mkdir(parents=True, exist_ok=True)
    # One supervisor per state folder: the lock is held for the process's lifetime.
    lock = open(d / "lock", "w")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("another supervisor runs for this folder", file=sys.stderr)
        return 1
    _set_child_subreaper()
    print(f"{time.strftime('%H:%M:%S')} supervisor {os.getpid()} for {home}", flush=True)
    Supervisor(home).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
