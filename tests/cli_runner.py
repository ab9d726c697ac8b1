"""Running ``agentstream`` commands inside a test: exit code, stdout and stderr, with the
test run's logging set-up restored afterwards (``cli.main`` configures logging)."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator

__all__ = ["run_cli"]


@contextlib.contextmanager
def _kept_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    from agentstream.cli import main

    out, err = io.StringIO(), io.StringIO()
    with _kept_logging(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()
