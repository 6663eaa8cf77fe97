"""The ``tritonserver`` that ``nvidia-pytriton`` ships (2.51, Python backend only), run on a model repository.

:class:`TritonServer` gives it what it needs (docs/serving.md): a backend folder linking the wheel's Python backend
and the stub for this Python, this environment's ``bin`` first on ``PATH`` and Python's ``LIBDIR`` on
``LD_LIBRARY_PATH``. It binds HTTP, gRPC and metrics to 127.0.0.1 (free ports unless given), runs the server in
its own process group, waits for ``/v2/health/ready``, and stops it with SIGTERM, then SIGKILL to the group,
removing the Python backend's shared-memory regions that outlived it. The stub needs numpy<2 (checked).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from vared2.formats.errors import InputError

SERVER_PACKAGE = "nvidia-pytriton==0.7.0"
SHM_PREFIX = "triton_python_backend_shm_region_"
INSTALL_HINT = (
    "tritonserver is not installed in this Python environment: it comes with the server tier's environment, "
    "made by `./build.sh triton-test` in a vared2 checkout (then run .venv-triton/bin/vared2), or install it "
    f"with `pip install 'numpy<2' {SERVER_PACKAGE} 'tritonclient[http,grpc]'` next to vared2[runtime]"
)


class TritonNotInstalled(InputError):
    """No usable ``tritonserver`` here; the message says how to get one."""


class TritonServerError(RuntimeError):
    """The server did not start or stopped unexpectedly; the message ends with its log."""


@dataclass(frozen=True)
class TritonInstall:
    """The files of the wheel's server that a start needs."""

    binary: Path
    backend_library: Path
    backend_utils: Path
    stub: Path


def find_tritonserver() -> TritonInstall:
    """The server of ``nvidia-pytriton`` in this environment, with the Python-backend stub for this Python."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotInstalled(INSTALL_HINT)
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        binary=root / "bin" / "tritonserver",
        backend_library=root / "backends" / "python" / "libtriton_python.so",
        backend_utils=root / "backends" / "python" / "triton_python_backend_utils.py",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
    )
    for path in (install.binary, install.backend_library, install.backend_utils):
        if not path.is_file():
            raise TritonNotInstalled(f"{path}: missing from the installed nvidia-pytriton; {INSTALL_HINT}")
    if not install.stub.is_file():
        raise TritonNotInstalled(f"{install.stub}: nvidia-pytriton has no Python-backend stub for Python {version}")
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        raise TritonNotInstalled(
            f"numpy {numpy.__version__} is installed: the Python backend of {SERVER_PACKAGE} needs numpy<2 "
            "(with numpy 2 it passes empty tensors); use an environment with numpy<2 (./build.sh triton-test makes one)"
        )
    return install


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _shm_regions_of(pids: set[int]) -> set[str]:
    """Names of the Python backend's ``/dev/shm`` regions that processes ``pids`` have mapped."""
    names: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
                if path.startswith(f"/dev/shm/{SHM_PREFIX}"):
                    names.add(Path(path.split(" ")[0]).name)
    return names


def group_members(pgid: int) -> set[int]:
    """The processes of process group ``pgid`` (the server and its Python-backend stubs)."""
    members = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                if int(stat[stat.rindex(")") + 2 :].split()[2]) == pgid:
                    members.add(int(entry.name))
    return members


def process_role(pid: int) -> str:
    """``tritonserver``, or the model a Python-backend stub serves (its first argument is the model's ``model.py``)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    if argv[0].endswith(b"tritonserver") or len(argv) < 2:
        return Path(argv[0].decode(errors="replace")).name
    return Path(argv[1].decode(errors="replace")).parent.parent.name


class TritonServer:
    """One ``tritonserver`` on ``repository``. Use as a context manager, or ``start()``/``stop()``.

    HTTP, gRPC and metrics bind to ``address`` (127.0.0.1 unless told); ports left at 0 are picked free at start.
    ``log`` (a file) receives the server's output; without it a temporary file does; its end is quoted when the
    server fails.
    """

    def __init__(
        self,
        repository: Path | str,
        *,
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        address: str = "127.0.0.1",
        log: Path | str | None = None,
        verbose: bool = False,
        shm_default_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.repository = Path(repository)
        self.ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self.address = address
        self.log_path = Path(log) if log is not None else None
        self.verbose = verbose
        self.shm_default_bytes = shm_default_bytes
        self.process: subprocess.Popen[bytes] | None = None
        self._work: tempfile.TemporaryDirectory[str] | None = None
        self._regions: set[str] = set()

    # ---- addresses ----------------------------------------------------------------------------------------
    @property
    def _host(self) -> str:
        """Where a client on this host reaches it (a server on every interface is reached on the loopback)."""
        return "127.0.0.1" if self.address in ("0.0.0.0", "") else self.address

    @property
    def http_url(self) -> str:
        return f"{self._host}:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"{self._host}:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"{self._host}:{self.ports['metrics']}"

    # ---- start --------------------------------------------------------------------------------------------
    def command(self, install: TritonInstall, backends: Path) -> list[str]:
        p = self.ports
        return [
            str(install.binary),
            f"--model-repository={self.repository.resolve()}",
            f"--backend-directory={backends}",
            f"--backend-config=python,shm-default-byte-size={self.shm_default_bytes}",
            f"--http-address={self.address}",
            f"--http-port={p['http']}",
            f"--grpc-address={self.address}",
            f"--grpc-port={p['grpc']}",
            f"--metrics-address={self.address}",
            f"--metrics-port={p['metrics']}",
            "--allow-cpu-metrics=true",
            "--allow-gpu-metrics=false",
            "--exit-on-error=true",
            "--exit-timeout-secs=10",  # then stop() kills the group: open client connections hold it up to 30 s
            f"--log-verbose={1 if self.verbose else 0}",
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        libdir = str(sysconfig.get_config_var("LIBDIR") or "")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in [libdir, env.get("LD_LIBRARY_PATH", "")] if p)
        return env

    def start(self, timeout: float = 120.0) -> TritonServer:
        """Start the server and return once ``/v2/health/ready`` answers 200 (``TritonServerError`` otherwise)."""
        if self.process is not None:
            raise RuntimeError("this server is already started")
        install = find_tritonserver()
        if not self.repository.is_dir():
            raise InputError(f"{self.repository}: no such model repository")
        self._work = tempfile.TemporaryDirectory(prefix="vared2-triton-")
        work = Path(self._work.name)
        python = work / "backends" / "python"
        python.mkdir(parents=True)
        (python / "libtriton_python.so").symlink_to(install.backend_library)
        (python / "triton_python_backend_utils.py").symlink_to(install.backend_utils)
        (python / "triton_python_backend_stub").symlink_to(install.stub)
        for name, port in self.ports.items():
            self.ports[name] = port or free_port()
        if self.log_path is None:
            self.log_path = work / "tritonserver.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(install, work / "backends"),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                start_new_session=True,  # its own process group: the stubs go with it
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self._regions |= _shm_regions_of(group_members(self.process.pid))
        return self

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return "(no server log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while True:
            if self.process.poll() is not None:
                raise TritonServerError(
                    f"tritonserver exited with code {self.process.returncode} before it was ready; "
                    f"its log ({self.log_path}) ends with:\n{self.log_tail()}"
                )
            with (
                contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
                urllib.request.urlopen(url, timeout=2) as response,
            ):
                if response.status == 200:
                    return
            if time.monotonic() > deadline:
                raise TritonServerError(
                    f"tritonserver was not ready within {timeout:.0f} s; its log ({self.log_path}) ends with:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.1)

    # ---- run and stop -------------------------------------------------------------------------------------
    def wait(self) -> int:
        """Block until the server exits (``vared2 serve``); its exit code."""
        assert self.process is not None
        return self.process.wait()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (Triton unloads its models and ends the stubs), then SIGKILL to whatever of the group is left;
        shared-memory regions of its processes that outlived them are removed. Safe to call twice."""
        process, self.process = self.process, None
        if process is not None:
            pgid = process.pid
            self._regions |= _shm_regions_of(group_members(pgid))
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            process.wait()
            deadline = time.monotonic() + 5
            while group_members(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
        for name in self._regions:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/dev/shm/{name}")
        self._regions = set()
        if self._work is not None:
            log_inside = self.log_path is not None and self.log_path.is_relative_to(self._work.name)
            self._work.cleanup()
            self._work = None
            if log_inside:
                self.log_path = None

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
