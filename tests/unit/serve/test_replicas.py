"""rtml.serve.replicas: the registry of serving replicas behind one address (entries of live processes
only: a dead pid, a recycled pid or a broken file is dropped) and each replica's private socket."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rtml.serve.replicas import (
    Replica,
    bind_admin_socket,
    live_replicas,
    register,
    replica_dir,
    unregister,
    url_port,
)


@pytest.fixture
def sleeper():
    """``sleeper()``: a live child process (its pid), stopped after the test."""
    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        procs.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]))
        return procs[-1]

    yield start
    for p in procs:
        p.kill()
        p.wait(10)


def test_a_registered_replica_is_listed_and_filtered_by_its_shared_port(tmp_path, sleeper):
    d = replica_dir(tmp_path)
    a, b = sleeper(), sleeper()
    register(d, 8000, "http://127.0.0.1:41001", pid=a.pid)
    register(d, 9000, "http://127.0.0.1:41002", pid=b.pid)
    assert [r.pid for r in live_replicas(d)] == sorted([a.pid, b.pid])
    (only,) = live_replicas(d, port=8000)
    assert (only.pid, only.port, only.admin_url) == (a.pid, 8000, "http://127.0.0.1:41001")
    assert not list(d.glob(".*.tmp"))  # written atomically: no temporary file left behind


def test_the_entry_of_an_exited_replica_is_dropped(tmp_path, sleeper):
    d = replica_dir(tmp_path)
    gone, live = sleeper(), sleeper()
    register(d, 8000, "http://127.0.0.1:41001", pid=gone.pid)
    register(d, 8000, "http://127.0.0.1:41002", pid=live.pid)
    gone.kill()
    gone.wait(10)
    assert [r.pid for r in live_replicas(d, 8000)] == [live.pid]
    assert not (d / f"{gone.pid}.json").exists()


def test_a_recycled_pid_or_a_broken_entry_is_not_taken_for_a_replica(tmp_path):
    d = replica_dir(tmp_path)
    path = register(d, 8000, "http://127.0.0.1:41001")  # this process
    entry = json.loads(path.read_text())
    path.write_text(json.dumps({**entry, "started": entry["started"] - 3600}))  # another process, same pid
    (d / "123.json").write_text("{not json")
    assert live_replicas(d) == [] and list(d.iterdir()) == []


def test_register_refuses_a_pid_with_no_process(tmp_path, sleeper):
    p = sleeper()
    p.kill()
    p.wait(10)
    with pytest.raises(ValueError, match="pid"):
        register(replica_dir(tmp_path), 8000, "http://127.0.0.1:1", pid=p.pid)


def test_unregister_removes_the_entry_and_tolerates_a_missing_one(tmp_path):
    d = replica_dir(tmp_path)
    path = register(d, 8000, "http://127.0.0.1:41001")
    assert live_replicas(d) == [Replica(os.getpid(), json.loads(path.read_text())["started"], 8000,
                                        "http://127.0.0.1:41001")]
    unregister(path)
    unregister(path)
    assert live_replicas(d) == []


def test_the_admin_socket_listens_on_a_free_loopback_port():
    import socket

    sock = bind_admin_socket()
    try:
        host, port = sock.getsockname()
        assert host == "127.0.0.1" and port > 0
        socket.create_connection((host, port), timeout=5).close()  # accepted into the backlog
    finally:
        sock.close()


@pytest.mark.parametrize(("url", "port"), [("http://h:8000", 8000), ("http://h", 80), ("https://h/x", 443)])
def test_url_port(url, port):
    assert url_port(url) == port
