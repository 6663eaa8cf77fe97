"""``vared2 serve``: an engine directory behind HTTP and gRPC in one command — its repository written into a
temporary folder and served by ``tritonserver`` in the foreground until Ctrl-C (or SIGTERM), which stops the
server and removes the folder."""

from __future__ import annotations

import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from .repository import ROUTER, RepositoryOptions, write_repository
from .server import TritonServer, TritonServerError, find_tritonserver


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def serve(
    engine_dir: Path | str,
    *,
    port: int = 8000,
    address: str = "127.0.0.1",
    options: RepositoryOptions | None = None,
    log: Path | str | None = None,
    echo: Callable[[str], None] = print,
) -> None:
    """Serve ``engine_dir`` on ``address``: HTTP on ``port``, gRPC on ``port + 1``, metrics on ``port + 2`` (Triton's
    8000/8001/8002 by default). Returns when interrupted; ``TritonServerError`` if the server fails."""
    find_tritonserver()  # a missing server is said before anything is written
    # SIGINT too: a shell starts background jobs with it ignored, and Python then never raises KeyboardInterrupt.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with tempfile.TemporaryDirectory(prefix="vared2-serve-") as work:
            repository = write_repository(engine_dir, Path(work) / "repository", options)
            server = TritonServer(
                repository, http_port=port, grpc_port=port + 1, metrics_port=port + 2, address=address, log=log
            )
            try:
                server.start()
                echo(
                    f"serving {engine_dir} as model {ROUTER!r}: HTTP {server.http_url}, gRPC {server.grpc_url}, "
                    f"metrics http://{server.metrics_url}/metrics — Ctrl-C stops it"
                )
                code = server.wait()
                tail = server.log_tail()
                raise TritonServerError(f"tritonserver exited with code {code}; its log ends with:\n{tail}")
            except KeyboardInterrupt:
                echo("stopping tritonserver")
            finally:
                server.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
