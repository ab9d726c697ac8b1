"""Process control for the test servers, and the registry that stops them at exit.

Signals, waiting for a pid to go (a zombie counts as gone), free ports and log tails, shared
by :mod:`tests.services.kafka` and :mod:`tests.services.redis`. Every server registers here
when it starts; an ``atexit`` hook closes whatever is still registered, so an interrupted or
failed session leaves no server behind even when its fixture finalizers never ran.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Protocol

__all__ = [
    "Server",
    "ServiceError",
    "Stoppable",
    "dispose",
    "free_port",
    "pid_alive",
    "register",
    "send_signal",
    "signal_running",
    "tail",
    "unregister",
    "wait_gone",
]


class ServiceError(RuntimeError):
    """A server could not be started or controlled."""


class Server(Protocol):
    """A started server: ``close()`` stops it and removes what it owns."""

    def close(self) -> None: ...


class Stoppable(Server, Protocol):
    def stop(self, timeout: float = 20.0) -> None: ...


def signal_running(name: str, pid: int | None, sig: signal.Signals) -> None:
    """``sig`` to a server's process (SIGSTOP/SIGCONT); ``ServiceError`` when not running."""
    if pid is None:
        raise ServiceError(f"{name} is not running")
    send_signal(pid, sig)


def dispose(server: Stoppable, data_dir: Path, owns_dir: bool) -> None:
    """Stop ``server``, forget it, and delete ``data_dir`` if the server created it."""
    try:
        server.stop()
    finally:
        unregister(server)
        if owns_dir:
            shutil.rmtree(data_dir, ignore_errors=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; an exited but unreaped (zombie) process counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except FileNotFoundError:
        return not Path("/proc/self/stat").exists()  # gone, or no /proc on this system
    except OSError:
        return True
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def send_signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def tail(path: Path, lines: int = 40) -> str:
    try:
        content = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(content[-lines:])


_live: set[Server] = set()
_live_lock = threading.Lock()


def register(server: Server) -> None:
    with _live_lock:
        _live.add(server)


def unregister(server: Server) -> None:
    with _live_lock:
        _live.discard(server)


@atexit.register
def _close_all() -> None:
    with _live_lock:
        servers = list(_live)
    for server in servers:
        with contextlib.suppress(Exception):
            server.close()
