"""Serving replicas behind one address: a registry of them, so that a reload reaches every one.

With ``serve_reuse_port`` several ``rtml serve`` processes bind one port (SO_REUSEPORT) and the
kernel hands each new connection to one of them. A request to the shared address therefore reaches
ONE replica: ``POST /admin/reload`` there leaves the others on the old version until their next poll
of the champion alias, and a promotion's live smoke check could hit a stale replica and roll back a
good version.

The design: each replica also listens on a private loopback port of its own (the kernel picks it)
and registers itself in ``<home>/serve/replicas/<pid>.json``: its pid, the process's start time, the
shared port and its private URL. The *client* (``rtml.serve.client.request_reload`` and
``wait_for_version``, hence a promotion's ``reload_and_wait``, ``rtml serve reload`` and the
rollback) reads the registry and, when replicas are registered for the port it addresses, pushes the
reload to each one's private URL and waits until EACH answers with the version.

Why the client and not the replicas: the party that must not proceed (the promotion) is the one that
waits, so it must see every replica's state anyway; a replica fanning the reload out to its peers
would still leave the caller unable to tell when the last peer is done. A shared Redis or file
signal has the same gap (who acknowledged?) and adds a dependency. Plain files need nothing new.

An entry is trusted only while a process with that pid *and* start time lives (a killed replica's
file, or a recycled pid, is dropped), and a replica removes its own entry when it exits.

Scope: replicas on one machine sharing ``RTML_HOME`` (``rtml stack up --profile distributed``).
Replicas on several hosts behind a load balancer need each replica's address from that platform
(or must rely on the alias poll); that is not covered here.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger("rtml.serve.replicas")


@dataclass(frozen=True)
class Replica:
    """One registered replica: ``admin_url`` reaches this process only, ``port`` is the shared one."""

    pid: int
    started: float  # the process's start time (psutil), so a recycled pid is not taken for it
    port: int
    admin_url: str


def replica_dir(home: Path) -> Path:
    return Path(home) / "serve" / "replicas"


def _started(pid: int) -> float | None:
    import psutil

    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc.create_time()
    except psutil.Error:
        return None


def bind_admin_socket(host: str = "127.0.0.1") -> socket.socket:
    """A listening socket on a free loopback port: the private address of this replica."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)  # connections wait in the backlog until the server accepts them
    sock.set_inheritable(True)
    return sock


def register(directory: Path, port: int, admin_url: str, pid: int | None = None) -> Path:
    """Write this process's entry (atomically: readers never see half a file); returns its path."""
    pid = os.getpid() if pid is None else pid
    started = _started(pid)
    if started is None:
        raise ValueError(f"pid: no running process {pid} to register")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{pid}.json"
    tmp = directory / f".{pid}.json.tmp"
    tmp.write_text(json.dumps(asdict(Replica(pid, started, int(port), admin_url))))
    tmp.replace(path)
    return path


def unregister(path: Path) -> None:
    path.unlink(missing_ok=True)


def _read(path: Path) -> Replica | None:
    try:
        raw = json.loads(path.read_text())
        return Replica(int(raw["pid"]), float(raw["started"]), int(raw["port"]), str(raw["admin_url"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def live_replicas(directory: Path, port: int | None = None) -> list[Replica]:
    """The registered replicas whose process still runs (same pid and start time), sorted by pid,
    only those sharing ``port`` if given. Entries of dead processes are removed."""
    out: list[Replica] = []
    if not directory.is_dir():
        return out
    for path in directory.glob("*.json"):
        rep = _read(path)
        started = _started(rep.pid) if rep else None
        if rep is None or started is None or abs(started - rep.started) > 0.01:
            log.info("dropping the stale replica entry %s", path.name)
            unregister(path)
            continue
        if port is None or rep.port == port:
            out.append(rep)
    return sorted(out, key=lambda r: r.pid)


def url_port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


__all__ = ["Replica", "bind_admin_socket", "live_replicas", "register", "replica_dir", "unregister", "url_port"]
