"""A ``redis-server`` on 127.0.0.1 that a test or benchmark starts and controls.

:class:`RedisServer` runs the ``redis-server`` found on PATH in its own dir (append-only
persistence optional), keeps its port across restarts and dies with the test process (a
parent-death signal through ``setpriv``), so crash-and-restart tests get their data back and
a killed run leaves nothing behind. The ``private_redis`` fixture (:mod:`tests.services.plugin`)
hands out fresh ones as a :class:`RedisFactory`. With :class:`RedisTls` files the server
listens with TLS only (``rediss://``), for the Redis wire's TLS tests.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tests.services.processes import (
    ServiceError,
    dispose,
    free_port,
    register,
    send_signal,
    signal_running,
    tail,
)

__all__ = ["RedisFactory", "RedisServer", "RedisTls"]


@dataclass(frozen=True)
class RedisTls:
    """The server's TLS files; ``auth_clients`` asks clients for a certificate of ``ca_file``."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    auth_clients: bool = False


class RedisServer:
    """One ``redis-server`` on 127.0.0.1, with its own dir; keeps its port across restarts."""

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        port: int | None = None,
        appendonly: bool = False,
        executable: str | None = None,
        start_timeout: float = 30.0,
        tls: RedisTls | None = None,
    ) -> None:
        found = executable or shutil.which("redis-server")
        if found is None:
            raise ServiceError("redis-server not found on PATH (apt-get install -y redis-server)")
        self.executable: str = found
        self._owns_dir = data_dir is None
        self.data_dir: Path = (
            Path(tempfile.mkdtemp(prefix="agentstream-redis-")) if data_dir is None else data_dir
        )
        self.port: int = port if port is not None else free_port()
        self.appendonly: bool = appendonly
        self.start_timeout: float = start_timeout
        self.tls: RedisTls | None = tls
        self.start_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, pid={self.pid}, data_dir={str(self.data_dir)!r})"

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls is not None else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis.log"

    def version(self) -> str:
        out = subprocess.run(
            [self.executable, "--version"], capture_output=True, text=True, check=False
        ).stdout
        match = re.search(r"v=(\S+)", out)
        return match.group(1) if match else "unknown"

    def start(self) -> None:
        """Start and wait until it answers PING (after loading its append-only file)."""
        if self._closed:
            raise ServiceError("the server was closed")
        if self.running:
            raise ServiceError(f"redis-server is already running (pid {self.pid})")
        command = [
            self.executable,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--logfile",
            str(self.log_file),
            "--daemonize",
            "no",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
        ]
        if self.tls is not None:
            at = command.index("--port")
            command[at : at + 2] = [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(self.tls.cert_file),
                "--tls-key-file",
                str(self.tls.key_file),
                "--tls-ca-cert-file",
                str(self.tls.ca_file),
                "--tls-auth-clients",
                "yes" if self.tls.auth_clients else "no",
            ]
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            # The server dies with this process (thread), even on SIGKILL of the test run.
            command = [setpriv, "--pdeathsig", "TERM", *command]
        register(self)
        began = time.monotonic()
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = began + self.start_timeout
        while not self._ping():
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise ServiceError(
                    f"redis-server exited with {code} during startup:\n{tail(self.log_file)}"
                )
            if time.monotonic() >= deadline:
                self.kill()
                raise ServiceError(
                    f"redis-server not ready within {self.start_timeout}s:\n{tail(self.log_file)}"
                )
            time.sleep(0.02)
        self.start_seconds = time.monotonic() - began

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as raw:
                if self.tls is None:
                    raw.sendall(b"PING\r\n")
                    return raw.recv(64).startswith(b"+PONG")
                with self._tls_socket(raw) as sock:
                    sock.sendall(b"PING\r\n")
                    return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _tls_socket(self, raw: socket.socket) -> ssl.SSLSocket:
        assert self.tls is not None
        context = ssl.create_default_context(cafile=str(self.tls.ca_file))
        context.check_hostname = False
        if self.tls.auth_clients:
            context.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        return context.wrap_socket(raw)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (redis writes its append-only file and exits); SIGKILL after ``timeout``."""
        if self._process is None:
            return
        process = self._process
        if process.poll() is None:
            send_signal(process.pid, signal.SIGCONT)
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10.0)
        self._process = None

    def kill(self) -> None:
        """SIGKILL: a crash."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait(10.0)
        self._process = None

    def restart(self) -> None:
        """Stop if running, then start again on the same port and dir."""
        self.stop()
        self.start()

    def pause(self) -> None:
        signal_running("redis-server", self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        signal_running("redis-server", self.pid, signal.SIGCONT)

    def close(self) -> None:
        """Stop the server and delete the dir if this object created it."""
        self._closed = True
        dispose(self, self.data_dir, self._owns_dir)


class RedisFactory(Protocol):
    """``private_redis(appendonly=False)`` starts a fresh private Redis server."""

    def __call__(self, *, appendonly: bool = False) -> RedisServer: ...
